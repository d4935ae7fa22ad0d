"""DN -> local user name: the grid-mapfile backend behind one small interface.

A grid-mapfile line is ``"<DN>" user[,user...]``: the DN in double quotes (``\\"`` inside
stands for a quote, ``\\\\`` for a backslash; other escapes such as OpenSSL's ``\\/`` for a
slash inside a value are kept, as the service sees the DN that way), then the accounts; the
first is the one used. ``#`` starts a comment.
Pool accounts (a name starting with ``.``) are not supported and such lines map nobody.
The name is then validated as a POSIX user name, whatever backend produced it: it reaches
``useradd``, a path and the certificate's principal.

An LDAP backend would implement :class:`Mapper` the same way (not built: see docs/login.md).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Protocol

# POSIX portable user names, lower case as useradd's default NAME_REGEX wants; 32 chars max.
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)
_LINE_RE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)"\s+(\S+)\s*$')


class MappingError(Exception):
    """The mapping source is unreadable or the mapped name is not a valid user name."""


class Mapper(Protocol):
    def lookup(self, dn: str) -> str | None:
        """The local user name for ``dn``, or None when the DN is not mapped."""


def check_user_name(name: str) -> str:
    if not _USER_RE.fullmatch(name):
        raise MappingError(f"the mapped account {name!r} is not a valid user name")
    return name


def parse_grid_mapfile(text: str) -> dict[str, str]:
    """DN -> first account; malformed lines are skipped (one bad line must not lock all out)."""
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            continue
        dn = re.sub(r'\\(["\\])', r"\1", match.group(1))
        account = match.group(2).split(",")[0]
        if account and not account.startswith(".") and dn not in mapping:
            mapping[dn] = account
    return mapping


class GridMapfile:
    """A grid-mapfile, re-read when it changes (time, size or inode: a replaced file)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._mapping: dict[str, str] = {}

    def _current(self) -> dict[str, str]:
        try:
            info = os.stat(self.path)
        except OSError as err:
            raise MappingError(f"cannot read the grid-mapfile {self.path}: {err.strerror}") \
                from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        with self._lock:
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8", errors="replace") as handle:
                    self._mapping = parse_grid_mapfile(handle.read())
                self._stamp = stamp
            return self._mapping

    def lookup(self, dn: str) -> str | None:
        account = self._current().get(dn)
        return check_user_name(account) if account is not None else None
