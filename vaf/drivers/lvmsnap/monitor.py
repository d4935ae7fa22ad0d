"""lvmsnap's monitoring: what is really free for new VM disks on a host's volume group.

Two paths lead to oned, and both print the same figures (pure builders below, table-tested):

* the **host probe** ``remotes/im/kvm-probes.d/host/system/vaf-lvmsnap`` (:mod:`.probe`),
  run by each host's monitoring: one ``DS = [ ID, USED_MB, TOTAL_MB, FREE_MB ]`` per
  ``vg-one-<id>``. This is what the scheduler reads for a non-shared system datastore
  (``SHARED = "NO"``, lvmsnap's), so it decides which host has room;
* ``tm/lvmsnap/monitor``, which oned runs only for a *shared* system datastore: the same
  figures as ``USED_MB``/``FREE_MB``/``TOTAL_MB`` plus the cache, the pool and snapshot
  fullness and orphaned volumes, with WARN lines above ``MONITOR_WARN_PERCENT``.

"Free for new disks": VM disks live in the thin pool when lvmsnap uses it (thin snapshots,
thin volatile volumes), so the figures are the pool's: ``TOTAL`` = pool size x
``THIN_OVERCOMMIT``, ``USED`` = what its volumes may grow to (their virtual sizes), ``FREE``
the difference (0 once the pool's data is full). Without a pool yet, the pool lvmsnap will
create (``THIN_POOL_SIZE`` of the VG). With thick volumes and classic snapshots: the VG's free
space plus the caches no VM uses (evicted on demand).

stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterable, Mapping

from vaf.drivers.lvmsnap import cache
from vaf.host.lvm import LogicalVolume, VgUsage, VolumeGroup, volume_groups
from vaf.host.runner import CommandError, Runner

_UNITS = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024, "K": 1 / 1024}


class PoolUsage(namedtuple("PoolUsage", "size_mb committed_mb data_percent")):
    __slots__ = ()


class Capacity(namedtuple("Capacity", "total_mb used_mb free_mb")):
    __slots__ = ()


def pool_usage(volumes: Mapping[str, LogicalVolume], pool: str) -> PoolUsage | None:
    """The pool's size and what its thin volumes may grow to (their virtual sizes)."""
    lv = volumes.get(pool)
    if lv is None or not lv.is_thin_pool:
        return None
    committed = sum(v.size_mb for v in volumes.values() if v.pool == pool)
    return PoolUsage(lv.size_mb, committed, lv.data_percent or 0.0)


def planned_pool_mb(spec: str, vg: VgUsage) -> int:
    """The size ``THIN_POOL_SIZE`` gives a pool not created yet (``50%VG``, ``2048``, ``2G``)."""
    text = str(spec).strip().upper()
    match = re.fullmatch(r"(\d+)%(VG|FREE|PVS)", text)
    if match:
        base = vg.free_mb if match.group(2) == "FREE" else vg.total_mb
        return base * int(match.group(1)) // 100
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text)
    if match:
        return int(float(match.group(1)) * _UNITS[match.group(2)])
    return 0


def uses_pool(settings) -> bool:
    return settings.mode == "thin" or settings.volatile == "thin"


def capacity(vg: VgUsage, volumes: Mapping[str, LogicalVolume], settings) -> Capacity:
    """What a new VM disk can get on this VG (see the module doc)."""
    if uses_pool(settings):
        usage = pool_usage(volumes, settings.pool)
        if usage is None:
            size, committed, full = planned_pool_mb(settings.pool_size, vg), 0, False
        else:
            size, committed, full = usage.size_mb, usage.committed_mb, usage.data_percent >= 100
        total = int(size * settings.overcommit)
        free = 0 if full else max(0, total - committed)
        return Capacity(total, min(committed, total), free)
    busy = cache.caches_in_use(volumes)
    evictable = sum(lv.size_mb for lv in volumes.values()
                    if cache.is_cache(lv) and lv.name not in busy)
    free = min(vg.total_mb, vg.free_mb + evictable)
    return Capacity(vg.total_mb, vg.total_mb - free, free)


def monitor_lines(volumes: Mapping[str, LogicalVolume], linked: Iterable[str] = ()) -> list[str]:
    """Template lines for the fullness of thin pools and classic snapshots, the cache and
    orphaned VM volumes (named ``lv-one-*`` with no ``disk.<n>`` link pointing at them)."""
    lines: list[str] = []
    caches = [lv for lv in volumes.values() if cache.is_cache(lv)]
    lines.append(f"LVMSNAP_CACHES={len(caches)}")
    lines.append(f"LVMSNAP_CACHE_MB={sum(lv.size_mb for lv in caches)}")
    for lv in sorted(volumes.values(), key=lambda v: v.name):
        if lv.is_thin_pool:
            lines.append(f'LVMSNAP_THIN_POOL=[NAME="{lv.name}",SIZE_MB="{lv.size_mb}",'
                         f'DATA_PERCENT="{lv.data_percent or 0:.2f}",'
                         f'METADATA_PERCENT="{lv.metadata_percent or 0:.2f}"]')
        elif lv.is_classic_snapshot:
            percent = 100.0 if lv.invalid else (lv.data_percent or 0.0)
            lines.append(f'LVMSNAP_SNAPSHOT=[NAME="{lv.name}",ORIGIN="{lv.origin}",'
                         f'DATA_PERCENT="{percent:.2f}",VALID="{"NO" if lv.invalid else "YES"}"]')
    for name in orphans(volumes, linked):
        lines.append(f'LVMSNAP_ORPHAN=[NAME="{name}"]')
    return lines


def orphans(volumes: Mapping[str, LogicalVolume], linked: Iterable[str]) -> list[str]:
    linked = set(linked)
    return sorted(lv.name for lv in volumes.values()
                  if cache.parse_vm_disk_name(lv.name) and cache.MARKER_TAG in lv.tags
                  and lv.name not in linked)


def fullness_warnings(volumes: Mapping[str, LogicalVolume], threshold: float) -> list[str]:
    warnings = []
    for lv in sorted(volumes.values(), key=lambda v: v.name):
        if lv.is_thin_pool:
            for what, value in (("data", lv.data_percent), ("metadata", lv.metadata_percent)):
                if (value or 0) >= threshold:
                    warnings.append(f"thin pool {lv.name} {what} is {value:.1f}% full")
        elif lv.is_classic_snapshot and (lv.invalid or (lv.data_percent or 0) >= threshold):
            state = "overflowed (invalid)" if lv.invalid else f"{lv.data_percent:.1f}% full"
            warnings.append(f"snapshot {lv.name} is {state}")
    return warnings


def report(vg: VolumeGroup, settings, log, warn_percent: float, linked: Iterable[str]):
    """The lines of ``tm/lvmsnap/monitor`` for one VG; WARN lines go to ``log``."""
    usage = vg.usage()
    volumes = vg.lvs()
    for warning in fullness_warnings(volumes, warn_percent):
        log.warn(warning)
    lost = orphans(volumes, linked)
    if lost:
        log.warn(f"volumes of VMs without a disk link (left by a failed action; DELETE of the "
                 f"VM removes them): {', '.join(lost)}")
    free = capacity(usage, volumes, settings)
    return [f"USED_MB={free.used_mb}", f"FREE_MB={free.free_mb}", f"TOTAL_MB={free.total_mb}",
            f"LVMSNAP_VG_TOTAL_MB={usage.total_mb}", f"LVMSNAP_VG_FREE_MB={usage.free_mb}",
            f"LVMSNAP_OVERCOMMIT={settings.overcommit:g}",
            *monitor_lines(volumes, linked)]


def ds_line(ds_id: int, free: Capacity) -> str:
    return (f"DS = [ ID = {ds_id}, USED_MB = {free.used_mb}, TOTAL_MB = {free.total_mb}, "
            f"FREE_MB = {free.free_mb} ]")


def probe_lines(runner: Runner, prefix: str, settings) -> list[str]:
    """One ``DS = [...]`` line per ``<prefix><id>`` volume group of this host."""
    lines = []
    for name, usage in sorted(volume_groups(runner).items()):
        ds = name[len(prefix):]
        if not name.startswith(prefix) or not ds.isdigit():
            continue
        try:
            volumes = VolumeGroup(name, runner).lvs()
        except CommandError:
            continue  # a VG that vanished between the two reads
        lines.append(ds_line(int(ds), capacity(usage, volumes, settings)))
    return lines
