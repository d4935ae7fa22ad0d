"""lvmsnap's image cache on a hypervisor's volume group: names, keys, tags, eviction (pure).

Layout in ``vg-one-<system ds>``:

* ``vaf-cache-<key>``: a read-only plain LV holding one image file byte for byte. Never named
  ``lv-one-*``, which OpenNebula's monitor takes for VM disks.
* ``vaf-fill-<key>``: the same while it is being filled; renamed to ``vaf-cache-<key>`` only
  once the copy is complete and verified, so a fill cut short is never used.
* ``vaf-pool``: the thin pool holding the VM disks (thin snapshots of caches, scratch disks).
* ``lv-one-<vmid>-<disk>``: VM disks, as fs_lvm names them.

The key is a hash of the image's path, size, mtime (nanoseconds) and inode as the hypervisor
sees them on the shared mount: what changes when the content does. A checksum would be more
exact but costs a full read of the image on every clone, which is what the cache exists to
avoid; writing an image (cp, dd, qemu-img) changes its mtime, a rename over it its inode.
ctime is left out: ``chmod``, ``chown`` or a new hard link change it and not the bytes, and
each would have cost a refill and one more cache of identical content.
The tags say what a cache holds (``vaf.src=``, ``vaf.bytes=``, ``vaf.mtime=``) and when it was
last used (``vaf.used=<epoch>``), so the VG itself is the one record: nothing can drift.

stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Iterable, Mapping

from vaf.host.lvm import LogicalVolume

try:  # built into Debian's python3.11: spares loading OpenSSL on every clone
    from _sha256 import sha256
except ImportError:  # pragma: no cover - other builds
    from hashlib import sha256

CACHE_PREFIX = "vaf-cache-"
FILL_PREFIX = "vaf-fill-"
MARKER_TAG = "vaf.lvmsnap"
USED_TAG = "vaf.used"
BYTES_TAG = "vaf.bytes"
SRC_TAG = "vaf.src"
PERSISTENT_TAG = "vaf.persistent"
KEY_LENGTH = 24
_VM_DISK_RE = re.compile(r"^lv-one-(\d+)-(\d+)\Z")


class ImageStat(namedtuple("ImageStat", "path size mtime_ns inode")):
    """What identifies an image's content as the host sees it (a namedtuple: it is created
    on every clone, and a dataclass costs measurable import time on a TCG-slow host)."""

    __slots__ = ()

    @classmethod
    def of(cls, path: str, fd: int | None = None) -> ImageStat:
        st = os.stat(path) if fd is None else os.fstat(fd)
        return cls(path, st.st_size, st.st_mtime_ns, st.st_ino)

    @property
    def key(self) -> str:
        text = f"{self.path}\0{self.size}\0{self.mtime_ns}\0{self.inode}"
        return sha256(text.encode()).hexdigest()[:KEY_LENGTH]

    @property
    def size_mb(self) -> int:
        return -(-self.size // (1024 * 1024))


def cache_name(key: str) -> str:
    return CACHE_PREFIX + key


def fill_name(key: str) -> str:
    return FILL_PREFIX + key


def vm_disk_name(vmid: int, disk_id: int) -> str:
    return f"lv-one-{vmid}-{disk_id}"


def parse_vm_disk_name(name: str) -> tuple[int, int] | None:
    match = _VM_DISK_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def cache_tags(image: ImageStat, now: int) -> list[str]:
    return [MARKER_TAG, f"{SRC_TAG}={image.path}", f"{BYTES_TAG}={image.size}",
            f"vaf.mtime={image.mtime_ns}", f"{USED_TAG}={now}"]


def is_cache(lv: LogicalVolume) -> bool:
    return lv.name.startswith(CACHE_PREFIX)


def last_used(lv: LogicalVolume) -> int:
    value = lv.tag(USED_TAG)
    return int(value) if value and value.isdigit() else 0


def caches_in_use(volumes: Mapping[str, LogicalVolume]) -> set[str]:
    """Caches some LV (a VM disk snapshot) has as its origin."""
    return {lv.origin for lv in volumes.values() if lv.origin.startswith(CACHE_PREFIX)}


def superseded_caches(volumes: Mapping[str, LogicalVolume], path: str,
                      current: str) -> list[str]:
    """Unused caches of an older version of the image at ``path`` (never hit again)."""
    busy = caches_in_use(volumes)
    return sorted(lv.name for lv in volumes.values()
                  if is_cache(lv) and lv.name != current and lv.name not in busy
                  and lv.tag(SRC_TAG) == path)


def vm_volumes(volumes: Mapping[str, LogicalVolume], vmid: int,
               disk_id: int | None = None) -> list[str]:
    """The VM's disk volumes by name and vaf's tag (``disk_id``: only that one)."""
    found = []
    for lv in volumes.values():
        parsed = parse_vm_disk_name(lv.name)
        if (parsed and parsed[0] == vmid and (disk_id is None or parsed[1] == disk_id)
                and MARKER_TAG in lv.tags):
            found.append(lv.name)
    return sorted(found)


def stale_fills(volumes: Iterable[LogicalVolume]) -> list[str]:
    return sorted(lv.name for lv in volumes if lv.name.startswith(FILL_PREFIX))


class NoRoom(Exception):
    """Even evicting every unused cache would not free enough space."""

    def __init__(self, free_mb: int, evictable_mb: int):
        super().__init__(f"{free_mb} MB free, {evictable_mb} MB in unused caches")
        self.free_mb = free_mb
        self.evictable_mb = evictable_mb


def choose_evictions(volumes: Mapping[str, LogicalVolume], free_mb: int, need_mb: int,
                     keep: Iterable[str] = ()) -> list[str]:
    """Unused caches to remove, least recently used first, until ``need_mb`` fit.

    ``keep`` names caches that must survive (the one being used right now). Raises
    :class:`NoRoom` when removing them all would still not be enough, so nothing is evicted
    for a request that will fail anyway.
    """
    if need_mb <= free_mb:
        return []
    busy = caches_in_use(volumes) | set(keep)
    candidates = sorted((lv for lv in volumes.values() if is_cache(lv) and lv.name not in busy),
                        key=lambda lv: (last_used(lv), lv.name))
    chosen: list[str] = []
    room = free_mb
    for lv in candidates:
        chosen.append(lv.name)
        room += lv.size_mb
        if room >= need_mb:
            return chosen
    raise NoRoom(free_mb, room - free_mb)


def classic_cow_mb(origin_mb: int, percent: int) -> int:
    """COW size for a classic snapshot of an ``origin_mb`` volume.

    At 100 % the COW must hold every chunk plus the exception table (about 1 % with 4 KiB
    chunks), so ask for a little more; lvm itself trims a COW larger than it can ever use.
    """
    wanted = -(-origin_mb * percent // 100)
    if percent >= 100:
        wanted += origin_mb // 32 + 8
    return max(wanted, 8)
