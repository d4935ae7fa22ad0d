"""TORQUE in the elastic daemon: the accounting log wakes it, ``qstat -f -x`` and
``pbsnodes -x`` are the truth, workers join through the gate (``qmgr create node``), idle
ones are drained (``pbsnodes -o``), their VMs terminated and their nodes deleted; the whole
loop against the TORQUE and OpenNebula stand-ins with the real daemon as its own process."""

from __future__ import annotations

import json

import pytest

from vaf.batch.torque_log import AccountingFollower, wake_on_records
from vaf.lab.elastic_loop import CloudWatch as Watch
from vaf.lab.elastic_loop import TorqueLoop
from vaf.lab.torque import TorqueLab


class Wakes:
    def __init__(self):
        self.count, self.stopped = 0, False

    def __call__(self):
        self.count += 1


@pytest.mark.parametrize("records, woken", [
    ([("Q", "queue=batch")], 1),
    ([("Q", "queue=batch"), ("Q", "queue=batch")], 1),  # one batch, one wake
    ([("S", "user=u exec_host=w1/0")], 0),  # a start changes neither demand nor load
    ([("E", "user=u exec_host=w1/0 Exit_status=0")], 1),
    ([("D", "requestor=u@h")], 1),
])
def test_which_records_wake_the_daemon(tmp_path, records, woken):
    lab = TorqueLab(tmp_path / "torque")
    follower = AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"),
                                  from_start=True)
    for kind, attributes in records:
        lab.record(kind, "1.head", attributes)
    wakes = Wakes()
    calls = iter([False, True])
    wake_on_records(follower, wakes, lambda: next(calls), timeout=0.5)
    assert wakes.count == woken
    # the position is saved: a restarted follower does not see these records again
    again = AccountingFollower(str(lab.accounting_dir), str(tmp_path / "pos.json"))
    assert again.read() == []


def test_an_unreadable_log_is_said_once_and_retried(tmp_path, caplog):
    class Broken:
        directory = str(tmp_path)

        def wait(self, timeout):
            raise PermissionError(13, "Permission denied")

    sleeps: list = []
    stops = iter([False, False, False, True])
    with caplog.at_level("WARNING"):
        wake_on_records(Broken(), Wakes(), lambda: next(stops), sleep=sleeps.append)
    assert caplog.text.count("Permission denied") == 1 and len(sleeps) == 3


@pytest.fixture
def loop():
    # the safety-net look is an hour away: only the accounting log can wake the daemon
    made = TorqueLoop(workers=4, max_vms=3, boot_delay=1.5, runtime=1.5,
                      settings={"RECONCILE_INTERVAL": "3600"})
    yield made.start()
    made.stop()


def test_the_whole_torque_loop_through_a_restart(loop):
    """Jobs wait; the accounting log wakes the daemon, which asks OpenNebula for workers
    (never more than the quota); they join through the gate; the daemon is killed while they
    boot and restarted; the jobs run and end; idle workers are drained, terminated and their
    nodes deleted: no VM twice, none left, no node left, every job done."""
    watch = Watch(loop.api)
    watch.start()
    loop.start_daemon()
    loop.wait(lambda: json.loads(loop.status())["last_decision"], "the first look", 20)
    jobs = loop.submit(4)
    assert [line.split()[1] for line in loop.queue()] == ["pending"] * 4
    loop.wait(lambda: len(loop.api.live()) == 3, "three VMs requested", 20)
    loop.kill_daemon()  # mid-way: VMs booting, none joined
    loop.start_daemon()
    loop.wait(lambda: len(loop.joins.answers) >= 3, "three workers joined", 30)
    loop.wait(lambda: not loop.queue(), "every job ran", 60)
    loop.wait(lambda: not loop.api.live() and not loop.node_states(), "all gone", 60)
    watch.running = False
    assert watch.most <= 3 and not watch.doubles
    assert loop.api.count("one.template.instantiate") == 3  # the restart asked for nothing
    assert all(code == 0 for _, code, _ in loop.joins.answers), loop.joins.answers
    qmgr = [" ".join(c[c.index("-c") + 1:]) for c in loop.torque.calls("qmgr") if "-c" in c]
    created = {d.split()[2] for d in qmgr if d.startswith("create node")}
    deleted = {d.split()[2] for d in qmgr if d.startswith("delete node")}
    assert created == deleted == {"w1", "w2", "w3"}
    drained = {c[-1] for c in loop.torque.calls("pbsnodes") if "-o" in c}
    assert drained == {"w1", "w2", "w3"}
    ended = [line.split(";")[2] for log in loop.torque.accounting_dir.iterdir()
             for line in log.read_text().splitlines() if line.split(";")[1] == "E"]
    assert sorted(ended) == sorted(jobs)
    status = json.loads(loop.status())
    assert {n["state"] for n in status["nodes"]} == {"gone"}
    assert loop.torque.nodes_file.read_text().strip() == ""
