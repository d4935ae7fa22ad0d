"""lvmsnap on the hypervisor: ``sudo -n /usr/lib/vaf/vaf-privileged lvmsnap-<action>``.

The front-end action (:mod:`vaf.drivers.lvmsnap.actions`) validates oned's argv, reads the
conf and the VM XML, and sends one typed request (:mod:`vaf.drivers.lvmsnap.requests`) on the
stdin of the privileged entry point, through a single ssh round trip. This half runs as root
from the root-owned copy of vaf in /usr/lib/vaf/lib (never the remotes tree oneadmin can
write), and trusts nothing of the request that names a place:

* where: the datastore location, the volume group prefix (``vg-one-<system ds>``), the
  datastores' owner and the state directory come from /usr/lib/vaf/privileged.conf;
* paths: every path of the request must have the shape of its role
  (:class:`vaf.host.confine.Datastores`: image sources in an image datastore, disk links and
  VM directories of this VM in this system datastore), and every file operation runs as the
  datastores' owner with ``O_NOFOLLOW`` (:func:`vaf.host.confine.as_owner`): root only runs
  LVM, mkfs and the block copies between an image it opened as oneadmin and a volume.

Concurrency: every LVM metadata change runs under the host-local lock ``lvm-<vg>``; a cache fill
runs under ``fill-<vg>-<key>`` (held across the copy, so eight clones of one uncached image do
one fill and seven waits). Lock order is always fill, then lvm. The locks live in the state
directory, created root-owned 0700 (:func:`vaf.host.locks.owned_directory`).

Faults: if the front-end goes away (oned cancelled the action, the driver was killed, the ssh
cut), :meth:`Host.step` raises :class:`Cancelled` at the next step and the action undoes what
it made. A ``DELETE`` of the VM directory leaves a tombstone: a clone or volume that started
before it never creates its link and removes its volume, so ``DELETE`` wins. Volumes are
the VM's by name and tag: ``DELETE`` removes them with or without their links.

stdlib only: runs with the host's python3.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping

from vaf.drivers.lvmsnap import cache
from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.cache import ImageStat
from vaf.drivers.lvmsnap.settings import HOST_CONF
from vaf.errors import DriverError, ProtocolError
from vaf.host import blockcopy, confine, fs, locks
from vaf.host.files import remove_path, replace_symlink, temporary_name
from vaf.host.lvm import LogicalVolume, VolumeGroup, subject, thin_overcommitted
from vaf.host.runner import CommandError, Result, Runner
from vaf.one.log import DriverLog

REQUEST_VERSION = rq.VERSION
MB = 1024 * 1024
STALE_FILL_WAIT_SECONDS = 600
EXTENT_MB = 4  # lvm's default extent size: sizes round up to it
XFS_MIN_MB = 300  # xfsprogs >= 5.19 refuses smaller filesystems
TOMBSTONE_DAYS = 2


class Cancelled(DriverError):
    """The front-end is gone: stop, undo, exit."""


class Host:
    """One host-side action: its request, log, root-owned conf, the VG and the state dir."""

    def __init__(self, request, log: DriverLog, privileged):
        self.request = request
        self.log = log
        self.settings = request.settings
        self.privileged = privileged
        conf = privileged.conf
        values = {key: conf.str(key, default) for key, default in HOST_CONF}
        self.datastores = confine.Datastores(values["DATASTORE_LOCATION"])
        self.owner_name = values["DATASTORE_OWNER"]
        self._owner = None
        self.state_dir = values["LVMSNAP_STATE_DIR"]
        self.lock_timeout = conf.float("LOCK_TIMEOUT", float(values["LOCK_TIMEOUT"]), 1)
        self.runner = Runner()
        self.vg = (VolumeGroup(f"{values['VG_PREFIX']}{request.sys_ds}", self.runner,
                               on_done=self._timed) if request.sys_ds is not None else None)
        self._state_fd: int | None = None
        self.started = time.time()
        self.block = self._block_size()

    def _block_size(self) -> int:
        try:
            return blockcopy.parse_block_size(self.settings.dd_bs)
        except ValueError as err:
            raise ProtocolError(f"DD_BLOCK_SIZE: {err}") from None

    @property
    def owner(self) -> confine.Owner:
        if self._owner is None:
            self._owner = confine.Owner.of(self.owner_name)
        return self._owner

    def as_owner(self):
        return confine.as_owner(self.owner if os.geteuid() == 0 else None)

    def _timed(self, result: Result) -> None:
        # for the admin (oned.log) and the benchmark: where a slow action spends its time
        self.log.debug(f"{result.argv[0]} {subject(result.argv)}: {result.seconds:.2f} s")

    @property
    def state(self) -> int:
        if self._state_fd is None:
            self._state_fd = locks.owned_directory(self.state_dir)
        return self._state_fd

    def metadata_lock(self):
        return locks.exclusive(self.state, f"lvm-{self.vg.name}", timeout=self.lock_timeout,
                               what=f"the lock of volume group {self.vg.name}")

    def step(self) -> None:
        """Between two steps: stop if the front-end is gone."""
        if self.privileged.cancelled():
            raise Cancelled("the front-end went away (oned cancelled the action or the "
                            "driver was killed): stopped and undone")

    def copy_in(self, image: ImageStat, source: int, device: str, what: str,
                sparse: bool = False) -> None:
        try:
            copied = blockcopy.copy_to_device(
                source, image.size, device, block=self.block, what=what, report=self.log.info,
                every=self.settings.progress_seconds, sparse=sparse,
                cancelled=self.privileged.cancelled)
        except blockcopy.Cancelled:
            self.step()
            raise
        except OSError as err:
            raise DriverError(f"{what} failed: {err.strerror or err}") from None
        if copied != image.size:
            raise DriverError(f"{what} incomplete: {copied} of {image.size} bytes")

    @property
    def thin_volatile(self) -> bool:
        return self.settings.volatile == "thin"


# --- small host helpers -------------------------------------------------------------------

def hostname() -> str:
    # the kernel's node name: no DNS lookup on the clone path (socket.getfqdn may hang)
    return os.uname().nodename


def prepare_vm_dir(host: Host, path: str) -> None:
    """``mkdir -p`` the VM directory and record the host in ``.host``, as fs_lvm does
    (as the datastores' owner)."""
    directory = os.path.dirname(path)
    with host.as_owner():
        os.makedirs(directory, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(os.path.join(directory, ".host"), flags, 0o644)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(hostname() + "\n")


def link_disk(host: Host, device: str, dst: str) -> None:
    prepare_vm_dir(host, dst)
    with host.as_owner():
        replace_symlink(device, dst)


def linked_lv(host: Host, link: str) -> str | None:
    """The LV name ``link`` points at inside our VG, or None (not a link, elsewhere)."""
    try:
        with host.as_owner():
            target = os.readlink(link)
    except OSError:
        return None
    prefix = f"/dev/{host.vg.name}/"
    name = target[len(prefix):] if target.startswith(prefix) else None
    return name if name and "/" not in name else None


def now() -> int:
    return int(time.time())


# --- DELETE wins: tombstones in the state directory ------------------------------------------

def tombstone(vmid: int) -> str:
    return f"deleted-{vmid}"


def bury(host: Host, vmid: int) -> None:
    """Record that the VM's directory was deleted now (caller holds the metadata lock)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(tombstone(vmid), flags, 0o600, dir_fd=host.state))
    os.utime(tombstone(vmid), dir_fd=host.state, follow_symlinks=False)
    limit = time.time() - TOMBSTONE_DAYS * 86400
    for entry in os.listdir(host.state):
        if entry.startswith("deleted-"):
            try:
                if os.stat(entry, dir_fd=host.state, follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry, dir_fd=host.state)
            except FileNotFoundError:
                pass


def deleted_since_start(host: Host) -> bool:
    """Did a DELETE of this VM's directory run after this action started?"""
    try:
        info = os.stat(tombstone(host.request.vmid), dir_fd=host.state, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return info.st_mtime >= host.started


def finish_disk(host: Host, name: str, dst: str) -> None:
    """The last step of every action that makes a VM disk: link it, unless the front-end
    is gone or the VM was deleted meanwhile (then the volume goes, and we fail)."""
    with host.metadata_lock():
        if host.privileged.cancelled() or deleted_since_start(host):
            host.vg.remove(name)
            if deleted_since_start(host):
                raise DriverError(f"VM {host.request.vmid} was deleted while its disk was "
                                  f"being made: {name} removed")
            host.step()
        link_disk(host, host.vg.path(name), dst)


def undo_volume(host: Host, name: str) -> None:
    """Best-effort removal of a VM volume we created, after a failure or a cancel."""
    try:
        with host.metadata_lock():
            if name in host.vg.lvs():
                host.vg.remove(name)
    except (CommandError, DriverError) as err:
        host.log.error(f"could not remove {name}: {err.reason}")


# --- capacity -----------------------------------------------------------------------------------

def check_pool_commit(host: Host, created: str, result: Result | None) -> None:
    """Refuse (and remove) a thin volume that takes the pool past its overcommit ratio.

    Cheap on the hot path: with a ratio of at least 1, lvm warns on stderr whenever the thin
    volumes add up to more than the pool, so the listing is only read after that warning.
    """
    ratio = host.settings.overcommit
    if result is not None and ratio >= 1 and not thin_overcommitted(result.stderr):
        return
    from vaf.drivers.lvmsnap import monitor  # the rare path: off the warm clone's imports

    volumes = host.vg.lvs()
    usage = monitor.pool_usage(volumes, host.settings.pool)
    if usage is None or usage.committed_mb <= usage.size_mb * ratio:
        return
    host.vg.remove(created)
    raise DriverError(f"thin pool {host.vg.name}/{host.settings.pool} on {hostname()} "
                      f"cannot hold {volumes[created].size_mb} MB more: its volumes would "
                      f"add up to {usage.committed_mb} MB, over {ratio:g} x its "
                      f"{usage.size_mb} MB (THIN_OVERCOMMIT)")


# --- volume group housekeeping (callers hold the metadata lock) ----------------------------

def ensure_pool(host: Host, volumes: Mapping[str, LogicalVolume]) -> None:
    pool = host.settings.pool
    if pool in volumes:
        if not volumes[pool].is_thin_pool:
            raise DriverError(f"{host.vg.name}/{pool} exists but is not a thin pool")
        return
    host.log.info(f"creating thin pool {host.vg.name}/{pool} ({host.settings.pool_size})")
    host.vg.create_pool(pool, host.settings.pool_size)


def make_room(host: Host, volumes: Mapping[str, LogicalVolume], need_mb: int,
              keep: tuple[str, ...] = ()) -> None:
    """Evict unused caches, least recently used first, until ``need_mb`` fit in the VG."""
    free_mb = host.vg.usage().free_mb
    try:
        victims = cache.choose_evictions(volumes, free_mb, need_mb, keep)
    except cache.NoRoom as err:
        raise DriverError(f"volume group {host.vg.name} on {hostname()} has {err.free_mb} MB "
                          f"free and {err.evictable_mb} MB in unused caches; {need_mb} MB "
                          "are needed") from None
    for name in victims:
        host.log.info(f"evicting unused cache {name} ({volumes[name].tag(cache.SRC_TAG)}) "
                      "to make room")
        host.vg.remove(name)


def create_with_room(host: Host, volumes: Mapping[str, LogicalVolume],
                     create: Callable[[], object], need_mb: int,
                     keep: tuple[str, ...] = ()) -> None:
    """Run an lvcreate that takes VG space; only if lvm finds too little, evict and retry.

    Asking lvm first spares a ``vgs`` on every fill; eviction needs the listing anyway.
    """
    try:
        create()
        return
    except CommandError as err:
        if "insufficient free space" not in err.stderr.lower():
            raise
    make_room(host, volumes, -(-need_mb // EXTENT_MB) * EXTENT_MB, keep)
    create()


def wait_until_closed(host: Host, name: str, limit: float = STALE_FILL_WAIT_SECONDS,
                      stoppable: bool = True) -> None:
    """A killed fill's writer may hold its volume open a while: wait for it to let go
    (``stoppable``: a cancel ends the wait; not when the wait is part of undoing)."""
    deadline = time.monotonic() + limit
    while True:
        lv = host.vg.lvs().get(name)
        if lv is None or not lv.open:
            return
        if time.monotonic() > deadline:
            raise DriverError(f"{host.vg.name}/{name} is still open after {limit:.0f} s: "
                              "a process still writes it")
        if stoppable:
            host.step()
        time.sleep(1)


def remove_stale_fills(host: Host, volumes: Mapping[str, LogicalVolume]) -> None:
    """Remove fills whose filler is gone (its fill lock is free) and that nothing has open,
    and the fill lock files such killed fillers left (caller holds the metadata lock)."""
    for name in cache.stale_fills(volumes.values()):
        key = name[len(cache.FILL_PREFIX):]
        with locks.if_free(host.state, fill_lock(host, key), remove=True) as free:
            if free and not volumes[name].open:
                host.log.info(f"removing {name}, left over by an interrupted fill")
                host.vg.remove(name)
    prefix = fill_lock(host, "")
    for lock in locks.names(host.state, prefix):
        # a free lock without its fill LV is a killed filler's; a filler that has just
        # opened it notices the unlink and takes a new one (see vaf.host.locks)
        if cache.fill_name(lock[len(prefix):]) not in volumes:
            with locks.if_free(host.state, lock, remove=True):
                pass


def fill_lock(host: Host, key: str) -> str:
    return f"fill-{host.vg.name}-{key}"


def create_volume(host: Host, volumes: Mapping[str, LogicalVolume], name: str, size_mb: int,
                  tags: list[str], thin: bool) -> None:
    """A new empty VM volume: thin in the pool (its blocks read zeros), or thick (making
    room for it; zeroed by :func:`zero_thick` before use)."""
    if thin:
        ensure_pool(host, volumes)
        result = host.vg.create_thin(host.settings.pool, name, size_mb, tags)
        check_pool_commit(host, name, result)
    else:
        create_with_room(host, volumes, lambda: host.vg.create_linear(name, size_mb, tags),
                         size_mb)


def zero_thick(host: Host, name: str, thin: bool) -> None:
    """A thick volume reuses extents a deleted VM wrote: zeros over it before anyone reads."""
    if thin or host.settings.zero_thick == "no":
        return
    try:
        blockcopy.zero_device(host.vg.path(name), block=host.block,
                              cancelled=host.privileged.cancelled)
    except blockcopy.Cancelled:
        host.step()
        raise


def remove_if_idle(host: Host, volumes: Mapping[str, LogicalVolume], name: str) -> None:
    """Remove a VM volume left by an earlier attempt; refuse one that is in use."""
    lv = volumes.get(name)
    if lv is None:
        return
    if lv.open:
        raise DriverError(f"{host.vg.name}/{name} already exists and is in use")
    host.log.warn(f"removing {name}, left over by an earlier attempt")
    host.vg.remove(name)


# --- the cache ------------------------------------------------------------------------------

class Image:
    """The image file, opened once as the datastores' owner (without following a symlink),
    and what identifies its content."""

    def __init__(self, host: Host, path: str):
        self.path = host.datastores.image(path, host.request.sys_ds)
        try:
            with host.as_owner():
                self.fd = confine.open_image(self.path)
        except FileNotFoundError:
            raise DriverError(f"image {path} not found on {hostname()}: is the image datastore "
                              "mounted there?") from None
        except OSError as err:
            why = "it is a symlink" if err.errno == errno.ELOOP else (err.strerror or str(err))
            raise DriverError(f"cannot read image {path} on {hostname()}: {why}") from None
        self.stat = ImageStat.of(self.path, self.fd)

    def changed(self) -> bool:
        return ImageStat.of(self.path, self.fd) != self.stat

    def close(self) -> None:
        os.close(self.fd)


def start_fill(host: Host, image: ImageStat, volumes: Mapping[str, LogicalVolume]) -> bool:
    """Create the empty ``vaf-fill-<key>`` (caller holds the fill and the metadata locks).

    A fill LV of this key that still exists was left by a filler that died (we hold its
    lock): it is removed first, unless its writer still has it open (then False: the
    caller waits for it outside the metadata lock and calls again).
    """
    fill = cache.fill_name(image.key)
    if fill in volumes:
        if volumes[fill].open:
            return False
        host.log.info(f"removing {fill}, left over by an interrupted fill")
        host.vg.remove(fill)
    remove_stale_fills(host, volumes)
    if host.settings.mode == "thin":
        ensure_pool(host, volumes)  # before the fill takes the room the pool needs
    tags = cache.cache_tags(image, now())
    create_with_room(host, volumes,
                     lambda: host.vg.create_linear(fill, image.size_mb, tags, wipe=False),
                     image.size_mb)
    return True


def finish_fill(host: Host, image: Image, snapshot: tuple) -> None:
    """Copy and verify, then (one metadata lock hold) seal, rename, and make the VM disk."""
    fill = cache.fill_name(image.stat.key)
    try:
        copy_and_verify(host, image, host.vg.path(fill))
        host.step()
    except BaseException:
        discard(host, fill)
        raise
    with host.metadata_lock():
        seal(host, fill)
        host.vg.rename(fill, cache.cache_name(image.stat.key))
        if try_snapshot(host, *snapshot) is not None:
            raise DriverError(f"cache {snapshot[0]} vanished while cloning {image.path}")
        drop_superseded(host, image.path, cache.cache_name(image.stat.key))


def drop_superseded(host: Host, path: str, current: str) -> None:
    """Older versions of this image that no VM uses can never be hit again: remove them."""
    volumes = host.vg.lvs()
    for name in cache.superseded_caches(volumes, path, current):
        host.log.info(f"removing {name}: an older version of {path}, unused")
        host.vg.remove(name)


def seal(host: Host, fill: str) -> None:
    """Make a filled volume a cache: read-only; for thin mode also inactive and skipped by
    autoactivation, because lvm takes only an inactive LV as a new external origin."""
    if host.settings.mode == "thin":
        host.vg.change(fill, readonly=True, activate=False, skip=True)
    else:
        host.vg.change(fill, readonly=True)


def copy_and_verify(host: Host, image: Image, device: str) -> None:
    started = time.monotonic()
    stat = image.stat
    host.log.info(f"filling cache from {image.path} ({stat.size // MB} MB)")
    host.copy_in(stat, image.fd, device, f"filling cache from {image.path}")
    if image.changed():
        raise DriverError(f"image {image.path} changed while it was being copied; retry")
    seconds = time.monotonic() - started
    host.log.info(f"filled cache from {image.path} in {seconds:.1f} s "
                  f"({stat.size / MB / max(seconds, 0.001):.0f} MB/s)")


def discard(host: Host, name: str) -> None:
    """Best-effort removal of a fill we created, after a failure."""
    try:
        wait_until_closed(host, name, limit=60, stoppable=False)
        with host.metadata_lock():
            host.vg.remove(name)
    except (CommandError, DriverError) as err:
        host.log.error(f"could not remove {name}: {err.reason}")


# --- VM disks made from a cache ------------------------------------------------------------

def snapshot(host: Host, origin: str, origin_mb: int, disk: str, tags: list[str]) -> None:
    if host.settings.mode == "thin":
        result = host.vg.snapshot_thin(host.settings.pool, origin, disk, tags)
        check_pool_commit(host, disk, result)
    else:
        host.vg.snapshot_classic(origin, disk, cow_mb(host, origin_mb), tags)


def cow_mb(host: Host, origin_mb: int) -> int:
    return cache.classic_cow_mb(origin_mb, host.settings.cow_percent)


def try_snapshot(host: Host, origin: str, origin_mb: int, disk: str,
                 tags: list[str]) -> Mapping[str, LogicalVolume] | None:
    """Make ``disk`` a snapshot of cache ``origin`` (caller holds the metadata lock).

    Returns None when done, else the VG listing, in which there is no such cache. The hot
    path is one lvcreate, without looking first: the rare cases (no cache yet, no pool yet,
    a volume left by a failed earlier attempt, an origin lvm wants inactive or active, a COW
    needing room) are diagnosed with ``lvs`` only after it fails.
    """
    try:
        snapshot(host, origin, origin_mb, disk, tags)
        return None
    except CommandError:
        volumes = host.vg.lvs()
        if origin not in volumes:
            return volumes
        prepare_snapshot(host, volumes, origin, origin_mb, disk)
    snapshot(host, origin, origin_mb, disk, tags)
    return None


def prepare_snapshot(host: Host, volumes: Mapping[str, LogicalVolume], origin: str,
                     origin_mb: int, disk: str) -> None:
    remove_if_idle(host, volumes, disk)
    cache_lv = volumes[origin]
    if host.settings.mode == "thin":
        ensure_pool(host, volumes)
        if cache_lv.active and origin not in cache.caches_in_use(volumes):
            host.vg.change(origin, activate=False)
    else:
        if not cache_lv.active:
            host.vg.change(origin, activate=True)
        make_room(host, volumes, cow_mb(host, origin_mb), keep=(origin,))


def grow(host: Host, disk: str, size_mb: int, current_mb: int) -> None:
    """Grow a VM disk to ``size_mb`` (a DISK/SIZE larger than its image)."""
    if size_mb <= current_mb:
        return
    if host.settings.mode == "classic":
        raise DriverError(f"cannot make {disk} {size_mb} MB: a classic snapshot cannot be "
                          f"larger than its {current_mb} MB image (use SNAPSHOT_MODE=thin)")
    with host.metadata_lock():
        host.vg.extend(disk, size_mb)
        check_pool_commit(host, disk, None)


def vm_disk_tags(image: ImageStat | None = None) -> list[str]:
    tags = [cache.MARKER_TAG]
    if image is not None:
        tags.append(f"{cache.SRC_TAG}={image.path}")
    return tags


def disk_request(host: Host) -> tuple[str, str]:
    """The request's ``dst`` (checked: this VM's ``disk.<disk_id>`` in this system datastore)
    and the volume's name."""
    request = host.request
    if host.datastores.disk(request.dst, request.sys_ds, request.vmid) != request.disk_id:
        raise ProtocolError(f"disk path {request.dst!r} is not disk.{request.disk_id}")
    return request.dst, cache.vm_disk_name(request.vmid, request.disk_id)


def clone(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``clone``: a snapshot of the image's cache LV (filled on first use) as ``disk.<i>``."""
    host = Host(rq.Clone.from_json(params), log, privileged)
    dst, disk = disk_request(host)
    image = Image(host, host.request.src)
    try:
        stat = image.stat
        size_mb = max(host.request.size_mb or 0, stat.size_mb)
        origin = cache.cache_name(stat.key)
        snapshot_args = (origin, stat.size_mb, disk, vm_disk_tags())
        try:
            fill_or_snapshot(host, image, snapshot_args)
            host.step()
            grow(host, disk, size_mb, stat.size_mb)
        except BaseException:
            undo_volume(host, disk)
            raise
        finish_disk(host, disk, dst)
    finally:
        image.close()
    return 0


def fill_or_snapshot(host: Host, image: Image, snapshot_args: tuple) -> None:
    """The image's fill lock is taken before even trying the snapshot: when many VMs of an
    uncached image start together, one fills while the others wait here, instead of each
    first paying a failed lvcreate under the VG lock. The cold path keeps the metadata lock
    from the failed lvcreate to the new fill LV, so its listing stays true."""
    stat = image.stat
    filling = cache.fill_name(stat.key)
    volumes: Mapping[str, LogicalVolume] | None = None

    def waiting() -> None:
        # only a fill in progress makes a clone wait long: say so only then
        if filling in host.vg.lvs():
            host.log.info(f"waiting for another clone of {image.path} on this host "
                          "(filling its cache)")

    with locks.exclusive(host.state, fill_lock(host, stat.key), timeout=host.lock_timeout,
                         what=f"the cache fill of {image.path}", on_wait=waiting, remove=True):
        host.step()
        with host.metadata_lock():
            volumes = try_snapshot(host, *snapshot_args)
            started = volumes is not None and start_fill(host, stat, volumes)
        if volumes is not None:
            if not started:
                wait_until_closed(host, filling)
                with host.metadata_lock():
                    start_fill(host, stat, host.vg.lvs())
            finish_fill(host, image, snapshot_args)


def ln(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``ln`` (persistent image): a volume of its own, never shared, written back by mvds."""
    host = Host(rq.Ln.from_json(params), log, privileged)
    dst, disk = disk_request(host)
    image = Image(host, host.request.src)
    try:
        stat = image.stat
        size_mb = max(host.request.size_mb or 0, stat.size_mb)
        thin = host.thin_volatile
        tags = vm_disk_tags(stat) + [cache.PERSISTENT_TAG, f"{cache.BYTES_TAG}={stat.size}"]
        with host.metadata_lock():
            volumes = host.vg.lvs()
            remove_if_idle(host, volumes, disk)
            create_volume(host, volumes, disk, size_mb, tags, thin)
        try:
            host.copy_in(stat, image.fd, host.vg.path(disk),
                         f"copying persistent image {image.path}", sparse=thin)
        except BaseException:
            undo_volume(host, disk)
            raise
        finish_disk(host, disk, dst)
    finally:
        image.close()
    return 0


def mkfs_argv(fs_type: str, device: str, size_mb: int, thin: bool) -> list[str]:
    if fs_type == "xfs" and size_mb < XFS_MIN_MB:
        raise DriverError(f"XFS needs at least {XFS_MIN_MB} MB (xfsprogs refuses smaller "
                          f"filesystems); this disk has {size_mb} MB: use FS=ext4 or a "
                          "larger SIZE")
    return fs.mkfs_argv(fs_type, device, thin=thin)


def mkimage(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``mkimage``/``mkswap``: a new volume, formatted as swap, a filesystem, or left raw."""
    host = Host(rq.Mkimage.from_json(params), log, privileged)
    dst, disk = disk_request(host)
    size_mb, fs_type = host.request.size_mb, host.request.fs or "raw"
    thin = host.thin_volatile
    device = host.vg.path(disk)
    argv = (fs.mkswap_argv(device) if fs_type == "swap" else
            None if fs_type == "raw" else mkfs_argv(fs_type, device, size_mb, thin))
    with host.metadata_lock():
        volumes = host.vg.lvs()
        remove_if_idle(host, volumes, disk)
        create_volume(host, volumes, disk, size_mb, vm_disk_tags(), thin)
    try:
        zero_thick(host, disk, thin)
        host.step()
        if argv is not None:
            host.runner.run(argv, sudo=True)
    except BaseException:
        undo_volume(host, disk)
        raise
    finish_disk(host, disk, dst)
    return 0


# --- writing volumes back to the image datastore -------------------------------------------

def write_back(host: Host, name: str, destination: str, count: int) -> None:
    """Copy a volume into a new file of the owner's, renamed over ``destination`` when done."""
    path = host.datastores.saved_image(destination, host.request.sys_ds)
    temporary = temporary_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with host.as_owner():
            fd = os.open(temporary, flags, 0o644)
    except OSError as err:
        raise DriverError(f"cannot create {temporary}: {err.strerror}") from None
    try:
        try:
            blockcopy.copy_from_device(host.vg.path(name), fd, count, block=host.block,
                                       what=f"saving {name} to {path}", report=host.log.info,
                                       every=host.settings.progress_seconds,
                                       cancelled=host.privileged.cancelled)
        finally:
            os.close(fd)
        host.step()
        with host.as_owner():
            os.replace(temporary, path)
    except blockcopy.Cancelled:
        _remove_as_owner(host, temporary)
        host.step()
        raise
    except OSError as err:
        _remove_as_owner(host, temporary)
        raise DriverError(f"saving {name} to {path} failed: {err.strerror or err}") from None
    except BaseException:
        _remove_as_owner(host, temporary)
        raise


def _remove_as_owner(host: Host, path: str) -> None:
    with host.as_owner():
        remove_path(path)


def disk_lv(host: Host, link: str) -> tuple[str, LogicalVolume]:
    request = host.request
    disk_id = host.datastores.disk(link, request.sys_ds, request.vmid)
    name = cache.vm_disk_name(request.vmid, disk_id)
    volumes = host.vg.lvs()
    if name not in volumes:
        raise DriverError(f"{link}: VM {request.vmid} has no volume {name} in {host.vg.name}")
    return name, volumes[name]


def mvds(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``mvds``: write a persistent disk back over its image, then drop the volume."""
    host = Host(rq.Mvds.from_json(params), log, privileged)
    name, lv = disk_lv(host, host.request.src)
    write_back(host, name, host.request.dst, int(lv.tag(cache.BYTES_TAG) or lv.size_bytes))
    with host.metadata_lock():
        host.vg.remove(name)
    _remove_as_owner(host, host.request.src)
    return 0


def cpds(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``cpds`` (disk-saveas): copy a disk's current content to a new image file."""
    host = Host(rq.Cpds.from_json(params), log, privileged)
    name, lv = disk_lv(host, host.request.src)
    write_back(host, name, host.request.dst, lv.size_bytes)
    return 0


# --- removing, moving, resizing --------------------------------------------------------------

def remove_vm_volumes(host: Host, vmid: int, disk_id: int | None = None) -> None:
    """Remove every volume of VM ``vmid`` (or of its disk ``disk_id``), by name and tags,
    with or without a link; the caller holds the metadata lock."""
    volumes = host.vg.lvs()
    for name in cache.vm_volumes(volumes, vmid, disk_id):
        remove_vm_volume(host, volumes, name)


def remove_vm_volume(host: Host, volumes: Mapping[str, LogicalVolume], name: str) -> None:
    """Remove a VM disk LV (never a cache) and mark its cache as just used (for LRU)."""
    if cache.parse_vm_disk_name(name) is None:
        raise DriverError(f"refusing to remove {host.vg.name}/{name}: not a VM disk")
    lv = volumes.get(name)
    if lv is None:
        return
    host.vg.remove(name)
    origin = volumes.get(lv.origin)
    if origin is not None and cache.is_cache(origin):
        old = [t for t in origin.tags if t.startswith(cache.USED_TAG + "=")]
        host.vg.retag(origin.name, old, [f"{cache.USED_TAG}={now()}"])


def delete(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``delete``: a disk (its volume, then the link) or the VM dir (every volume of the VM,
    linked or not, then the dir); the VM dir's delete leaves a tombstone so that an action
    still running for this VM undoes itself instead of recreating what was deleted."""
    host = Host(rq.Delete.from_json(params), log, privileged)
    request = host.request
    if request.is_disk:
        path = request.path
        disk_id = host.datastores.disk(path, request.sys_ds, request.vmid)
    else:
        path = host.datastores.vm_dir(request.path, request.sys_ds, request.vmid)
        disk_id = None
    with host.metadata_lock():
        if disk_id is None:
            bury(host, request.vmid)
        remove_vm_volumes(host, request.vmid, disk_id)
        _remove_as_owner(host, path)
    return 0


def mv(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``mv`` on one host: reactivate a disk in place, or move it / the VM dir to a new path."""
    host = Host(rq.Mv.from_json(params), log, privileged)
    request = host.request
    check = (host.datastores.disk if request.is_disk else host.datastores.vm_dir)
    check(request.src, request.sys_ds, request.vmid)
    check(request.dst, request.sys_ds, request.vmid)
    src, dst = request.src, request.dst
    name = linked_lv(host, src) if request.is_disk else None
    if name is not None:
        with host.metadata_lock():
            host.vg.change(name, activate=True)
    if src != dst:
        with host.as_owner():
            if os.path.lexists(src):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
    return 0


def resize(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    host = Host(rq.Resize.from_json(params), log, privileged)
    name, lv = disk_lv(host, host.request.path)
    size_mb = host.request.size_mb
    if size_mb < lv.size_mb:
        raise DriverError(f"cannot shrink {name} from {lv.size_mb} MB to {size_mb} MB")
    if lv.is_classic_snapshot:
        raise DriverError(f"{name} is a classic snapshot: it cannot grow past its image")
    with host.metadata_lock():
        host.vg.extend(name, size_mb)
        if lv.pool:
            check_pool_commit(host, name, None)
        if cache.PERSISTENT_TAG in lv.tags:
            old = [t for t in lv.tags if t.startswith(cache.BYTES_TAG + "=")]
            host.vg.retag(name, old, [f"{cache.BYTES_TAG}={size_mb * MB}"])
    return 0


def context(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``context``: store the ISO the front-end built (the request's payload) as ``disk.<N>``."""
    host = Host(rq.Context.from_json(params), log, privileged)
    request = host.request
    host.datastores.disk(request.dst, request.sys_ds, request.vmid)
    data = privileged.payload
    if not data:
        raise ProtocolError("context: the request carries no ISO")
    prepare_vm_dir(host, request.dst)
    temporary = temporary_name(request.dst)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    with host.as_owner():
        try:
            with open(os.open(temporary, flags, 0o644), "wb") as handle:
                handle.write(data)
            os.replace(temporary, request.dst)
        except BaseException:
            remove_path(temporary)
            raise
    return 0


# --- live migration ---------------------------------------------------------------------------

PREMIGRATE_RECORD = ".vaf-premigrate"


def premigrate(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """On the destination: make every disk's volume exist and be active, linked as on the source.

    The VG is host-local, so a volume missing here is created empty with the disk's size for
    the hypervisor's storage copy to fill; the names created are recorded so failmigrate
    removes exactly those.
    """
    host = Host(rq.Premigrate.from_json(params), log, privileged)
    request = host.request
    sysdir = host.datastores.vm_dir(request.sysdir, request.sys_ds, request.vmid)
    disks = rq.disk_pairs(request.disks)
    prepare_vm_dir(host, os.path.join(sysdir, "disk.0"))
    created: list[str] = []
    with host.metadata_lock():
        volumes = host.vg.lvs()
        for disk_id, size_mb in disks:
            name = cache.vm_disk_name(request.vmid, disk_id)
            if name in volumes:
                host.vg.change(name, activate=True)
            elif size_mb:
                create_volume(host, volumes, name, size_mb, vm_disk_tags(), host.thin_volatile)
                created.append(name)
                zero_thick(host, name, host.thin_volatile)
            else:
                continue
            with host.as_owner():
                replace_symlink(host.vg.path(name), os.path.join(sysdir, f"disk.{disk_id}"))
    with host.as_owner():
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(os.path.join(sysdir, PREMIGRATE_RECORD), flags, 0o644), "w",
                  encoding="utf-8") as handle:
            json.dump(created, handle)
    return 0


def postmigrate(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """On the source: the VM now runs elsewhere, so drop its volumes and directory here.

    ``.host`` names the host the VM runs on (premigrate rewrote it): when that is this very
    machine (two names for one host), there is nothing to drop.
    """
    host = Host(rq.Postmigrate.from_json(params), log, privileged)
    request = host.request
    sysdir = host.datastores.vm_dir(request.sysdir, request.sys_ds, request.vmid)
    if read_host_file(host, sysdir) == hostname():
        log.info("the VM still runs on this host: nothing to clean")
        return 0
    with host.metadata_lock():
        remove_vm_volumes(host, request.vmid)
    _remove_as_owner(host, sysdir)
    return 0


def failmigrate(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """On the destination: undo premigrate (only the volumes it created)."""
    host = Host(rq.Failmigrate.from_json(params), log, privileged)
    request = host.request
    sysdir = host.datastores.vm_dir(request.sysdir, request.sys_ds, request.vmid)
    record = os.path.join(sysdir, PREMIGRATE_RECORD)
    try:
        with host.as_owner(), open(record, encoding="utf-8") as handle:
            created = [n for n in json.load(handle) if isinstance(n, str)]
    except (OSError, ValueError):
        created = []
    own = set(cache.vm_volumes(host.vg.lvs(), request.vmid)) if created else set()
    if created:
        with host.metadata_lock():
            volumes = host.vg.lvs()
            for name in created:
                if name in own:  # the record is oneadmin's file: only this VM's volumes
                    remove_vm_volume(host, volumes, name)
                    _remove_as_owner(host, os.path.join(sysdir, "disk." + name.rsplit("-", 1)[1]))
    _remove_as_owner(host, record)
    return 0


def read_host_file(host: Host, sysdir: str) -> str | None:
    try:
        with host.as_owner(), open(os.path.join(sysdir, ".host"), encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


# --- monitoring ---------------------------------------------------------------------------------

def monitor_ds(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """``monitor`` of one system datastore (``tm/lvmsnap/monitor``, the shared-DS path)."""
    from vaf.drivers.lvmsnap import monitor

    host = Host(rq.Monitor.from_json(params), log, privileged)
    linked = vm_links(host)
    for line in monitor.report(host.vg, host.settings, log, host.request.warn_percent,
                               linked):
        print(line)
    return 0


def probe(params: Mapping[str, object], log: DriverLog, privileged) -> int:
    """The host probe: one ``DS = [...]`` per ``vg-one-<id>`` of this host (what oned's
    scheduler reads for a non-shared system datastore)."""
    from vaf.drivers.lvmsnap import monitor

    host = Host(rq.Probe.from_json(params), log, privileged)
    prefix = privileged.conf.str("VG_PREFIX", dict(HOST_CONF)["VG_PREFIX"])
    for line in monitor.probe_lines(host.runner, prefix, host.settings):
        print(line)
    return 0


def vm_links(host: Host) -> set[str]:
    """The volumes some ``disk.<n>`` link of the system datastore points at (orphan check)."""
    root = os.path.join(host.datastores.location, str(host.request.sys_ds))
    linked: set[str] = set()
    with host.as_owner():
        for vm_dir in _entries(root):
            for entry in _entries(vm_dir):
                if os.path.basename(entry).startswith("disk."):
                    try:
                        target = os.readlink(entry)
                    except OSError:
                        continue
                    linked.add(os.path.basename(target))
    return linked


def _entries(directory: str) -> Iterator[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        yield os.path.join(directory, name)


COMMANDS: dict[str, Callable[[Mapping[str, object], DriverLog, object], int]] = {
    "clone": clone,
    "ln": ln,
    "mkimage": mkimage,
    "mvds": mvds,
    "cpds": cpds,
    "delete": delete,
    "mv": mv,
    "resize": resize,
    "context": context,
    "premigrate": premigrate,
    "postmigrate": postmigrate,
    "failmigrate": failmigrate,
    "monitor": monitor_ds,
    "probe": probe,
}
