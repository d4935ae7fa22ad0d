"""Block copies with ``dd`` as root: one argv builder, progress lines, the copied byte count.

Every copy vaf makes between an image file and a block device goes through :func:`copy`:
big blocks, direct writes, an fsync before success, and dd's ``status=progress`` lines turned
into a progress message at most every few seconds (the caller decides where messages go, so
this module stays free of any logging format). stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from vaf.errors import DriverError
from vaf.host.files import fill_atomically
from vaf.host.runner import CommandError, Runner

MB = 1024 * 1024
_DD_BYTES_RE = re.compile(r"^(\d+) bytes")

Report = Callable[[str], None]


class Progress:
    """Turns dd's ``status=progress`` lines into ``report`` calls at most every ``every`` s."""

    def __init__(self, report: Report, what: str, total: int, every: float):
        self.report = report
        self.what = what
        self.total = max(total, 1)
        self.every = every
        self.started = time.monotonic()
        self.last = self.started

    def line(self, text: str) -> None:
        match = _DD_BYTES_RE.match(text)
        if not match or "copied" not in text:
            return
        moment = time.monotonic()
        if moment - self.last < self.every:
            return
        self.last = moment
        done = int(match.group(1))
        self.report(f"{self.what}: {done // MB} of {self.total // MB} MB "
                    f"({100 * done // self.total}%) after {moment - self.started:.0f} s")


def dd_copied_bytes(stderr: str) -> int | None:
    """The byte count of dd's final summary (``N bytes (...) copied``)."""
    for line in reversed(stderr.replace("\r", "\n").splitlines()):
        match = _DD_BYTES_RE.match(line.strip())
        if match:
            return int(match.group(1))
    return None


def dd_argv(source: str, target: str, bs: str, *, count_bytes: int | None = None,
            sparse: bool = False, seek_bytes: int | None = None,
            direct: bool = True) -> list[str]:
    """One ``dd`` for every copy: big blocks, direct writes, fsync before success."""
    argv = ["dd", f"if={source}", f"of={target}", f"bs={bs}", "status=progress"]
    oflags = ["direct"] if direct else []
    conv = ["fsync"] + (["sparse"] if sparse else []) + (["notrunc"] if not direct else [])
    if count_bytes is not None:
        argv += [f"count={count_bytes}", "iflag=count_bytes,fullblock"]
    if seek_bytes is not None:
        argv.append(f"seek={seek_bytes}")
        oflags.append("seek_bytes")
    if oflags:
        argv.append("oflag=" + ",".join(oflags))
    return argv + ["conv=" + ",".join(conv)]


def dd_failure(err: CommandError) -> str:
    """dd's own error line (not a progress line), or how it ended."""
    for line in reversed(err.stderr.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line and not _DD_BYTES_RE.match(line) and "records" not in line:
            return line
    return "dd was killed" if err.returncode == 255 else f"dd exit code {err.returncode}"


def copy(runner: Runner, source: str, target: str, *, total: int, what: str, bs: str,
         report: Report, every: float, **dd_options) -> int:
    """Copy with dd as root, reporting progress; return the bytes dd says it copied (-1: it
    printed no summary)."""
    progress = Progress(report, what, total, every)
    try:
        result = runner.run(dd_argv(source, target, bs, **dd_options), sudo=True,
                            on_stderr_line=progress.line)
    except CommandError as err:
        raise DriverError(f"{what} failed: {dd_failure(err)}") from None
    copied = dd_copied_bytes(result.stderr)
    return -1 if copied is None else copied


def device_size(runner: Runner, device: str) -> int:
    return int(runner.output(["blockdev", "--getsize64", device], sudo=True))


def zero_tail(runner: Runner, device: str, start: int) -> None:
    """Zero a device from ``start`` to its end: reused extents may hold another VM's data."""
    size = device_size(runner, device)
    if size > start:
        runner.run(dd_argv("/dev/zero", device, "1M", count_bytes=size - start,
                           seek_bytes=start), sudo=True)


def write_back(runner: Runner, device: str, destination: str, *, count: int, what: str,
               bs: str, report: Report, every: float) -> None:
    """Copy the first ``count`` bytes of ``device`` to the file ``destination`` atomically.

    dd runs as root but writes into a file we create first, so the file stays ours; it
    appears under its name only once complete.
    """
    def fill(temporary: str) -> None:
        copied = copy(runner, device, temporary, total=count, what=what, bs=bs, report=report,
                      every=every, count_bytes=count, direct=False)
        if copied != count:
            raise DriverError(f"copy to {destination} incomplete: {copied} of {count} bytes")
        os.truncate(temporary, count)

    fill_atomically(destination, fill)
