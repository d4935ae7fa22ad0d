"""LVM operations on one volume group, local or on a hypervisor (through the runner).

One object per volume group owns every LVM command vaf runs, so callers never build LVM argv
themselves: the argv come from the pure ``*_argv`` builders below (table-tested). All reads use
machine-readable output (``--noheadings --units m|b --nosuffix --separator``) and the runner's
C locale. Privileged commands go through ``sudo -n``.

Every ``lvcreate`` passes ``--yes``: lvm otherwise stops at an interactive "Wipe it? [y/n]"
question when reused space still holds a filesystem signature, and a driver has no terminal.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence

from vaf.errors import DriverError
from vaf.host.runner import CommandError, Result, Runner

_VG_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
SEPARATOR = "|"


class VgUsage(namedtuple("VgUsage", "total_mb free_mb")):
    __slots__ = ()

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


class VolumeGroup:
    """One volume group, reached through ``runner`` (local, or a hypervisor over ssh).

    Every LVM command vaf runs is a method here (as os-brick's ``LVM`` class): callers name
    the operation, never the argv, so the sudoers rules in ``share/sudoers/vaf`` can list
    exactly what this class runs (``tests/test_privileged.py`` checks that they match).
    """

    def __init__(self, name: str, runner: Runner,
                 on_done: Callable[[Result], None] | None = None):
        if not _VG_NAME_RE.match(name):
            raise DriverError(f"invalid volume group name {name!r}")
        self.name = name
        self.runner = runner
        self.on_done = on_done  # sees every finished LVM command (timings for the log)

    def lvm(self, *args: str, **kwargs) -> Result:
        """Run one LVM command with sudo; lvm's failures become CommandErrors."""
        result = self.runner.run(list(args), sudo=True, **kwargs)
        if self.on_done is not None:
            self.on_done(result)
        return result

    # --- changes (callers serialise them with a host-local lock) ---------------------------

    def create_linear(self, name: str, size_mb: int, tags: Sequence[str] = (),
                      wipe: bool = True) -> Result:
        return self.lvm(*lvcreate_linear_argv(self.name, name, size_mb, tags, wipe))

    def create_pool(self, pool: str, size: str | int) -> Result:
        return self.lvm(*lvcreate_pool_argv(self.name, pool, size))

    def create_thin(self, pool: str, name: str, size_mb: int,
                    tags: Sequence[str] = ()) -> Result:
        return self.lvm(*lvcreate_thin_argv(self.name, pool, name, size_mb, tags))

    def snapshot_thin(self, pool: str, origin: str, name: str,
                      tags: Sequence[str] = ()) -> Result:
        return self.lvm(*lvcreate_thin_snapshot_argv(self.name, pool, origin, name, tags))

    def snapshot_classic(self, origin: str, name: str, cow_mb: int,
                         tags: Sequence[str] = ()) -> Result:
        return self.lvm(*lvcreate_classic_snapshot_argv(self.name, origin, name, cow_mb, tags))

    def remove(self, name: str) -> Result:
        return self.lvm(*lvremove_argv(self.name, name))

    def rename(self, old: str, new: str) -> Result:
        return self.lvm(*lvrename_argv(self.name, old, new))

    def change(self, name: str, **changes) -> Result:
        """``lvchange``: see :func:`lvchange_argv` for ``readonly``, ``activate``, ``skip``,
        ``add_tags``, ``del_tags``."""
        return self.lvm(*lvchange_argv(self.name, name, **changes))

    def retag(self, name: str, old: Sequence[str], new: Sequence[str]) -> Result:
        return self.change(name, del_tags=old, add_tags=new)

    def extend(self, name: str, size_mb: int) -> Result:
        return self.lvm(*lvextend_argv(self.name, name, size_mb))

    # --- reads -----------------------------------------------------------------------------

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

    def lvs(self) -> dict[str, LogicalVolume]:
        """Every LV of the group by name (one ``lvs`` call)."""
        return parse_lvs(self.lvm(*lvs_argv(self.name)).stdout)

    def path(self, lv: str) -> str:
        """The device path udev creates for an active LV."""
        return f"/dev/{self.name}/{lv}"

    def exists(self) -> bool:
        return self.runner.succeeds(["vgs", "--noheadings", "-o", "vg_name", self.name],
                                    sudo=True)


def volume_groups(runner: Runner) -> dict[str, VgUsage]:
    """Every volume group of the host with its size and free space (one ``vgs``)."""
    out = runner.run(["vgs", "--noheadings", "--units", "m", "--nosuffix", "--separator",
                      SEPARATOR, "-o", "vg_name,vg_size,vg_free"], sudo=True).stdout
    groups = {}
    for line in out.splitlines():
        fields = line.strip().split(SEPARATOR)
        if len(fields) == 3:
            groups[fields[0]] = VgUsage(parse_mb(fields[1]), parse_mb(fields[2]))
    return groups


#: the columns vaf reads from ``lvs``; sizes in bytes so image sizes compare exactly
LV_FIELDS = ("lv_name", "lv_attr", "lv_size", "origin", "pool_lv", "data_percent",
             "metadata_percent", "lv_tags")


class LogicalVolume(namedtuple("LogicalVolume", "name attr size_bytes origin pool data_percent "
                                             "metadata_percent tags")):
    """One row of :func:`lvs_argv` (a namedtuple: cheaper to define than a dataclass, and
    this module is imported on every host-side call)."""

    __slots__ = ()

    @property
    def size_mb(self) -> int:
        return -(-self.size_bytes // MB)

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"

    @property
    def open(self) -> bool:
        return len(self.attr) > 5 and self.attr[5] == "o"

    @property
    def is_thin_pool(self) -> bool:
        return self.attr.startswith("t")

    @property
    def is_classic_snapshot(self) -> bool:
        # s = snapshot, S = invalid snapshot (older lvm)
        return self.attr[:1] in ("s", "S")

    @property
    def invalid(self) -> bool:
        # old lvm: a leading S; lvm 2.03 keeps "s" and shows the state as "I" (5th column:
        # swi-I-s---); "m" there is a merge failure, as fatal for the VM's disk
        return self.attr.startswith("S") or (len(self.attr) > 4 and self.attr[4] in "Im")

    def tag(self, key: str) -> str | None:
        """The value of a ``key=value`` tag, or None."""
        prefix = key + "="
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix):]
        return None


MB = 1024 * 1024


def _percent(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def parse_lvs(output: str) -> dict[str, LogicalVolume]:
    """Parse the output of :func:`lvs_argv`."""
    volumes: dict[str, LogicalVolume] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split(SEPARATOR)
        if len(fields) != len(LV_FIELDS):
            raise DriverError(f"unexpected lvs output: {line.strip()!r}")
        name, attr, size, origin, pool, data, meta, tags = fields
        try:
            volume = LogicalVolume(name=name, attr=attr, size_bytes=int(float(size)),
                                   origin=origin, pool=pool, data_percent=_percent(data),
                                   metadata_percent=_percent(meta),
                                   tags=tuple(t for t in tags.split(",") if t))
        except ValueError:
            raise DriverError(f"unexpected lvs output: {line.strip()!r}") from None
        volumes[name] = volume
    return volumes


_TAG_BAD_CHARS = re.compile(r"[^A-Za-z0-9_+.\-/=!:&#]")


def safe_tag(text: str) -> str:
    """LVM tags accept ``[A-Za-z0-9_+.-/=!:&#]`` and 1024 characters; replace the rest."""
    return _TAG_BAD_CHARS.sub("_", text)[:1024]


def _tag_args(option: str, tags: Iterable[str]) -> list[str]:
    args: list[str] = []
    for tag in tags:
        args += [option, safe_tag(tag)]
    return args


def _size_args(size: str | int) -> list[str]:
    """``-L <n>m`` for a number of MB, ``-l`` for an extent spec such as ``50%VG``."""
    text = str(size).strip()
    if "%" in text:
        return ["-l", text]
    if text.isdigit():
        return ["-L", f"{text}m"]
    return ["-L", text]


def subject(argv: Sequence[str]) -> str:
    """The volume an LVM argv acts on, for log lines: ``-n <name>``, else the last
    ``vg/lv`` word, else the last word (``lvcreate lv-one-7-0``, not a tag)."""
    words = list(argv)
    if "-n" in words[:-1]:
        return words[words.index("-n") + 1]
    for word in reversed(words):
        if "/" in word and not word.startswith("-") and "=" not in word:
            return word.rsplit("/", 1)[1]
    return words[-1] if words else ""


def thin_overcommitted(stderr: str) -> bool:
    """lvm's warning that the thin volumes of a pool add up to more than the pool."""
    return "exceeds the size of thin pool" in stderr or "exceed the size of thin pool" in stderr


def lvs_argv(vg: str) -> list[str]:
    return ["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", SEPARATOR,
            "-o", ",".join(LV_FIELDS), vg]


def lvcreate_linear_argv(vg: str, name: str, size_mb: int, tags: Sequence[str] = (),
                         wipe: bool = True) -> list[str]:
    """A plain LV; ``wipe`` clears old signatures (off for a volume dd overwrites whole)."""
    yn = "y" if wipe else "n"
    return (["lvcreate", "--yes", "-n", name, *_size_args(size_mb), "--wipesignatures", yn,
             "-Z", yn, *_tag_args("--addtag", tags), vg])


def lvcreate_pool_argv(vg: str, pool: str, size: str | int) -> list[str]:
    """A thin pool; ``-Zy`` so a new thin volume never reads blocks a deleted VM wrote."""
    return ["lvcreate", "--yes", "--type", "thin-pool", "-n", pool, *_size_args(size), "-Z", "y",
            "--addtag", "vaf.pool", vg]


def lvcreate_thin_argv(vg: str, pool: str, name: str, size_mb: int,
                       tags: Sequence[str] = ()) -> list[str]:
    return ["lvcreate", "--yes", "--thinpool", f"{vg}/{pool}", "-n", name, "-V", f"{size_mb}m",
            "-k", "n", *_tag_args("--addtag", tags)]


def lvcreate_thin_snapshot_argv(vg: str, pool: str, origin: str, name: str,
                                tags: Sequence[str] = ()) -> list[str]:
    """A thin snapshot of an external (read-only, non-thin) origin, active at once.

    Thin snapshots get the activation-skip flag by default and would be left inactive:
    ``-kn`` drops it, so no separate ``lvchange -ay -K`` (one lvm call less per clone).
    """
    return ["lvcreate", "--yes", "-s", "--thinpool", f"{vg}/{pool}", "-n", name, "-k", "n",
            *_tag_args("--addtag", tags), f"{vg}/{origin}"]


def lvcreate_classic_snapshot_argv(vg: str, origin: str, name: str, cow_mb: int,
                                   tags: Sequence[str] = ()) -> list[str]:
    """A classic COW snapshot, writable even though its origin (a cache) is read-only."""
    return ["lvcreate", "--yes", "-s", "-n", name, "-L", f"{cow_mb}m", "-p", "rw",
            *_tag_args("--addtag", tags), f"{vg}/{origin}"]


def lvremove_argv(vg: str, name: str) -> list[str]:
    return ["lvremove", "-f", f"{vg}/{name}"]


def lvrename_argv(vg: str, old: str, new: str) -> list[str]:
    return ["lvrename", vg, old, new]


def lvchange_argv(vg: str, name: str, *, readonly: bool = False, activate: bool | None = None,
                  skip: bool | None = None, add_tags: Sequence[str] = (),
                  del_tags: Sequence[str] = ()) -> list[str]:
    """``lvchange`` for permission, activation (``-K``: thin snapshots skip it), the
    activation-skip flag (``skip``) and tags."""
    argv = ["lvchange"]
    if readonly:
        argv += ["-p", "r"]
    if skip is not None:
        argv += ["--setactivationskip", "y" if skip else "n"]
    if activate is True:
        argv += ["-a", "y", "-K"]
    elif activate is False:
        argv += ["-a", "n"]
    argv += _tag_args("--deltag", del_tags) + _tag_args("--addtag", add_tags)
    if argv == ["lvchange"]:
        raise ValueError("lvchange with nothing to change")
    return argv + [f"{vg}/{name}"]


def lvextend_argv(vg: str, name: str, size_mb: int) -> list[str]:
    return ["lvextend", "-L", f"{size_mb}m", f"{vg}/{name}"]
