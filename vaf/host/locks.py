"""Host-local file locks (``flock``) in a directory vaf owns (stdlib only: runs on hypervisors).

The locks are advisory ``flock`` locks on files in one directory. The kernel drops a lock when
its holder dies, even by SIGKILL, so a killed action never leaves a stale lock behind.

The directory is vaf's own: :func:`owned_directory` creates it (and missing parents) with
the caller's uid and mode 0700, walks every component without following a symlink, and
refuses a directory that another account created or that others may write: otherwise any
local account could pre-create it, stall every action by holding its locks, or make root
create files where a planted symlink points.

Waits end: :func:`exclusive` gives up after ``timeout`` seconds with one reason naming what it
waited for. The timeouts are long (a thin-pool lvcreate under contention is slow, and a
short timeout only turns slowness into spurious failures), but a lock held by a hung process
no longer blocks every later action forever.

A lock file can be dropped once nobody needs it (``remove=True``): it is unlinked by its
holder, and a waiter that then gets the lock of the unlinked file notices (the name no longer
points at its file) and starts over, so two holders never believe they hold the same lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vaf.errors import DriverError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\Z")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
POLL_SECONDS = 0.2


def _refuse(path: str, why: str) -> DriverError:
    return DriverError(f"refusing state directory {path}: {why}")


def _check_owned(fd: int, path: str, final: bool) -> None:
    info = os.fstat(fd)
    me = os.geteuid()
    if final:
        if info.st_uid != me:
            raise _refuse(path, f"owned by uid {info.st_uid}, not {me} (remove it, vaf "
                                "creates it)")
        if info.st_mode & 0o022:
            raise _refuse(path, f"writable by others (mode {stat.S_IMODE(info.st_mode):o})")
    elif info.st_uid not in (0, me) or (info.st_mode & 0o022
                                         and not info.st_mode & stat.S_ISVTX):
        raise _refuse(path, f"its parent directories must be root's or {me}'s and not "
                            "writable by others")


def owned_directory(path: str, mode: int = 0o700) -> int:
    """An fd of directory ``path``, created if missing; see the module doc for the checks."""
    if not path.startswith("/") or ".." in path.split("/"):
        raise _refuse(path, "not an absolute path without '..'")
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            final = index == len(parts) - 1
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, mode if final else 0o755, dir_fd=fd)
                except FileExistsError:
                    pass  # another action created it at the same moment
                child = _open_component(part, fd, path)
            except OSError as err:
                raise _refuse(path, _why(err)) from None
            os.close(fd)
            fd = child
            _check_owned(fd, path, final)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_component(part: str, parent: int, path: str) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=parent)
    except OSError as err:
        raise _refuse(path, _why(err)) from None


def _why(err: OSError) -> str:
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a component is a symlink or not a directory"
    return err.strerror or str(err)


def lock_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid lock name {name!r}")
    return name + ".lock"


def _open_lock(directory: int, name: str) -> int:
    # O_NOFOLLOW: a planted symlink never makes us create or lock a file elsewhere;
    # O_CLOEXEC: a child (mkfs, lvcreate) never inherits the lock and outlives us with it
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(lock_name(name), flags, 0o600, dir_fd=directory)
    except OSError as err:
        raise DriverError(f"cannot open lock file {lock_name(name)}: {_why(err)}") from None


def _still_linked(directory: int, name: str, fd: int) -> bool:
    try:
        linked = os.stat(lock_name(name), dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return linked.st_ino == os.fstat(fd).st_ino


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise
        return False


@contextmanager
def exclusive(directory: int | str, name: str, *, timeout: float | None = None,
              what: str = "", on_wait: Callable[[], None] | None = None, remove: bool = False,
              clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Hold lock ``name`` for the ``with`` block.

    ``directory`` is an fd from :func:`owned_directory`, or its path (checked the same way).
    ``on_wait`` is called once if we must wait; after ``timeout`` seconds of waiting (None:
    no limit), one :class:`DriverError` names ``what``. ``remove``: unlink the lock file
    before releasing it.
    """
    if isinstance(directory, str):
        fd = owned_directory(directory)
        try:
            with exclusive(fd, name, timeout=timeout, what=what, on_wait=on_wait,
                           remove=remove, clock=clock):
                yield
        finally:
            os.close(fd)
        return
    deadline = None if timeout is None else clock() + timeout
    waited = False
    while True:
        fd = _open_lock(directory, name)
        try:
            while not _try_lock(fd):
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                if deadline is not None and clock() > deadline:
                    raise DriverError(f"gave up after {timeout:.0f} s waiting for {what or name} "
                                      "(another action on this host holds it)")
                time.sleep(POLL_SECONDS)
            if not _still_linked(directory, name, fd):
                continue  # its holder dropped the file: lock the current one
            try:
                yield
            finally:
                if remove:
                    _unlink(directory, name)
            return
        finally:
            os.close(fd)


def _unlink(directory: int, name: str) -> None:
    try:
        os.unlink(lock_name(name), dir_fd=directory)
    except FileNotFoundError:
        pass


@contextmanager
def if_free(directory: int | str, name: str, *, remove: bool = False) -> Iterator[bool]:
    """Try lock ``name`` without waiting; the ``with`` value says whether we hold it.

    ``directory`` is an fd from :func:`owned_directory`, or its path (checked the same way).
    ``remove``: when we hold it, unlink the lock file before releasing it (a lock file left
    by a killed holder is dropped this way).
    """
    if isinstance(directory, str):
        dir_fd = owned_directory(directory)
        try:
            with if_free(dir_fd, name, remove=remove) as held:
                yield held
        finally:
            os.close(dir_fd)
        return
    while True:
        fd = _open_lock(directory, name)
        try:
            held = _try_lock(fd)
            if held and not _still_linked(directory, name, fd):
                continue  # its holder dropped the file as we opened it: try the current one
            try:
                yield held
            finally:
                if held and remove:
                    _unlink(directory, name)
            return
        finally:
            os.close(fd)


def names(directory: int, prefix: str) -> list[str]:
    """The lock names in ``directory`` that start with ``prefix``."""
    suffix = lock_name("x")[1:]
    return sorted(entry[:-len(suffix)] for entry in os.listdir(directory)
                  if entry.startswith(prefix) and entry.endswith(suffix))
