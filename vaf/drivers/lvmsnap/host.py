"""lvmsnap on the hypervisor: the commands ``host-command lvmsnap-<action>`` runs there.

The front-end action (:mod:`vaf.drivers.lvmsnap.actions`) validates oned's argv, reads the
conf and the VM XML, and sends one typed request (:mod:`vaf.drivers.lvmsnap.requests`) through
a single ssh round trip. Everything that touches LVM, the shared image mount or the VM
directory happens here, as ``oneadmin``; LVM, dd and mkfs run with ``sudo -n`` (the rules are
in ``share/sudoers/vaf``). LVM commands are methods of :class:`vaf.host.lvm.VolumeGroup`.

Concurrency: every LVM metadata change runs under the host-local lock ``lvm-<vg>``; a cache fill
runs under ``fill-<vg>-<key>`` (held across the copy, so eight clones of one uncached image do
one fill and seven waits). Lock order is always fill, then lvm.

stdlib only: runs with Debian's python3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping

from vaf.drivers.lvmsnap import cache, monitor
from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.cache import ImageStat
from vaf.errors import DriverError, ProtocolError
from vaf.host import dd, fs, locks
from vaf.host.files import remove_path, replace_symlink, write_atomically
from vaf.host.lvm import LogicalVolume, VolumeGroup
from vaf.host.runner import CommandError, Result, Runner
from vaf.one.log import DriverLog

MB = 1024 * 1024
STALE_FILL_WAIT_SECONDS = 600
EXTENT_MB = 4  # lvm's default extent size: sizes round up to it


class Host:
    """One host-side action: its request, log, the local runner and the volume group."""

    def __init__(self, request, log: DriverLog):
        self.request = request
        self.log = log
        self.settings = request.settings
        self.runner = Runner(sudo_prefix=self.settings.sudo)
        self.vg = VolumeGroup(self.settings.vg, self.runner, on_done=self._timed)

    def _timed(self, result: Result) -> None:
        # for the admin (oned.log) and the benchmark: where a slow action spends its time
        self.log.debug(f"{result.argv[0]} {result.argv[-1]}: {result.seconds:.2f} s")

    def metadata_lock(self):
        return locks.exclusive(self.settings.lock_dir, f"lvm-{self.vg.name}")

    def checkpoint(self, name: str) -> None:
        """Test hook: die here by SIGKILL, as a crash or an admin's kill -9 would."""
        if self.settings.test_kill_at == name:
            self.log.debug(f"test hook: killing myself at {name}")
            os.kill(os.getpid(), signal.SIGKILL)

    def copy(self, source: str, target: str, total: int, what: str, **dd_options) -> int:
        return dd.copy(self.runner, source, target, total=total, what=what,
                       bs=self.settings.dd_bs, report=self.log.info,
                       every=self.settings.progress_seconds, **dd_options)

    @property
    def thin_volatile(self) -> bool:
        return self.settings.volatile == "thin"


# --- small host helpers -------------------------------------------------------------------

def hostname() -> str:
    # the kernel's node name: no DNS lookup on the clone path (socket.getfqdn may hang)
    return os.uname().nodename


def prepare_vm_dir(path: str) -> None:
    """``mkdir -p`` the VM directory and record the host in ``.host``, as fs_lvm does."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".host"), "w", encoding="utf-8") as handle:
        handle.write(hostname() + "\n")


def linked_lv(host: Host, link: str) -> str | None:
    """The LV name ``link`` points at inside our VG, or None (not a link, elsewhere)."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    prefix = f"/dev/{host.vg.name}/"
    return target[len(prefix):] if target.startswith(prefix) else None


def now() -> int:
    return int(time.time())


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


def wait_until_closed(host: Host, name: str, limit: float = STALE_FILL_WAIT_SECONDS) -> None:
    """A killed fill may leave its dd writing for a while: wait for it to let go."""
    deadline = time.monotonic() + limit
    while True:
        lv = host.vg.lvs().get(name)
        if lv is None or not lv.open:
            return
        if time.monotonic() > deadline:
            raise DriverError(f"{host.vg.name}/{name} is still open after {limit:.0f} s: "
                              "a process still writes it")
        time.sleep(1)


def remove_stale_fills(host: Host, volumes: Mapping[str, LogicalVolume]) -> None:
    """Remove fills whose filler is gone (its fill lock is free) and that nothing has open."""
    for name in cache.stale_fills(volumes.values()):
        key = name[len(cache.FILL_PREFIX):]
        with locks.if_free(host.settings.lock_dir, fill_lock(host, key)) as free:
            if free and not volumes[name].open:
                host.log.info(f"removing {name}, left over by an interrupted fill")
                host.vg.remove(name)


def fill_lock(host: Host, key: str) -> str:
    return f"fill-{host.vg.name}-{key}"


def create_volume(host: Host, volumes: Mapping[str, LogicalVolume], name: str, size_mb: int,
                  tags: list[str], thin: bool) -> None:
    """A new empty VM volume: thin in the pool, or thick (making room for it)."""
    if thin:
        ensure_pool(host, volumes)
        host.vg.create_thin(host.settings.pool, name, size_mb, tags)
    else:
        create_with_room(host, volumes, lambda: host.vg.create_linear(name, size_mb, tags),
                         size_mb)


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

def stat_image(path: str) -> ImageStat:
    try:
        return ImageStat.of(path)
    except FileNotFoundError:
        raise DriverError(f"image {path} not found on {hostname()}: is the image datastore "
                          "mounted there?") from None
    except OSError as err:
        raise DriverError(f"cannot read image {path} on {hostname()}: {err.strerror}") from None


def start_fill(host: Host, image: ImageStat, volumes: Mapping[str, LogicalVolume]) -> bool:
    """Create the empty ``vaf-fill-<key>`` (caller holds the fill and the metadata locks).

    A fill LV of this key that still exists was left by a filler that died (we hold its
    lock): it is removed first, unless a dd it started still has it open (then False: the
    caller waits for that dd outside the metadata lock and calls again).
    """
    fill = cache.fill_name(image.key)
    host.checkpoint("fill-start")
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


def finish_fill(host: Host, image: ImageStat, snapshot: tuple) -> None:
    """Copy and verify, then (one metadata lock hold) seal, rename, and make the VM disk."""
    fill = cache.fill_name(image.key)
    host.checkpoint("after-create")
    try:
        copy_and_verify(host, image, host.vg.path(fill))
        host.checkpoint("after-copy")
    except BaseException:
        discard(host, fill)
        raise
    with host.metadata_lock():
        seal(host, fill)
        host.checkpoint("before-rename")
        host.vg.rename(fill, cache.cache_name(image.key))
        if try_snapshot(host, *snapshot) is not None:
            raise DriverError(f"cache {snapshot[0]} vanished while cloning {image.path}")


def seal(host: Host, fill: str) -> None:
    """Make a filled volume a cache: read-only; for thin mode also inactive and skipped by
    autoactivation, because lvm takes only an inactive LV as a new external origin."""
    if host.settings.mode == "thin":
        host.vg.change(fill, readonly=True, activate=False, skip=True)
    else:
        host.vg.change(fill, readonly=True)


def copy_and_verify(host: Host, image: ImageStat, device: str) -> None:
    started = time.monotonic()
    host.log.info(f"filling cache from {image.path} ({image.size // MB} MB)")
    copied = host.copy(image.path, device, image.size, f"filling cache from {image.path}")
    host.checkpoint("after-dd")
    if copied != image.size:
        raise DriverError(f"copy of {image.path} incomplete: {copied} of {image.size} bytes")
    if stat_image(image.path) != image:
        raise DriverError(f"image {image.path} changed while it was being copied; retry")
    if image.size % (4 * MB):
        dd.zero_tail(host.runner, device, image.size)
    seconds = time.monotonic() - started
    host.log.info(f"filled cache from {image.path} in {seconds:.1f} s "
                  f"({image.size / MB / max(seconds, 0.001):.0f} MB/s)")


def discard(host: Host, name: str) -> None:
    """Best-effort removal of a volume we created, after a failure."""
    try:
        wait_until_closed(host, name, limit=60)  # a dd whose sudo was killed may linger
        with host.metadata_lock():
            host.vg.remove(name)
    except (CommandError, DriverError) as err:
        host.log.error(f"could not remove {name}: {err.reason}")


# --- VM disks made from a cache ------------------------------------------------------------

def snapshot(host: Host, origin: str, origin_mb: int, disk: str, tags: list[str]) -> None:
    if host.settings.mode == "thin":
        host.vg.snapshot_thin(host.settings.pool, origin, disk, tags)
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


def vm_disk_tags(host: Host, image: ImageStat | None = None) -> list[str]:
    tags = [cache.MARKER_TAG]
    if image is not None:
        tags.append(f"{cache.SRC_TAG}={image.path}")
    return tags


def image_disk_request(request, log: DriverLog):
    """What clone and ln both start from: the host, the image, ``disk.<i>``, the volume name
    and its size (DISK/SIZE, never less than the image)."""
    host = Host(request, log)
    image = stat_image(request.src)
    disk = cache.vm_disk_name(request.vmid, request.disk_id)
    size_mb = max(request.size_mb or 0, image.size_mb)
    return host, image, request.dst, disk, size_mb


def clone(params: Mapping[str, object], log: DriverLog) -> int:
    """``clone``: a snapshot of the image's cache LV (filled on first use) as ``disk.<i>``."""
    host, image, dst, disk, size_mb = image_disk_request(rq.Clone.from_json(params), log)
    origin = cache.cache_name(image.key)
    tags = vm_disk_tags(host)

    def waiting() -> None:
        log.info(f"waiting for another clone of {image.path} on this host (filling its cache)")

    snapshot = (origin, image.size_mb, disk, tags)
    # The image's fill lock is taken before even trying the snapshot: when many VMs of an
    # uncached image start together, one fills while the others wait here, instead of each
    # first paying a failed lvcreate under the VG lock. The cold path keeps the metadata
    # lock from the failed lvcreate to the new fill LV, so its listing stays true.
    with locks.exclusive(host.settings.lock_dir, fill_lock(host, image.key), on_wait=waiting):
        with host.metadata_lock():
            volumes = try_snapshot(host, *snapshot)
            started = volumes is not None and start_fill(host, image, volumes)
        if volumes is not None:
            if not started:
                wait_until_closed(host, cache.fill_name(image.key))
                with host.metadata_lock():
                    start_fill(host, image, host.vg.lvs())
            finish_fill(host, image, snapshot)
    grow(host, disk, size_mb, image.size_mb)
    prepare_vm_dir(dst)
    replace_symlink(host.vg.path(disk), dst)
    return 0


def ln(params: Mapping[str, object], log: DriverLog) -> int:
    """``ln`` (persistent image): a volume of its own, never shared, written back by mvds."""
    host, image, dst, disk, size_mb = image_disk_request(rq.Ln.from_json(params), log)
    thin = host.thin_volatile
    tags = vm_disk_tags(host, image) + [cache.PERSISTENT_TAG, f"{cache.BYTES_TAG}={image.size}"]
    with host.metadata_lock():
        volumes = host.vg.lvs()
        remove_if_idle(host, volumes, disk)
        create_volume(host, volumes, disk, size_mb, tags, thin)
    device = host.vg.path(disk)
    try:
        copied = host.copy(image.path, device, image.size,
                           f"copying persistent image {image.path}", sparse=thin)
        if copied != image.size:
            raise DriverError(f"copy of {image.path} incomplete: {copied} of {image.size} bytes")
        if not thin:
            dd.zero_tail(host.runner, device, image.size)
    except BaseException:
        discard(host, disk)
        raise
    prepare_vm_dir(dst)
    replace_symlink(device, dst)
    return 0


def mkimage(params: Mapping[str, object], log: DriverLog) -> int:
    """``mkimage``/``mkswap``: a new volume, formatted as swap, a filesystem, or left raw."""
    request = rq.Mkimage.from_json(params)
    host = Host(request, log)
    dst, size_mb, fs_type = request.dst, request.size_mb, request.fs or "raw"
    disk = cache.vm_disk_name(request.vmid, request.disk_id)
    thin = host.thin_volatile
    with host.metadata_lock():
        volumes = host.vg.lvs()
        remove_if_idle(host, volumes, disk)
        create_volume(host, volumes, disk, size_mb, vm_disk_tags(host), thin)
    device = host.vg.path(disk)
    try:
        if fs_type == "swap":
            host.runner.run(fs.mkswap_argv(device), sudo=True)
        elif fs_type != "raw":
            host.runner.run(fs.mkfs_argv(fs_type, device, thin=thin), sudo=True)
    except BaseException:
        discard(host, disk)
        raise
    prepare_vm_dir(dst)
    replace_symlink(device, dst)
    return 0


# --- writing volumes back to the image datastore -------------------------------------------

def write_back(host: Host, name: str, destination: str, count: int) -> None:
    dd.write_back(host.runner, host.vg.path(name), destination, count=count,
                  what=f"saving {name} to {destination}", bs=host.settings.dd_bs,
                  report=host.log.info, every=host.settings.progress_seconds)


def disk_lv(host: Host, link: str) -> tuple[str, LogicalVolume, Mapping[str, LogicalVolume]]:
    name = linked_lv(host, link)
    volumes = host.vg.lvs()
    if name is None or name not in volumes:
        raise DriverError(f"{link} is not a disk in volume group {host.vg.name}")
    return name, volumes[name], volumes


def mvds(params: Mapping[str, object], log: DriverLog) -> int:
    """``mvds``: write a persistent disk back over its image, then drop the volume."""
    request = rq.Mvds.from_json(params)
    host = Host(request, log)
    src, dst = request.src, request.dst
    name, lv, _ = disk_lv(host, src)
    write_back(host, name, dst, int(lv.tag(cache.BYTES_TAG) or lv.size_bytes))
    with host.metadata_lock():
        host.vg.remove(name)
    remove_path(src)
    return 0


def cpds(params: Mapping[str, object], log: DriverLog) -> int:
    """``cpds`` (disk-saveas): copy a disk's current content to a new image file."""
    request = rq.Cpds.from_json(params)
    host = Host(request, log)
    name, lv, _ = disk_lv(host, request.src)
    write_back(host, name, request.dst, lv.size_bytes)
    return 0


# --- removing, moving, resizing --------------------------------------------------------------

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


def vm_links(directory: str) -> Iterator[str]:
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith("disk."):
            yield os.path.join(directory, entry)


def delete(params: Mapping[str, object], log: DriverLog) -> int:
    """``delete``: a disk (its LV, then the link) or the VM dir (its LVs, then the dir)."""
    request = rq.Delete.from_json(params)
    host = Host(request, log)
    path = request.path
    links = [path] if request.is_disk else list(vm_links(path))
    names = [n for n in (linked_lv(host, link) for link in links) if n]
    if names:
        with host.metadata_lock():
            volumes = host.vg.lvs()
            for name in names:
                remove_vm_volume(host, volumes, name)
    remove_path(path)
    return 0


def mv(params: Mapping[str, object], log: DriverLog) -> int:
    """``mv`` on one host: reactivate a disk in place, or move it / the VM dir to a new path."""
    request = rq.Mv.from_json(params)
    host = Host(request, log)
    src, dst = request.src, request.dst
    name = linked_lv(host, src) if request.is_disk else None
    if name is not None:
        with host.metadata_lock():
            host.vg.change(name, activate=True)
    if src != dst and os.path.lexists(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
    return 0


def resize(params: Mapping[str, object], log: DriverLog) -> int:
    request = rq.Resize.from_json(params)
    host = Host(request, log)
    name, lv, _ = disk_lv(host, request.path)
    size_mb = request.size_mb
    if size_mb < lv.size_mb:
        raise DriverError(f"cannot shrink {name} from {lv.size_mb} MB to {size_mb} MB")
    if lv.is_classic_snapshot:
        raise DriverError(f"{name} is a classic snapshot: it cannot grow past its image")
    with host.metadata_lock():
        host.vg.extend(name, size_mb)
        if cache.PERSISTENT_TAG in lv.tags:
            old = [t for t in lv.tags if t.startswith(cache.BYTES_TAG + "=")]
            host.vg.retag(name, old, [f"{cache.BYTES_TAG}={size_mb * MB}"])
    return 0


def context(params: Mapping[str, object], log: DriverLog) -> int:
    """``context``: store the ISO the front-end built (our stdin) as ``disk.<N>``."""
    dst = rq.Context.from_json(params).dst
    data = sys.stdin.buffer.read()
    if not data:
        raise ProtocolError("context: no ISO data on stdin")
    prepare_vm_dir(dst)
    write_atomically(dst, data)
    return 0


# --- live migration ---------------------------------------------------------------------------

PREMIGRATE_RECORD = ".vaf-premigrate"


def premigrate(params: Mapping[str, object], log: DriverLog) -> int:
    """On the destination: make every disk's volume exist and be active, linked as on the source.

    The VG is host-local, so a volume missing here is created empty with the disk's size for
    the hypervisor's storage copy to fill; the names created are recorded so failmigrate
    removes exactly those.
    """
    request = rq.Premigrate.from_json(params)
    host = Host(request, log)
    sysdir, vmid = request.sysdir, request.vmid
    disks = rq.disk_pairs(request.disks)
    os.makedirs(sysdir, exist_ok=True)
    created: list[str] = []
    with host.metadata_lock():
        volumes = host.vg.lvs()
        for disk_id, size_mb in disks:
            name = cache.vm_disk_name(vmid, disk_id)
            if name in volumes:
                host.vg.change(name, activate=True)
            elif size_mb:
                create_volume(host, volumes, name, size_mb, vm_disk_tags(host),
                              host.thin_volatile)
                created.append(name)
            else:
                continue
            replace_symlink(host.vg.path(name), os.path.join(sysdir, f"disk.{disk_id}"))
    with open(os.path.join(sysdir, PREMIGRATE_RECORD), "w", encoding="utf-8") as handle:
        json.dump(created, handle)
    prepare_vm_dir(os.path.join(sysdir, "disk.0"))
    return 0


def postmigrate(params: Mapping[str, object], log: DriverLog) -> int:
    """On the source: the VM now runs elsewhere, so drop its volumes and directory here.

    ``.host`` names the host the VM runs on (premigrate rewrote it): when that is this very
    machine (two names for one host), there is nothing to drop.
    """
    request = rq.Postmigrate.from_json(params)
    host = Host(request, log)
    sysdir = request.sysdir
    if read_host_file(sysdir) == hostname():
        log.info("the VM still runs on this host: nothing to clean")
        return 0
    vmid = request.vmid
    with host.metadata_lock():
        volumes = host.vg.lvs()
        for name in sorted(volumes):
            parsed = cache.parse_vm_disk_name(name)
            if parsed and parsed[0] == vmid:
                remove_vm_volume(host, volumes, name)
    remove_path(sysdir)
    return 0


def failmigrate(params: Mapping[str, object], log: DriverLog) -> int:
    """On the destination: undo premigrate (only the volumes it created)."""
    request = rq.Failmigrate.from_json(params)
    host = Host(request, log)
    sysdir = request.sysdir
    record = os.path.join(sysdir, PREMIGRATE_RECORD)
    try:
        with open(record, encoding="utf-8") as handle:
            created = [n for n in json.load(handle) if isinstance(n, str)]
    except (OSError, ValueError):
        created = []
    if created:
        with host.metadata_lock():
            volumes = host.vg.lvs()
            for name in created:
                remove_vm_volume(host, volumes, name)
                remove_path(os.path.join(sysdir, "disk." + name.rsplit("-", 1)[1]))
    remove_path(record)
    return 0


def read_host_file(sysdir: str) -> str | None:
    try:
        with open(os.path.join(sysdir, ".host"), encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


COMMANDS: dict[str, Callable[[Mapping[str, object], DriverLog], int]] = {
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
    "monitor": monitor.monitor,
}
