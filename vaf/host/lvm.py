"""LVM operations on one volume group, local or on a hypervisor (through the runner).

One object per volume group owns every LVM command vaf runs, so callers never build LVM argv
themselves. All reads use machine-readable output (``--noheadings --units m --nosuffix
--separator``) and the runner's C locale. Privileged commands go through ``sudo -n``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vaf.errors import DriverError
from vaf.host.runner import CommandError, Runner

_VG_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
SEPARATOR = "|"


@dataclass(frozen=True)
class VgUsage:
    total_mb: int
    free_mb: int

    @property
    def used_mb(self) -> int:
        return self.total_mb - self.free_mb


def system_vg_name(system_ds_id: int) -> str:
    """fs_lvm's name for the volume group of a system datastore."""
    return f"vg-one-{system_ds_id}"


def parse_mb(text: str) -> int:
    """LVM prints ``131068.00`` with ``--units m --nosuffix``; round down to whole MB."""
    try:
        return int(float(text.strip()))
    except ValueError:
        raise DriverError(f"unexpected size {text!r} in LVM output") from None


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    runner: Runner

    def __post_init__(self) -> None:
        if not _VG_NAME_RE.match(self.name):
            raise DriverError(f"invalid volume group name {self.name!r}")

    def lvm(self, *args: str, **kwargs):
        """Run one LVM command with sudo; lvm's failures become CommandErrors."""
        return self.runner.run(list(args), sudo=True, **kwargs)

    def usage(self) -> VgUsage:
        try:
            out = self.lvm("vgs", "--noheadings", "--units", "m", "--nosuffix",
                           "--separator", SEPARATOR, "-o", "vg_size,vg_free", self.name).stdout
        except CommandError as err:
            if "not found" in err.stderr.lower():
                where = f" on {self.runner.host}" if self.runner.host else ""
                raise DriverError(f"volume group {self.name} does not exist{where}") from None
            raise
        fields = out.strip().split(SEPARATOR)
        if len(fields) != 2:
            raise DriverError(f"unexpected vgs output for {self.name}: {out.strip()!r}")
        return VgUsage(total_mb=parse_mb(fields[0]), free_mb=parse_mb(fields[1]))
