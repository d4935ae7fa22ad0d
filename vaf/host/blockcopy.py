"""Block copies between image files and volumes, in-process (stdlib only: runs on hypervisors).

The privileged host half copies with its own file descriptors instead of running ``dd``:
the image is opened by the caller (as the datastore's owner, without following a symlink:
:mod:`vaf.host.confine`), so root never opens a path a request names; and any image size
works: the last partial block is padded with zeros to the device's direct-I/O alignment
(``dd oflag=direct`` cannot write a tail that is not a multiple of 512 bytes). Volumes are
written with ``O_DIRECT`` (no page-cache pollution on the host) in page-aligned buffers and
fsynced before success. Progress goes to a ``report`` callback at most every ``every``
seconds; a ``cancelled`` callback is asked between blocks, so a cancelled action stops within
one block.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

MB = 1024 * 1024
ALIGN = 4096  # covers every logical block size (512 or 4096) of a direct write

Report = Callable[[str], None]


class Cancelled(Exception):
    """The caller's ``cancelled()`` said stop."""


def parse_block_size(text: str) -> int:
    """``4M``, ``64K``, ``1048576`` → bytes (a multiple of the alignment, at most 64 MiB)."""
    units = {"K": 1024, "M": MB, "G": 1024 * MB}
    text = text.strip().upper()
    factor = units.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in units else text
    if not digits.isdigit():
        raise ValueError(f"block size {text!r} is not a number with an optional K, M or G")
    size = int(digits) * factor
    if size < ALIGN or size % ALIGN or size > 64 * MB:
        raise ValueError(f"block size {text!r} must be a multiple of 4K up to 64M")
    return size


class Progress:
    """``report`` calls at most every ``every`` seconds: done, total, percent, elapsed."""

    def __init__(self, report: Report, what: str, total: int, every: float):
        self.report, self.what, self.every = report, what, every
        self.total = max(total, 1)
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        moment = time.monotonic()
        if moment - self.last < self.every:
            return
        self.last = moment
        self.report(f"{self.what}: {done // MB} of {self.total // MB} MB "
                    f"({100 * done // self.total}%) after {moment - self.started:.0f} s")


def _read_full(fd: int, view: memoryview) -> int:
    """Fill ``view`` from ``fd`` unless the file ends first; the bytes read."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


def _never() -> bool:
    return False


def copy_to_device(source: int, size: int, device: str, *, block: int, what: str,
                   report: Report, every: float, sparse: bool = False,
                   cancelled: Callable[[], bool] = _never) -> int:
    """Copy ``size`` bytes of the open file ``source`` to the start of ``device``, then zero
    the device up to its end (reused extents may hold a deleted volume's data).

    ``sparse``: blocks of zeros are skipped (a thin volume reads zeros where nothing was
    written). Returns the bytes of the image copied; raises :class:`Cancelled`, or OSError
    (its strerror says what went wrong: a short device, an I/O error).
    """
    progress = Progress(report, what, size, every)
    buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    view, zeros = memoryview(buffer), bytes(block)
    out = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        end = os.lseek(out, 0, os.SEEK_END)
        os.lseek(out, 0, os.SEEK_SET)
        if end < -(-size // ALIGN) * ALIGN:
            raise OSError(0, f"{device} ({end} bytes) is smaller than the image ({size} bytes)")
        done = 0
        while done < size:
            if cancelled():
                raise Cancelled()
            want = min(block, size - done)
            got = _read_full(source, view[:want])
            if got < want:
                raise OSError(0, f"the image ended after {done + got} of {size} bytes "
                                 "(it shrank during the copy)")
            padded = -(-got // ALIGN) * ALIGN
            view[got:padded] = zeros[:padded - got]
            if sparse and view[:padded] == zeros[:padded]:
                os.lseek(out, padded, os.SEEK_CUR)
            else:
                _write_all(out, view[:padded])
            done += got
            progress.update(done)
        _zero_rest(out, os.lseek(out, 0, os.SEEK_CUR), end, view, zeros, sparse, cancelled)
        os.fsync(out)
        return done
    finally:
        os.close(out)
        view.release()
        buffer.close()


def _zero_rest(out: int, position: int, end: int, view: memoryview, zeros: bytes,
               sparse: bool, cancelled: Callable[[], bool]) -> None:
    if sparse:
        return  # a thin volume reads zeros where nothing was written
    view[:] = zeros
    while position < end:
        if cancelled():
            raise Cancelled()
        n = min(len(view), end - position)
        _write_all(out, view[:n])
        position += n


def zero_device(device: str, *, block: int, cancelled: Callable[[], bool] = _never) -> None:
    """Write zeros over a whole device (a thick volume must not show a deleted VM's data)."""
    buffer = mmap.mmap(-1, block)
    view = memoryview(buffer)
    out = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        end = os.lseek(out, 0, os.SEEK_END)
        os.lseek(out, 0, os.SEEK_SET)
        _zero_rest(out, 0, end, view, bytes(block), False, cancelled)
        os.fsync(out)
    finally:
        os.close(out)
        view.release()
        buffer.close()


def copy_from_device(device: str, target: int, count: int, *, block: int, what: str,
                     report: Report, every: float,
                     cancelled: Callable[[], bool] = _never) -> None:
    """Copy the first ``count`` bytes of ``device`` into the open file ``target``."""
    progress = Progress(report, what, count, every)
    buffer = bytearray(block)
    view = memoryview(buffer)
    source = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < count:
            if cancelled():
                raise Cancelled()
            got = _read_full(source, view[:min(block, count - done)])
            if got == 0:
                raise OSError(0, f"{device} ended after {done} of {count} bytes")
            _write_all(target, view[:got])
            done += got
            progress.update(done)
        os.ftruncate(target, count)
        os.fsync(target)
    finally:
        os.close(source)
