"""Every key of ``lvmsnap.conf`` in one table: conf key, type, default, what it does.

Most keys configure the host half; the front-end reads the conf (the one source) and hands
them over in every request as :class:`Settings`. Keys whose ``field`` is None are read by the
front-end only. ``docs/lvmsnap.md`` documents the same table for admins
(``tests/test_lvmsnap_units.py`` checks that every key is there).

stdlib only and no dataclasses: the host half imports this on every clone.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

from vaf.errors import ProtocolError
from vaf.host.runner import DEFAULT_SSH, DEFAULT_SUDO


class Setting(namedtuple("Setting", "key field kind default doc limits")):
    """One conf key; ``kind`` is a :class:`vaf.config.DriverConfig` reader name, ``limits``
    its extra arguments (choices, or minimum and maximum)."""

    __slots__ = ()

    def read(self, conf):
        reader = getattr(conf, self.kind)
        if self.kind == "choice":
            return reader(self.key, self.default, self.limits)
        return reader(self.key, self.default, *self.limits)


SETTINGS: tuple[Setting, ...] = (
    Setting("SNAPSHOT_MODE", "mode", "choice", "thin",
            "how VM disks snapshot a cache: thin (in the pool) or classic (COW)",
            ("thin", "classic")),
    Setting("VOLATILE_VOLUMES", "volatile", "choice", "thin",
            "where mkimage, mkswap and ln volumes go: thin (pool) or thick", ("thin", "thick")),
    Setting("THIN_POOL", "pool", "str", "vaf-pool", "name of the thin pool in each VG", ()),
    Setting("THIN_POOL_SIZE", "pool_size", "str", "50%VG",
            "size of the thin pool when lvmsnap creates it (MB, or an extent spec)", ()),
    Setting("CLASSIC_COW_PERCENT", "cow_percent", "int", 100,
            "COW size of a classic snapshot, in percent of its image", (1, 1000)),
    Setting("LOCK_DIR", "lock_dir", "str", "/var/lock/vaf-lvmsnap",
            "directory of the host-local lock files", ()),
    Setting("DD_BLOCK_SIZE", "dd_bs", "str", "4M", "dd block size of cache fills", ()),
    Setting("PROGRESS_SECONDS", "progress_seconds", "float", 10.0,
            "seconds between two progress lines of a copy", (0,)),
    Setting("SUDO", "sudo", "argv", DEFAULT_SUDO, "privilege prefix for LVM, dd, mkfs", ()),
    Setting("TEST_KILL_AT", "test_kill_at", "str", "",
            "tests only: the host half kills itself at this checkpoint", ()),
    Setting("REMOTE_DIR", None, "str", "/var/tmp/one", "the remotes tree on hypervisors", ()),
    Setting("HOST_PYTHON", None, "argv", ("python3", "-S"),
            "interpreter of the host half (-S: no site packages, faster start)", ()),
    Setting("SSH", None, "argv", DEFAULT_SSH, "ssh command line to the hypervisors", ()),
    Setting("ONEVM", None, "argv", ("onevm",), "onevm command (reads DISK/SIZE, DISK/FS)", ()),
    Setting("MKIMAGE_DEFAULT_FS", None, "str", "xfs",
            "filesystem of a volatile disk without DISK/FS (raw: unformatted)", ()),
    Setting("MKISOFS", None, "str", "", "genisoimage or xorriso (empty: the first found)", ()),
    Setting("MONITOR_WARN_PERCENT", None, "float", 80.0,
            "monitor warns when a thin pool or classic snapshot is this full", (0,)),
)

BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}
_HOST = [s for s in SETTINGS if s.field]


class Settings(namedtuple("Settings", ["vg"] + [s.field for s in _HOST],
                          defaults=[s.default for s in _HOST])):
    """What the host half needs from the conf, plus the volume group of the datastore."""

    __slots__ = ()

    @classmethod
    def from_config(cls, conf, vg: str) -> Settings:
        return cls(vg, *(s.read(conf) for s in _HOST))

    @classmethod
    def from_json(cls, raw: object) -> Settings:
        if not isinstance(raw, dict) or not isinstance(raw.get("vg"), str):
            raise ProtocolError("host command request lacks settings.vg")
        known = {k: v for k, v in raw.items() if k in cls._fields}
        for setting in _HOST:
            value = known.get(setting.field)
            if value is None:
                continue
            if setting.kind == "argv":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ProtocolError(f"settings.{setting.field} must be a list of strings")
                known[setting.field] = tuple(value)
            elif not isinstance(value, type(setting.default)) or isinstance(value, bool):
                if not (setting.kind == "float" and isinstance(value, int)):
                    raise ProtocolError(f"settings.{setting.field} must be {setting.kind}")
        return cls(**known)

    def to_json(self) -> dict[str, object]:
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name, value in self._asdict().items()}


def front_end(conf, key: str):
    """A front-end-only key's value (default from the table)."""
    return BY_KEY[key].read(conf)
