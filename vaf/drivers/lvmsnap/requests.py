"""The written contract between lvmsnap's two halves: one typed request per host command.

The front-end builds a request from oned's argv, the conf and the VM, and sends
``request.to_json()`` on the stdin of ``sudo -n /usr/lib/vaf/vaf-privileged lvmsnap-<command>``
(:func:`vaf.one.remote.call_privileged`); the host half rebuilds it with
``<Request>.from_json(params)``, which refuses a missing field or a field of the wrong type
with one :class:`ProtocolError` line. Every request carries the
:class:`~vaf.drivers.lvmsnap.settings.Settings`, the VM id (None for ``monitor`` and
``probe``) and the system datastore id (the host derives the volume group's name from it with
its own conf). :data:`VERSION` changes whenever a request's fields do: the host half refuses a
request of another version (the front-end and the host were installed from different vaf
releases) with the fix in one line.

Requests are namedtuples, not dataclasses: the host half builds one on every clone, and
importing dataclasses costs a measurable share of a clone on a slow host.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

from vaf.drivers.lvmsnap.settings import Settings
from vaf.errors import ProtocolError

OPTIONAL = "optional"
#: the request format both halves must share (bump it with any change to a request)
VERSION = 2


def _check(command: str, name: str, value: object, kind: type, optional: bool) -> object:
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ProtocolError(f"lvmsnap-{command} request: {name!r} missing or not "
                            f"{kind.__name__}")
    return value


def _id(command: str, name: str, value: object, optional: bool) -> int | None:
    checked = _check(command, name, value, int, optional)
    if checked is not None and not 0 <= checked < 2**31:
        raise ProtocolError(f"lvmsnap-{command} request: {name!r} out of range")
    return checked


def request_type(command: str, *fields: tuple, vmid: bool = True,
                 sys_ds: bool = True) -> type:
    """A request class for ``command``: ``fields`` are ``(name, type[, OPTIONAL])``."""
    names = ["settings", "vmid", "sys_ds"] + [f[0] for f in fields]

    class Request(namedtuple(f"{command.title()}Request", names)):
        __slots__ = ()
        COMMAND = command
        FIELDS = fields

        @classmethod
        def from_json(cls, params: Mapping[str, object]) -> Request:
            values = [Settings.from_json(params.get("settings")),
                      _id(command, "vmid", params.get("vmid"), not vmid),
                      _id(command, "sys_ds", params.get("sys_ds"), not sys_ds)]
            for name, kind, *flags in fields:
                values.append(_check(command, name, params.get(name), kind, OPTIONAL in flags))
            return cls(*values)

        def to_json(self) -> dict[str, object]:
            data = self._asdict()
            data["settings"] = self.settings.to_json()
            data["version"] = VERSION
            return data

    Request.__name__ = Request.__qualname__ = f"{command.title()}Request"
    return Request


#: ``clone`` and ``ln``: image ``src`` on the host's mount, link ``dst``, DISK/SIZE
Clone = request_type("clone", ("src", str), ("dst", str), ("disk_id", int),
                     ("size_mb", int, OPTIONAL))
Ln = request_type("ln", ("src", str), ("dst", str), ("disk_id", int),
                  ("size_mb", int, OPTIONAL))
#: ``mkimage`` (and ``mkswap``, with fs="swap"); fs None or "raw": unformatted
Mkimage = request_type("mkimage", ("dst", str), ("disk_id", int), ("size_mb", int),
                       ("fs", str, OPTIONAL))
Delete = request_type("delete", ("path", str), ("is_disk", bool))
Mv = request_type("mv", ("src", str), ("dst", str), ("is_disk", bool))
#: ``mvds`` and ``cpds``: disk link ``src`` on the host, image file ``dst``
Mvds = request_type("mvds", ("src", str), ("dst", str), ("disk_id", int))
Cpds = request_type("cpds", ("src", str), ("dst", str), ("disk_id", int))
Resize = request_type("resize", ("path", str), ("size_mb", int))
#: ``context``: the ISO itself comes on stdin
Context = request_type("context", ("dst", str))
#: ``premigrate``: ``disks`` is ``[[disk id, size MB or 0], ...]``
Premigrate = request_type("premigrate", ("sysdir", str), ("disks", list))
Postmigrate = request_type("postmigrate", ("sysdir", str))
Failmigrate = request_type("failmigrate", ("sysdir", str))
Monitor = request_type("monitor", ("warn_percent", float), vmid=False)
#: the host probe: every vg-one-<id> of the host, no VM, no datastore
Probe = request_type("probe", vmid=False, sys_ds=False)

REQUESTS = {r.COMMAND: r for r in (Clone, Ln, Mkimage, Delete, Mv, Mvds, Cpds, Resize,
                                    Context, Premigrate, Postmigrate, Failmigrate, Monitor,
                                    Probe)}


def disk_pairs(disks: list) -> list[tuple[int, int]]:
    """Validate premigrate's ``disks``."""
    pairs = []
    for item in disks:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise ProtocolError("lvmsnap-premigrate request: 'disks' must be [[id, MB], ...]")
        pairs.append((item[0], item[1]))
    return pairs
