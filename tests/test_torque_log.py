"""The accounting-log follower against the captured day file (tests/data/torque/), fed to a
scratch ``server_priv/accounting`` the way pbs_server writes it, plus the daily switch,
truncation, replacement and restart from the saved position."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from vaf.batch.base import PENDING, BatchFailed, Job
from vaf.batch.torque_log import (
    DELETED,
    ENDED,
    QUEUED,
    STARTED,
    AccountingFollower,
    JobWatch,
    parse_record,
)

SAMPLE = (Path(__file__).parent / "data" / "torque" / "torque-accounting-20261126.txt")
RECORDS = SAMPLE.read_text().splitlines(keepends=True)
DAY, NEXT_DAY = "20261126", "20261127"


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """The sample was captured on a UTC machine: its stamps and epoch fields agree there."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def accounting(tmp_path):
    directory = tmp_path / "server_priv" / "accounting"
    directory.mkdir(parents=True)
    return directory


def follower(accounting, tmp_path, **options) -> AccountingFollower:
    return AccountingFollower(str(accounting), str(tmp_path / "position.json"), **options)


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)


def kinds(events) -> list[tuple[str, str]]:
    return [(event.kind, event.job) for event in events]


SAMPLE_EVENTS = [(QUEUED, "2.vm"), (QUEUED, "3.vm"), (STARTED, "2.vm"), (ENDED, "2.vm"),
                 (STARTED, "3.vm"), (ENDED, "3.vm"), (QUEUED, "4.vm"), (STARTED, "4.vm"),
                 (ENDED, "4.vm")]


def test_every_record_of_the_captured_day_parses():
    events = [parse_record(line) for line in RECORDS]
    assert kinds(events) == SAMPLE_EVENTS
    started = events[2]
    assert started.time == float(started.attrs["start"]) == 1795674120.0
    assert started.nodes == ("vm",)
    assert started.attrs["Resource_List.nodes"] == "1:ppn=2"
    ended = events[3]
    assert (ended.attrs["Exit_status"], ended.time) == ("0", float(ended.attrs["end"]))
    assert events[0].attrs == {"queue": "batch"}


@pytest.mark.parametrize("line", [
    "", "garbage", "11/26/2026 06:22:00;X;2.vm;queue=batch", "11/26/2026 06:22:00;Q;;x=1",
    "26/11/2026 06:22:00;Q;2.vm;queue=batch", "11/26/2026 06:22:00.508;08;PBS_Server.1;Job;2.vm",
])
def test_lines_that_are_not_records(line):
    assert parse_record(line) is None


def test_deleted_record_without_attributes():
    event = parse_record("11/26/2026 07:00:00;D;9.vm;requestor=tuser@localhost")
    assert (event.kind, event.job, event.attrs) == (DELETED, "9.vm",
                                                    {"requestor": "tuser@localhost"})


def test_records_are_read_as_they_are_written_and_only_whole(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("")
    watch = follower(accounting, tmp_path)
    assert watch.read() == []
    append(day, RECORDS[0])
    append(day, RECORDS[1][:20])  # pbs_server is in the middle of a line
    assert kinds(watch.read()) == SAMPLE_EVENTS[:1]
    assert watch.read() == []
    append(day, RECORDS[1][20:] + "".join(RECORDS[2:4]))
    assert kinds(watch.read()) == SAMPLE_EVENTS[1:4]


def test_a_first_run_starts_at_the_end_unless_asked(accounting, tmp_path):
    (accounting / DAY).write_text("".join(RECORDS[:6]))
    assert follower(accounting, tmp_path).read() == []
    watch = follower(accounting, tmp_path)
    append(accounting / DAY, "".join(RECORDS[6:]))
    assert kinds(watch.read()) == SAMPLE_EVENTS[6:]
    fresh = follower(accounting, tmp_path / "other", from_start=True)
    (tmp_path / "other").mkdir()
    assert kinds(fresh.read()) == SAMPLE_EVENTS


def test_the_midnight_switch_finishes_the_old_day_first(accounting, tmp_path):
    (accounting / DAY).write_text("".join(RECORDS[:2]))
    watch = follower(accounting, tmp_path, from_start=True)
    assert kinds(watch.read()) == SAMPLE_EVENTS[:2]
    append(accounting / DAY, RECORDS[2])  # written just before midnight
    (accounting / NEXT_DAY).write_text("".join(RECORDS[3:5]))
    assert kinds(watch.read()) == SAMPLE_EVENTS[2:5]
    assert watch.position.name == NEXT_DAY
    append(accounting / NEXT_DAY, RECORDS[5])
    assert kinds(watch.read()) == SAMPLE_EVENTS[5:6]


def test_several_days_missed_are_read_in_order(accounting, tmp_path):
    (accounting / DAY).write_text(RECORDS[0])
    watch = follower(accounting, tmp_path, from_start=True)
    assert len(watch.read()) == 1
    watch.checkpoint()
    (accounting / NEXT_DAY).write_text(RECORDS[1])
    (accounting / "20261128").write_text(RECORDS[2])
    (accounting / "20261128.gz").write_text("not a day file")
    later = follower(accounting, tmp_path)
    assert kinds(later.read()) == SAMPLE_EVENTS[1:3]


def test_truncation_reads_the_file_again_from_its_start(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("".join(RECORDS[:6]))
    watch = follower(accounting, tmp_path, from_start=True)
    assert len(watch.read()) == 6
    day.write_text("")  # truncated in place (same inode), then new records
    append(day, RECORDS[6])
    assert kinds(watch.read()) == SAMPLE_EVENTS[6:7]
    assert any("truncated or replaced" in n for n in watch.take_notices())
    assert watch.take_notices() == []


def test_truncated_and_grown_past_the_offset_is_still_noticed(accounting, tmp_path):
    day = accounting / DAY
    day.write_text(RECORDS[0])
    watch = follower(accounting, tmp_path, from_start=True)
    assert len(watch.read()) == 1
    day.write_text("".join(RECORDS[6:]))  # longer than before: only the first bytes tell
    assert kinds(watch.read()) == SAMPLE_EVENTS[6:]


def test_restart_from_the_saved_position_reads_each_record_once(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("".join(RECORDS[:4]))
    first = follower(accounting, tmp_path, from_start=True)
    assert len(first.read()) == 4
    first.checkpoint()
    saved = json.loads((tmp_path / "position.json").read_text())
    assert (saved["name"], saved["offset"]) == (DAY, len("".join(RECORDS[:4]).encode()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["position.json", "server_priv"]
    append(day, "".join(RECORDS[4:]))  # written while the daemon was down
    second = follower(accounting, tmp_path)
    assert kinds(second.read()) == SAMPLE_EVENTS[4:]


def test_restart_without_a_checkpoint_reads_the_events_again(accounting, tmp_path):
    (accounting / DAY).write_text("".join(RECORDS[:2]))
    first = follower(accounting, tmp_path, from_start=True)
    first.read()
    first.checkpoint()
    append(accounting / DAY, RECORDS[2])
    assert len(first.read()) == 1  # the daemon dies before acting on it: not checkpointed
    assert kinds(follower(accounting, tmp_path).read()) == SAMPLE_EVENTS[2:3]


def test_restart_after_the_file_was_replaced_or_removed(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("".join(RECORDS[:3]))
    first = follower(accounting, tmp_path, from_start=True)
    first.read()
    first.checkpoint()
    replacement = accounting / "new"
    replacement.write_text("".join(RECORDS[6:9]))
    os.replace(replacement, day)  # another inode under the same name
    assert kinds(follower(accounting, tmp_path).read()) == SAMPLE_EVENTS[6:9]
    day.unlink()  # rotated away while the daemon was down
    (accounting / NEXT_DAY).write_text(RECORDS[0])
    assert kinds(follower(accounting, tmp_path).read()) == SAMPLE_EVENTS[:1]


@pytest.mark.parametrize("state", ["", "{", '{"name": "x"}', "[]"])
def test_an_unreadable_position_is_a_first_run(accounting, tmp_path, state):
    (accounting / DAY).write_text("".join(RECORDS[:2]))
    (tmp_path / "position.json").write_text(state)
    watch = follower(accounting, tmp_path)
    assert watch.read() == []
    append(accounting / DAY, RECORDS[2])
    assert kinds(watch.read()) == SAMPLE_EVENTS[2:3]


def test_wait_returns_when_a_record_appears(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("")
    watch = follower(accounting, tmp_path, poll=0.02)
    assert watch.wait(0.1) == []
    writer = threading.Timer(0.2, append, (day, RECORDS[0]))
    writer.start()
    events = watch.wait(30)
    writer.join()
    assert kinds(events) == SAMPLE_EVENTS[:1]


def test_wait_sees_the_first_day_file_appear(accounting, tmp_path):
    watch = follower(accounting, tmp_path, poll=0.02, from_start=True)
    assert watch.wait(0.05) == []
    writer = threading.Timer(0.1, (accounting / DAY).write_text, (RECORDS[0],))
    writer.start()
    events = watch.wait(30)
    writer.join()
    assert kinds(events) == SAMPLE_EVENTS[:1]


def test_job_watch_asks_qstat_after_events_and_when_quiet(accounting, tmp_path):
    day = accounting / DAY
    day.write_text("")
    now = [1000.0]
    asked: list[float] = []
    queue = [Job("2.vm", PENDING, 2, 1795674120.0)]

    def jobs():
        asked.append(now[0])
        return queue

    watch = JobWatch(follower(accounting, tmp_path, poll=0.01,
                              sleep=lambda s: now.__setitem__(0, now[0] + s),
                              clock=lambda: now[0]),
                     jobs, reconcile_every=60, clock=lambda: now[0])
    first = watch.wait(1)  # a first reconciliation at once
    assert (first.events, first.jobs) == ([], queue)
    assert watch.wait(5).jobs is None  # quiet and not due: no qstat
    append(day, RECORDS[0])
    update = watch.wait(5)
    assert (kinds(update.events), update.jobs) == (SAMPLE_EVENTS[:1], queue)
    assert len(asked) == 2
    quiet = watch.wait(120)  # nothing in the log for a minute: reconcile anyway
    assert (quiet.events, quiet.jobs, len(asked)) == ([], queue, 3)


def test_job_watch_reports_qstat_failures(accounting, tmp_path):
    (accounting / DAY).write_text("")

    def down():
        raise BatchFailed("qstat failed: cannot connect to server")

    update = JobWatch(follower(accounting, tmp_path), down).wait(0)
    assert (update.jobs, update.error) == (None, "qstat failed: cannot connect to server")
