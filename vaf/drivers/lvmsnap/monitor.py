"""lvmsnap's ``monitor``: what oned learns about a system datastore's volume group.

The host half prints ``USED_MB``/``FREE_MB``/``TOTAL_MB`` as ``vgs`` sees them, then the cache
size and how full each thin pool and classic snapshot is (pure builders below, table-tested),
and warns (tagged WARN lines) when one is fuller than ``MONITOR_WARN_PERCENT``.

stdlib only: runs on hypervisors.
"""

from __future__ import annotations

from collections.abc import Mapping

from vaf.drivers.lvmsnap import cache
from vaf.drivers.lvmsnap.requests import Monitor
from vaf.host.lvm import LogicalVolume, VolumeGroup
from vaf.host.runner import Runner
from vaf.one.log import DriverLog


def monitor_lines(volumes: Mapping[str, LogicalVolume]) -> list[str]:
    """Template lines for the fullness of thin pools and classic snapshots, and the cache."""
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
                         f'DATA_PERCENT="{percent:.2f}"]')
    return lines


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


def monitor(params: Mapping[str, object], log: DriverLog) -> int:
    request = Monitor.from_json(params)
    vg = VolumeGroup(request.settings.vg, Runner(sudo_prefix=request.settings.sudo))
    usage = vg.usage()
    volumes = vg.lvs()
    for warning in fullness_warnings(volumes, request.warn_percent):
        log.warn(warning)
    print(f"USED_MB={usage.used_mb}")
    print(f"FREE_MB={usage.free_mb}")
    print(f"TOTAL_MB={usage.total_mb}")
    for line in monitor_lines(volumes):
        print(line)
    return 0
