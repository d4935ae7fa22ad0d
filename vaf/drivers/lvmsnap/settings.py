"""Every key of ``lvmsnap.conf`` in one table: conf key, type, default, what it does.

Most keys configure the host half's policy; the front-end reads the conf (the one source) and
hands them over in every request as :class:`Settings`. Keys whose ``field`` is None are read by
the front-end only. Nothing here is a path or a command: where the host half acts (datastore
location, volume group names, its lock directory) and as whom comes from the host's root-owned
``/usr/lib/vaf/privileged.conf`` (:data:`HOST_CONF`), never from a request.
``docs/lvmsnap.md`` documents the same table for admins (``tests/test_lvmsnap_units.py``
checks that every key is there).

stdlib only and no dataclasses: the host half imports this on every clone.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

from vaf.errors import ProtocolError
from vaf.host.runner import DEFAULT_SSH


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
    Setting("THIN_OVERCOMMIT", "overcommit", "float", 1.0,
            "thin pool: the sizes of its volumes may add up to this many times the pool", (0.1,)),
    Setting("ZERO_THICK", "zero_thick", "choice", "create",
            "thick volumes: write zeros over them at create, or never (admin's risk)",
            ("create", "no")),
    Setting("DD_BLOCK_SIZE", "dd_bs", "str", "4M", "block size of copies (fills, ln, mvds)",
            ()),
    Setting("PROGRESS_SECONDS", "progress_seconds", "float", 10.0,
            "seconds between two progress lines of a copy", (0,)),
    Setting("PRIVILEGED", None, "argv", ("sudo", "-n", "/usr/lib/vaf/vaf-privileged"),
            "how the front-end's ssh call runs the host half (root, fixed verbs)", ()),
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


HOST_CONF = (
    # key of privileged.conf, default: what the host half takes from its own conf
    ("DATASTORE_LOCATION", "/var/lib/one/datastores"),
    ("DATASTORE_OWNER", "oneadmin"),
    ("VG_PREFIX", "vg-one-"),
    ("LVMSNAP_STATE_DIR", "/run/vaf/lvmsnap"),
    ("LOCK_TIMEOUT", "1800"),
)


class Settings(namedtuple("Settings", [s.field for s in _HOST],
                          defaults=[s.default for s in _HOST])):
    """The host half's policy from the conf (never a path: see the module doc)."""

    __slots__ = ()

    @classmethod
    def from_config(cls, conf) -> Settings:
        return cls(*(s.read(conf) for s in _HOST))

    @classmethod
    def from_json(cls, raw: object) -> Settings:
        if not isinstance(raw, dict):
            raise ProtocolError("host command request lacks its settings")
        known = {k: v for k, v in raw.items() if k in cls._fields}
        for setting in _HOST:
            value = known.get(setting.field)
            if value is None:
                continue
            if setting.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = known[setting.field] = float(value)
            if not isinstance(value, type(setting.default)) or isinstance(value, bool):
                raise ProtocolError(f"settings.{setting.field} must be {setting.kind}")
            if setting.kind == "choice" and value not in setting.limits:
                raise ProtocolError(f"settings.{setting.field} must be one of "
                                    f"{', '.join(setting.limits)}")
        return cls(**known)

    def to_json(self) -> dict[str, object]:
        return dict(self._asdict())


def front_end(conf, key: str):
    """A front-end-only key's value (default from the table)."""
    return BY_KEY[key].read(conf)
