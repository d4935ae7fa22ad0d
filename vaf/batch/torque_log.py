"""TORQUE's job events from its accounting log, with ``qstat -f -x`` as the truth.

pbs_server appends one record per job transition to ``server_priv/accounting/YYYYMMDD``
(a new file every day at midnight)::

    11/26/2026 06:22:00;Q;2.vm;queue=batch
    11/26/2026 06:22:00;S;2.vm;user=tuser ... exec_host=vm/0-1 Resource_List.nodes=1:ppn=2
    11/26/2026 06:22:40;E;2.vm;user=tuser ... end=1795674160 Exit_status=0 ...

:class:`AccountingFollower` reads new complete records as they appear: it follows the daily
switch (newer file names, in order, after finishing the current one), starts a file again
from the top when it was truncated or replaced (size below the offset, another inode, or a
different first line), and keeps its position (file name, identity, offset, first-line
digest) in a small JSON file written atomically, so a restarted daemon goes on where it
stopped. Waiting is a cheap ``os.stat`` of the current file and the directory every
``poll`` seconds (inotify is not in the standard library): near zero CPU while nothing
happens, a new record seen within ``poll``.

A ``Q`` record carries only the queue, and node up/down is never logged, so the log is the
trigger and ``qstat -f -x`` the truth: :class:`JobWatch` runs one ``jobs()`` after each
batch of events and at least every ``reconcile_every`` seconds when the log is quiet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vaf.batch.base import BatchFailed, Job
from vaf.batch.torque import exec_hosts

QUEUED, STARTED, ENDED, DELETED, ABORTED, RERUN = (
    "queued", "started", "ended", "deleted", "aborted", "rerun")
RECORD_TYPES = {"Q": QUEUED, "S": STARTED, "E": ENDED, "D": DELETED, "A": ABORTED, "R": RERUN}
_DAY_FILE_RE = re.compile(r"^[0-9]{8}$")
_STAMP_FORMAT = "%m/%d/%Y %H:%M:%S"
#: bytes of a file's start that identify it (a first record is longer than this)
_HEAD_BYTES = 64
#: the most a single read takes from a file (a day's file after a long stop can be large)
_READ_CHUNK = 4 * 1024 * 1024
#: records that change the demand or the load the elastic daemon decides on (a start only
#: moves a waiting job onto a node the daemon already counts)
WAKING = frozenset({QUEUED, ENDED, DELETED, ABORTED, RERUN})
#: after an unreadable log, look again this much later
_RETRY_AFTER = 5.0

log = logging.getLogger("vaf.batch.torque")


@dataclass(frozen=True)
class JobEvent:
    kind: str  # one of RECORD_TYPES' values
    job: str
    time: float  # epoch seconds of the record (the server's local time)
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Where the job runs (``exec_host=vm/0-1+w2/0``), for started/ended records."""
        return exec_hosts(self.attrs.get("exec_host", ""))


def parse_record(line: str) -> JobEvent | None:
    """One accounting record; None for a line that is not one (logged by the caller)."""
    parts = line.rstrip("\n").split(";", 3)
    if len(parts) < 3 or parts[1] not in RECORD_TYPES or not parts[2]:
        return None
    try:
        stamp = time.mktime(time.strptime(parts[0], _STAMP_FORMAT))
    except (ValueError, OverflowError):
        return None
    attrs = {}
    for word in (parts[3] if len(parts) > 3 else "").split():
        key, sep, value = word.partition("=")
        if sep:
            attrs[key] = value
    return JobEvent(RECORD_TYPES[parts[1]], parts[2], stamp, attrs)


@dataclass
class Position:
    """Where the follower is: ``offset`` bytes into day file ``name`` with this identity."""

    name: str
    dev: int
    inode: int
    offset: int
    head: str  # digest of the file's first min(offset, _HEAD_BYTES) bytes: what was read

    @classmethod
    def load(cls, path: str) -> Position | None:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            return cls(str(data["name"]), int(data["dev"]), int(data["inode"]),
                       int(data["offset"]), str(data["head"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable state: start as on a first run (qstat reconciles)

    def save(self, path: str) -> None:
        """Write atomically: a crash leaves the old position or the new one, never half."""
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.__dict__, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def _head_digest(handle, offset: int) -> str:
    """Digest of the part of a file's start that was read already (it never changes)."""
    handle.seek(0)
    return hashlib.sha256(handle.read(min(offset, _HEAD_BYTES))).hexdigest()[:16]


class AccountingFollower:
    """New records of ``directory``'s day files, resumable from ``state_path``.

    ``from_start``: on a first run (no saved position) read the newest file from its start;
    by default a first run starts at its end as of the follower's creation (the present
    comes from ``qstat``).
    """

    def __init__(self, directory: str, state_path: str, poll: float = 0.1,
                 from_start: bool = False, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.directory = directory
        self.state_path = state_path
        self.poll = poll
        self.sleep = sleep
        self.clock = clock
        self._notices: list[str] = []  # lines that were not records, files read again
        self._position = Position.load(state_path)
        self._from_start = from_start
        self._seen: tuple | None = None
        files = self.day_files()
        if self._position is None and files and not from_start:
            self._position = self._first_position(files[-1])  # the end as of start-up
        # with no day file yet, every file that appears is new from its first byte
        self._all_new = not files
        self._from_start = True

    @property
    def position(self) -> Position | None:
        return self._position

    def take_notices(self) -> list[str]:
        """What the daemon should log: skipped lines, files read again from their start."""
        notices, self._notices = self._notices, []
        return notices

    def day_files(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if _DAY_FILE_RE.match(n))
        except FileNotFoundError:
            return []

    def read(self) -> list[JobEvent]:
        """Every complete record written since the last call (does not save the position)."""
        files = self.day_files()
        if not files:
            return []
        if self._position is None:
            self._position = self._first_position(files[0] if self._all_new else files[-1])
        events = self._read_current()
        while self._position.name != files[-1]:
            later = [n for n in files if n > self._position.name]
            if not later:
                break
            self._position = Position(later[0], 0, 0, 0, "")
            events += self._read_current()
        return events

    def checkpoint(self) -> None:
        """Persist the position (after the caller has acted on the events it got)."""
        if self._position is not None:
            self._position.save(self.state_path)

    def wait(self, timeout: float) -> list[JobEvent]:
        """Block until new records exist or ``timeout`` passes; return them (maybe none)."""
        deadline = self.clock() + timeout
        while True:
            seen = self._fingerprint()
            if seen != self._seen:
                self._seen = seen
                events = self.read()
                if events:
                    return events
            left = deadline - self.clock()
            if left <= 0:
                return []
            self.sleep(min(self.poll, left))

    def _fingerprint(self) -> tuple:
        """What changes when anything to read appears: the directory and the current file."""
        stats = []
        for path in (self.directory, self._current_path()):
            try:
                st = os.stat(path)
                stats.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except (FileNotFoundError, TypeError):
                stats.append(None)
        return tuple(stats)

    def _current_path(self) -> str | None:
        return os.path.join(self.directory, self._position.name) if self._position else None

    def _first_position(self, newest: str) -> Position:
        if self._from_start:
            return Position(newest, 0, 0, 0, "")
        path = os.path.join(self.directory, newest)
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            end = _complete_end(handle, st.st_size)
            return Position(newest, st.st_dev, st.st_ino, end, _head_digest(handle, end))

    def _read_current(self) -> list[JobEvent]:
        position = self._position
        path = os.path.join(self.directory, position.name)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return []  # gone (rotated away): read() moves on to the next day's file
        with handle:
            st = os.fstat(handle.fileno())
            if position.offset and (
                    (st.st_dev, st.st_ino) != (position.dev, position.inode)
                    or st.st_size < position.offset
                    or _head_digest(handle, position.offset) != position.head):
                self._notices.append(f"{path}: truncated or replaced, read again from its start")
                position.offset = 0
            lines = self._complete_lines(handle, path)
            position.dev, position.inode = st.st_dev, st.st_ino
            position.head = _head_digest(handle, position.offset)
        return self._events(lines)

    def _complete_lines(self, handle, path: str) -> list[str]:
        """The complete lines from the position on; the offset moves past them."""
        lines: list[str] = []
        while True:
            handle.seek(self._position.offset)
            data = handle.read(_READ_CHUNK)
            complete = data[:data.rfind(b"\n") + 1]
            if not complete and len(data) == _READ_CHUNK:
                self._notices.append(f"{path}: skipped {len(data)} bytes without a line end")
                complete = data
            if not complete:
                return lines
            self._position.offset += len(complete)
            lines += complete.decode("utf-8", errors="replace").splitlines()

    def _events(self, lines: Sequence[str]) -> list[JobEvent]:
        events = []
        for line in lines:
            event = parse_record(line)
            if event is None:
                if line.strip():
                    self._notices.append(f"not an accounting record: {line[:200]!r}")
            else:
                events.append(event)
        return events


def _complete_end(handle, size: int) -> int:
    """The offset just after the file's last complete line."""
    handle.seek(max(0, size - _READ_CHUNK))
    tail = handle.read()
    return size - len(tail) + tail.rfind(b"\n") + 1


@dataclass(frozen=True)
class WatchUpdate:
    events: list[JobEvent]
    jobs: list[Job] | None  # the whole queue from qstat, when it was asked this time
    error: str | None = None  # why qstat could not be asked (the server is down, ...)


class JobWatch:
    """Events from the log, each batch followed by the queue from ``qstat -f -x``."""

    def __init__(self, follower: AccountingFollower, jobs: Callable[[], Sequence[Job]],
                 reconcile_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.follower = follower
        self.jobs = jobs
        self.reconcile_every = reconcile_every
        self.clock = clock
        self._last_reconcile: float | None = None

    def wait(self, timeout: float) -> WatchUpdate:
        due = self._reconcile_due_in()
        events = self.follower.wait(min(timeout, due))
        if not events and self._reconcile_due_in() > 0:
            return WatchUpdate([], None)
        self._last_reconcile = self.clock()
        try:
            jobs = list(self.jobs())
        except BatchFailed as err:
            return WatchUpdate(events, None, err.reason)
        return WatchUpdate(events, jobs)

    def _reconcile_due_in(self) -> float:
        if self._last_reconcile is None:
            return 0.0
        return max(0.0, self._last_reconcile + self.reconcile_every - self.clock())


def wake_on_records(follower: AccountingFollower, wake: Callable[[], None],
                    stopped: Callable[[], bool] = lambda: False, timeout: float = 1.0,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Until ``stopped()``: ``wake()`` once after each batch of new records with a
    :data:`WAKING` one, then save the position (a restart goes on from there; what it
    misses, the caller's periodic look at ``qstat`` finds)."""
    failing = ""
    while not stopped():
        try:
            events = follower.wait(timeout)
        except OSError as err:
            said = f"accounting log {follower.directory}: {err.strerror or err}"
            if said != failing:
                log.warning("%s", said)
                failing = said
            sleep(_RETRY_AFTER)
            continue
        failing = ""
        for notice in follower.take_notices():
            log.warning("%s", notice)
        if any(event.kind in WAKING for event in events):
            wake()
        if events:
            follower.checkpoint()
