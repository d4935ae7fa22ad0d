"""The TORQUE adapter and the log follower against the lab's server (vaf/lab/torque.py):
pbsnodes -x / qstat -f -x replay the captured formats from the stand-in's state, and a
whole elastic-style loop runs through the real adapter and the accounting log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vaf.batch.base import (
    ADDED,
    BUSY,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    PENDING,
    PRESENT,
    RUNNING,
    BatchFailed,
    Job,
    Node,
    NodeRequest,
)
from vaf.batch.torque import parse_pbsnodes_xml
from vaf.batch.torque_log import (
    DELETED,
    ENDED,
    QUEUED,
    STARTED,
    AccountingFollower,
    JobWatch,
)
from vaf.lab.torque import TorqueLab

DATA = Path(__file__).parent / "data" / "torque"


@pytest.fixture
def lab(tmp_path):
    lab = TorqueLab(tmp_path / "torque")
    lab.add_host("10.0.0.5", "w1")
    lab.add_host("10.0.0.6", "w2")
    return lab


def element_tags(xml: str) -> list[str]:
    """The element names in document order (the structure, not the values)."""
    from xml.etree import ElementTree
    return [element.tag for element in ElementTree.fromstring(xml).iter()]


def test_pbsnodes_x_has_the_captured_structure(lab):
    torque = lab.torque()
    torque.add_node(NodeRequest("w1", 2))
    lab.mom_up("w1")
    job = lab.submit(ppn=2)
    lab.run(job, "w1")
    shown = subprocess.run(lab.pbsnodes + ["-x"], capture_output=True, text=True).stdout
    assert element_tags(shown) == element_tags((DATA / "pbsnodes-x.xml").read_text())
    torque.drain("w1", "stale: no heartbeat")
    lab.finish(job)
    shown = subprocess.run(lab.pbsnodes + ["-x"], capture_output=True, text=True).stdout
    assert element_tags(shown) == element_tags((DATA / "pbsnodes-x-offline.xml").read_text())


def test_qstat_x_has_the_captured_structure(lab):
    lab.add_host("10.0.0.7", "vm")
    lab.torque().add_node(NodeRequest("vm", 2))
    lab.mom_up("vm")
    running, waiting = lab.submit("run1", ppn=2), lab.submit("wait1", ppn=2)
    lab.schedule()
    shown = subprocess.run(lab.qstat + ["-f", "-x"], capture_output=True, text=True).stdout
    captured = (DATA / "qstat-x.xml").read_text()
    # the captured jobs carry a few attributes of the real qsub (hashname, Walltime,
    # start_count) that vaf never reads; everything else is there in the same order
    extra = {"hashname", "Walltime", "Remaining", "start_count"}
    assert element_tags(shown) == [t for t in element_tags(captured.split("\n", 1)[1])
                                   if t not in extra]
    assert shown.startswith('<?xml version="1.0"?>\n')
    assert [(j.id, j.state) for j in lab.torque().jobs()] == [(running, RUNNING),
                                                              (waiting, PENDING)]


def test_nodes_through_their_life(lab):
    torque = lab.torque()
    assert torque.nodes() == []  # "Server has no node list" is an empty list, not a failure
    assert torque.add_node(NodeRequest("w1", 2, ("cloud",))) == ADDED
    assert torque.add_node(NodeRequest("w1", 2, ("cloud",))) == PRESENT
    assert torque.nodes() == [Node("w1", DOWN, 2, features=("cloud",))]
    lab.mom_up("w1")
    assert torque.nodes()[0].state == IDLE
    job = lab.submit(ppn=1)
    lab.schedule()
    assert torque.nodes()[0].state == BUSY and torque.nodes()[0].jobs == 1
    torque.drain("w1", "vaf: idle")
    assert torque.nodes() == [Node("w1", DRAINING, 2, jobs=1, features=("cloud",),
                                   reason="vaf: idle")]
    waiting = lab.submit()
    assert lab.schedule() == []  # offline: nothing new starts there
    torque.resume("w1")
    assert torque.nodes()[0].state == BUSY and torque.nodes()[0].reason is None
    lab.finish(job)
    torque.drain("w1", "vaf: idle")
    assert torque.nodes()[0].state == DRAINED
    lab.delete(waiting)
    torque.remove_node("w1")
    torque.remove_node("w1")  # already gone: not an error
    assert torque.nodes() == []


def test_drain_of_a_missing_node_and_a_stopped_server_fail_clearly(lab):
    torque = lab.torque()
    with pytest.raises(BatchFailed, match="pbsnodes: Unknown node .*cannot locate"):
        torque.drain("w9", "x")
    lab.stop()
    for call in (torque.jobs, torque.nodes, lambda: torque.remove_node("w1"),
                 lambda: torque.resume("w1")):
        with pytest.raises(BatchFailed, match="cannot connect to server"):
            call()


def test_non_managers_cannot_drain(tmp_path):
    lab = TorqueLab(tmp_path / "torque", managers=("vafgate@localhost",))
    with pytest.raises(BatchFailed, match="PERM_MANAGER"):
        lab.torque().drain("w1", "x")


def test_the_whole_loop_through_the_accounting_log(lab, tmp_path):
    """What the elastic daemon does with TORQUE: a job waits, a worker joins, the job runs
    and ends, the idle worker is drained and removed; every step seen through the log."""
    torque = lab.torque()
    watch = JobWatch(AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"),
                                        poll=0.02), torque.jobs)
    assert watch.wait(0).jobs == []
    job = lab.submit("analysis", ppn=2)
    update = watch.wait(30)
    assert [(e.kind, e.job) for e in update.events] == [(QUEUED, job)]
    (waiting,) = update.jobs
    assert (waiting.state, waiting.cores) == (PENDING, 2)
    # the daemon asks for a worker; it boots and joins through the gate
    assert torque.add_node(NodeRequest("w1", waiting.cores)) == ADDED
    lab.mom_up("w1")
    assert lab.schedule() == [(job, "w1")]
    update = watch.wait(30)
    assert [(e.kind, e.nodes) for e in update.events] == [(STARTED, ("w1",))]
    assert update.jobs == [Job(job, RUNNING, 2, waiting.submitted, "batch", ("w1",),
                               update.jobs[0].reason)]
    watch.follower.checkpoint()
    lab.finish(job)
    update = watch.wait(30)
    assert [e.kind for e in update.events] == [ENDED] and update.jobs == []
    assert torque.nodes()[0].state == IDLE
    torque.drain("w1", "vaf: idle")
    assert torque.nodes()[0].state == DRAINED
    torque.remove_node("w1")
    assert torque.nodes() == [] and lab.nodes_file.read_text() == ""
    # a restarted daemon resumes after the checkpoint: it sees the end once more, no more
    again = AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"))
    assert [e.kind for e in again.read()] == [ENDED]


def test_accounting_records_follow_the_lab_clock_across_midnight(tmp_path):
    now = [1795737590.0]  # 2026-11-26 23:59:50 UTC
    lab = TorqueLab(tmp_path / "torque", clock=lambda: now[0])
    follower = AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"))
    first = lab.submit()
    now[0] += 20
    second = lab.submit()
    assert sorted(p.name for p in lab.accounting_dir.iterdir()) == ["20261126", "20261127"]
    assert [(e.kind, e.job) for e in follower.read()] == [(QUEUED, first), (QUEUED, second)]


def test_the_stand_in_parses_as_the_real_samples_do(lab):
    lab.add_host("10.0.0.7", "vm")
    lab.torque().add_node(NodeRequest("vm", 2))
    lab.mom_up("vm")
    lab.run(lab.submit(ppn=2), "vm")
    shown = subprocess.run(lab.pbsnodes + ["-x"], capture_output=True, text=True).stdout
    assert parse_pbsnodes_xml(shown) == parse_pbsnodes_xml(
        (DATA / "pbsnodes-x.xml").read_text())


def test_a_deleted_job_leaves_the_queue_with_a_d_record(lab, tmp_path):
    follower = AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"))
    job = lab.submit()
    lab.delete(job)
    assert [(e.kind, e.job, e.attrs) for e in follower.read()] == [
        (QUEUED, job, {"queue": "batch"}), (DELETED, job, {"requestor": "tuser@localhost"})]
    assert lab.torque().jobs() == []
