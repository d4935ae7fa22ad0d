"""Host-local file locks (``flock``) for LVM metadata changes and per-image cache fills.

The locks are advisory ``flock`` locks on files in one directory of the hypervisor. The kernel
drops a lock when its holder dies, even by SIGKILL, so a killed driver never leaves a stale
lock behind; that is why no lock here has a timeout: waiting is always for a live process
(lvcreate under thin-pool contention can be slow, and a short timeout only turns that into a
spurious failure, as LXD learnt).

stdlib only: this module runs on hypervisors.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vaf.errors import DriverError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}$")


def lock_path(directory: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid lock name {name!r}")
    return os.path.join(directory, name + ".lock")


def _open(directory: str, name: str) -> int:
    path = lock_path(directory, name)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        # O_CLOEXEC: a child (dd under sudo) must not inherit the lock and outlive us with it
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise DriverError(f"cannot open lock file {path}: {err.strerror}") from None


@contextmanager
def exclusive(directory: str, name: str,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold lock ``name`` for the ``with`` block; call ``on_wait`` once if we must wait."""
    fd = _open(directory, name)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def if_free(directory: str, name: str) -> Iterator[bool]:
    """Try lock ``name`` without waiting; the ``with`` value says whether we hold it."""
    fd = _open(directory, name)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            held = False
        yield held
    finally:
        os.close(fd)
