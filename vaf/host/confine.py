"""Paths a privileged action may touch, and touching them with the datastores' owner's rights.

vaf's privileged host half runs as root but takes paths from a request ``oneadmin`` wrote.
Two rules keep root from becoming a way around file permissions (stdlib only):

1. **Lexical confinement**: a path must have exactly the shape its role allows under the
   datastore location of the root-owned conf: an image file
   ``<location>/<image ds>/<name>`` (never inside the system datastore), a VM disk link
   ``<location>/<system ds>/<vmid>/disk.<n>``, a VM directory ``<location>/<system ds>/<vmid>``;
   no ``..``, no doubled slashes, ids that match the request's.
2. **The owner's rights**: every file operation on those paths (reading an image, writing a
   link, ``.host``, the context ISO, a saved image, removing a VM directory) runs with the
   effective uid, gid and groups of the datastores' owner (``oneadmin``), and final path
   components are opened with ``O_NOFOLLOW``. A symlink or hard link ``oneadmin`` planted
   thus leads nowhere ``oneadmin`` could not already read or write, and what is created is
   ``oneadmin``'s, as with OpenNebula's own drivers.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager

from vaf.errors import ProtocolError

_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,254}\Z")
_ID_RE = re.compile(r"^[0-9]{1,10}\Z")
_DISK_RE = re.compile(r"^disk\.([0-9]{1,6})\Z")


class Owner(namedtuple("Owner", "name uid gid groups")):
    __slots__ = ()

    @classmethod
    def of(cls, name: str) -> Owner:
        import pwd  # only the privileged half needs it

        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ProtocolError(f"datastore owner {name!r} is not an account here") from None
        if entry.pw_uid == 0:
            raise ProtocolError("the datastores' owner must not be root")
        return cls(name, entry.pw_uid, entry.pw_gid,
                   tuple(os.getgrouplist(name, entry.pw_gid)))


@contextmanager
def as_owner(owner: Owner | None) -> Iterator[None]:
    """Run the block with ``owner``'s effective ids (None, or not root: unchanged)."""
    if owner is None or os.geteuid() != 0:
        yield
        return
    groups = os.getgroups()
    os.setgroups(list(owner.groups))
    os.setegid(owner.gid)
    os.seteuid(owner.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


class Datastores(namedtuple("Datastores", "location")):
    """Path shapes under one datastore location (``/var/lib/one/datastores``)."""

    __slots__ = ()

    def _parts(self, path: str, what: str) -> list[str]:
        if not isinstance(path, str) or "\0" in path:
            raise ProtocolError(f"{what} must be a path")
        prefix = self.location.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ProtocolError(f"{what} {path!r} is not under {self.location}")
        parts = path[len(prefix):].split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ProtocolError(f"{what} {path!r} is not a plain path (empty, '.' or '..' "
                                "component)")
        return parts

    def image(self, path: str, system_ds: int) -> str:
        """An image file directly inside an image datastore (never the system one)."""
        parts = self._parts(path, "image source")
        if (len(parts) != 2 or not _ID_RE.match(parts[0]) or int(parts[0]) == system_ds
                or not _NAME_RE.match(parts[1])):
            raise ProtocolError(f"image source {path!r} is not a file of an image datastore "
                                f"({self.location}/<id>/<name>)")
        return path

    def saved_image(self, path: str, system_ds: int) -> str:
        """Where mvds/cpds write: the same shape as an image."""
        return self.image(path, system_ds)

    def vm_dir(self, path: str, system_ds: int, vmid: int) -> str:
        parts = self._parts(path, "VM directory")
        if len(parts) != 2 or parts != [str(system_ds), str(vmid)]:
            raise ProtocolError(f"VM directory {path!r} is not "
                                f"{self.location}/{system_ds}/{vmid}")
        return path

    def disk(self, path: str, system_ds: int, vmid: int) -> int:
        """A ``disk.<n>`` link of this VM in this system datastore; its disk id."""
        parts = self._parts(path, "disk path")
        match = _DISK_RE.match(parts[-1]) if len(parts) == 3 else None
        if match is None or parts[:2] != [str(system_ds), str(vmid)]:
            raise ProtocolError(f"disk path {path!r} is not "
                                f"{self.location}/{system_ds}/{vmid}/disk.<n>")
        return int(match.group(1))


NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_image(path: str) -> int:
    """Open an image for reading (call under :func:`as_owner`); refuses a symlink or a
    non-regular file."""
    fd = os.open(path, NOFOLLOW_READ | os.O_NONBLOCK)
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise
