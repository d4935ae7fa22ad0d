"""Driver arguments as oned passes them (see opennebula-protocol.md, section 4).

oned splits transfer lines on whitespace with no quoting, so every argument is a plain word:
``host:/path`` pairs, numeric ids, sizes in MB. These helpers validate each form and raise a
:class:`ProtocolError` with a message an admin understands.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.errors import ProtocolError

# RFC 1123 host names plus IPv4 literals; oned writes host names from `onehost create`.
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# \Z, not $: "$" also matches before a trailing newline ("7\n" is not an id)
_DISK_RE = re.compile(r"^disk\.([0-9]+)\Z")
_ID_RE = re.compile(r"^[0-9]{1,10}\Z")
_SIZE_RE = re.compile(r"^[0-9]{1,13}(\.0+)?\Z")


@dataclass(frozen=True)
class HostPath:
    """A ``host:/path`` argument; ``host`` is ``None`` for a bare path (front-end local)."""

    host: str | None
    path: str

    def __str__(self) -> str:
        return f"{self.host}:{self.path}" if self.host else self.path

    @property
    def dirname(self) -> str:
        return posixpath.dirname(self.path)

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path)


def parse_host(text: str, what: str = "host") -> str:
    if not _HOST_RE.match(text):
        raise ProtocolError(f"invalid {what} name {text!r}")
    return text


def parse_host_path(text: str, what: str = "path") -> HostPath:
    """Parse ``host:/abs/path`` (or an absolute path); normalise slashes like ``arg_path``."""
    host, sep, path = text.partition(":")
    if not sep:
        host, path = "", text
    if not path.startswith("/"):
        raise ProtocolError(f"{what} {text!r} is not of the form host:/absolute/path")
    if "\0" in path or "\n" in path:
        raise ProtocolError(f"{what} {text!r} contains a control character")
    normalised = posixpath.normpath(path)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if any(part == ".." for part in path.split("/")):
        raise ProtocolError(f"{what} {text!r} must not contain '..'")
    return HostPath(parse_host(host, f"host in {what}") if host else None, normalised)


def parse_id(text: str, what: str) -> int:
    """A non-negative integer id (VM, datastore, snapshot, image)."""
    if not _ID_RE.match(text):
        raise ProtocolError(f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


def parse_size_mb(text: str, what: str = "size") -> int:
    """A positive size in MB as oned writes it (integer; ``"1024.0"`` tolerated)."""
    if not _SIZE_RE.match(text):  # no exponents, signs, blanks or fractions
        raise ProtocolError(f"{what} must be a positive whole number of MB, got {text!r}")
    value = int(text.split(".")[0])
    if value <= 0 or value > 2**40:
        raise ProtocolError(f"{what} must be a positive whole number of MB, got {text!r}")
    return value


def disk_id_from_path(path: str) -> int:
    """The disk id of a ``.../disk.<i>`` path."""
    match = _DISK_RE.match(posixpath.basename(path))
    if not match:
        raise ProtocolError(f"{path!r} is not a VM disk path (.../disk.<id>)")
    return int(match.group(1))


def is_disk_path(path: str) -> bool:
    return bool(_DISK_RE.match(posixpath.basename(path)))


def system_ds_from_path(path: str) -> int:
    """The system datastore id of ``…/datastores/<sys_ds>/<vmid>[/disk.<i>]``.

    Disk actions get the *image* datastore id in argv; like fs_lvm we read the system
    datastore from the destination path instead.
    """
    vm_dir = posixpath.dirname(path) if is_disk_path(path) else path
    parts = [p for p in vm_dir.split("/") if p]
    if len(parts) < 2 or not _ID_RE.match(parts[-1]) or not _ID_RE.match(parts[-2]):
        raise ProtocolError(f"cannot find the system datastore id in {path!r} "
                            "(expected .../<system ds id>/<vm id>/disk.<i>)")
    return int(parts[-2])


def expect_args(argv: Sequence[str], names: Sequence[str], action: str,
                variadic: str | None = None) -> dict[str, str | list[str]]:
    """Check arity and name the arguments; ``variadic`` names a list taken before the rest.

    With ``variadic``, the arguments are parsed from the end (as the stock ``context`` does):
    ``names[0]`` is the variadic slot position marker and the remaining names are fixed.
    """
    if variadic is None:
        if len(argv) != len(names):
            raise ProtocolError(f"{action} expects {_count(len(names))} "
                                f"({' '.join(names)}), got {len(argv)}")
        # lengths checked above; no strict=: it is 3.10+, and this runs on 3.9 hosts
        return dict(zip(names, argv))  # noqa: B905
    fixed = list(names)
    if len(argv) < len(fixed):
        raise ProtocolError(f"{action} expects at least {_count(len(fixed))} "
                            f"({variadic}... {' '.join(fixed)}), got {len(argv)}")
    split = len(argv) - len(fixed)
    named: dict[str, str | list[str]] = dict(zip(fixed, argv[split:]))  # noqa: B905
    named[variadic] = list(argv[:split])
    return named


def _count(n: int) -> str:
    return f"{n} argument" + ("" if n == 1 else "s")
