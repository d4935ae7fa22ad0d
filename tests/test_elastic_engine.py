"""The elastic decisions as tables: (world, settings) -> actions, and the transition table."""

from __future__ import annotations

import pytest

from vaf.batch.base import BUSY, DOWN, DRAINED, DRAINING, IDLE, PENDING, POWERED_DOWN, Job, Node
from vaf.elastic import states
from vaf.elastic.config import Settings
from vaf.elastic.engine import (
    RESUME,
    RESUME_FAIL,
    SUSPEND,
    Record,
    Request,
    Streak,
    Vm,
    World,
    decide,
)

NAMES = tuple(f"w{i}" for i in range(1, 9))
NOW = 10_000.0


def settings(**changes) -> Settings:
    base = dict(nodes=NAMES, max_vms=4, min_vms=0, mode="queue", wait_threshold=5,
                idle_threshold=60, deploy_timeout=100, stale_threshold=30,
                max_join_failures=2, failure_backoff=300, poll_interval=1,
                reconcile_interval=30)
    base.update(changes)
    return Settings(**base)


def job(cores=1, age=10.0, state=PENDING, jid="1"):
    return Job(jid, state, cores, NOW - age)


def rec(name, state, age=0.0, vm_id=None):
    return Record(name, state, NOW - age, vm_id=vm_id, requested_at=NOW - age)


def node(name, state, since=None):
    return Node(name, state, 1, since=since, dynamic=True)


def vm(name, vid, state="running"):
    return Vm(vid, name, state)


def acts(decision):
    """(verb, node, resulting state) of each action, in order."""
    return [(a.verb, a.name, a.state) for a in decision.actions]


# --- grow ---
GROW = [
    # waiting cores -> that many 1-core VMs, named from NODES in order
    ("two cores wait", [job(2)], [], [], [], [("record_", "w1", "requested"),
                                              ("record_", "w2", "requested"),
                                              ("instantiate", "w1", "booting"),
                                              ("instantiate", "w2", "booting")]),
    ("a young job does not ask yet", [job(1, age=1)], [], [], [], []),
    ("booting VMs count as capacity", [job(2)], [rec("w1", "booting", 5, vm_id=1)], [],
     [vm("w1", 1, "booting")], [("record_", "w2", "requested"), ("instantiate", "w2", "booting")]),
    ("idle workers count as capacity", [job(1)], [rec("w1", "idle", 5, vm_id=1)],
     [node("w1", IDLE)], [vm("w1", 1)], []),
    ("quota caps the request", [job(9)], [], [], [], [("record_", f"w{i}", "requested")
                                                      for i in range(1, 5)]
     + [("instantiate", f"w{i}", "booting") for i in range(1, 5)]),
    ("names already in the batch system are skipped", [job(1)], [], [node("w1", DOWN)], [],
     [("record_", "w2", "requested"), ("instantiate", "w2", "booting")]),
]


@pytest.mark.parametrize("what, jobs, records, nodes, vms, expected", GROW,
                         ids=[g[0] for g in GROW])
def test_grow(what, jobs, records, nodes, vms, expected):
    assert acts(decide(World(NOW, records, jobs, nodes, vms), settings())) == expected


def test_rate_limit_per_cycle():
    decision = decide(World(NOW, (), [job(9)], [], []), settings(max_requests_per_cycle=2))
    assert [a.name for a in decision.actions if a.verb == "instantiate"] == ["w1", "w2"]
    assert "7 more VM(s) wanted, quota 4 / rate 2 per cycle" in decision.summary


def test_lost_answer_is_adopted_not_asked_again():
    """A request whose answer was lost: the VM shows up tagged with the name -> booting."""
    world = World(NOW, [rec("w1", "requested", 2)], [job(1)], [], [vm("w1", 7, "booting")])
    assert acts(decide(world, settings())) == [("record_", "w1", "booting")]
    assert decide(world, settings()).actions[0].vm_id == 7


def test_cloud_unknown_means_no_cloud_action():
    world = World(NOW, [rec("w1", "requested", 2)], [job(3)], [], None)
    decision = decide(world, settings())
    assert [a.verb for a in decision.actions] == ["record_", "record_"]  # w2, w3 requested
    assert "OpenNebula did not answer" in decision.summary


def test_batch_unknown_means_no_growth_and_no_join():
    world = World(NOW, [rec("w1", "booting", 2, vm_id=1)], None, None, [vm("w1", 1)])
    assert acts(decide(world, settings())) == []


# --- join, fail, stale ---
FOLLOW = [
    ("joined idle", rec("w1", "booting", 5, 1), node("w1", IDLE), vm("w1", 1),
     [("record_", "w1", "idle")]),
    ("joined busy", rec("w1", "booting", 5, 1), node("w1", BUSY), vm("w1", 1),
     [("record_", "w1", "joined")]),
    ("not joined within the deploy timeout", rec("w1", "booting", 100, 1), None, vm("w1", 1),
     [("terminate", "w1", "failed")]),
    ("still booting", rec("w1", "booting", 50, 1), node("w1", POWERED_DOWN), vm("w1", 1), []),
    ("cloud failure", rec("w1", "booting", 5, 1), None, vm("w1", 1, "failed"),
     [("terminate", "w1", "failed")]),
    ("VM vanished", rec("w1", "joined", 5, 1), node("w1", BUSY), None,
     [("record_", "w1", "failed")]),
    ("down for long: stale", rec("w1", "joined", 40, 1), node("w1", DOWN, since=NOW - 40),
     vm("w1", 1), [("terminate", "w1", "stopping")]),
    ("down for a moment", rec("w1", "joined", 40, 1), node("w1", DOWN, since=NOW - 5),
     vm("w1", 1), []),
    ("missing node for long", rec("w1", "idle", 40, 1), None, vm("w1", 1),
     [("terminate", "w1", "stopping")]),
]


@pytest.mark.parametrize("what, record, node_, vm_, expected", FOLLOW,
                         ids=[f[0] for f in FOLLOW])
def test_follow(what, record, node_, vm_, expected):
    world = World(NOW, [record], [], [node_] if node_ else [], [vm_] if vm_ else [])
    assert acts(decide(world, settings())) == expected


# --- shrink ---
SHRINK = [
    ("idle past the threshold: drain", [rec("w1", "idle", 61, 1)], [node("w1", IDLE)], [],
     [("drain", "w1", "draining")]),
    ("idle, not yet", [rec("w1", "idle", 10, 1)], [node("w1", IDLE)], [], []),
    ("never below the minimum", [rec("w1", "idle", 61, 1)], [node("w1", IDLE)], [],
     "min"),
    ("waiting jobs keep an idle node", [rec("w1", "idle", 61, 1)], [node("w1", IDLE)],
     [job(1, age=1)], []),
    ("drained: terminate", [rec("w1", "draining", 2, 1)], [node("w1", DRAINED)], [],
     [("terminate", "w1", "stopping")]),
    ("picked up a job while draining: put back", [rec("w1", "draining", 2, 1)],
     [node("w1", DRAINING)], [], [("undrain", "w1", "joined")]),
    ("a busy node is never drained", [rec("w1", "joined", 600, 1)], [node("w1", BUSY)], [], []),
]


@pytest.mark.parametrize("what, records, nodes, jobs, expected", SHRINK,
                         ids=[s[0] for s in SHRINK])
def test_shrink(what, records, nodes, jobs, expected):
    s = settings(min_vms=1) if expected == "min" else settings()
    vms = [vm(r.name, r.vm_id) for r in records]
    assert acts(decide(World(NOW, records, jobs, nodes, vms), s)) == (
        [] if expected == "min" else expected)


def test_static_nodes_are_never_touched():
    nodes = [node("head1", IDLE, since=0), node("head2", DOWN, since=0)]
    assert acts(decide(World(NOW, [], [], nodes, []), settings())) == []


def test_stopping_waits_for_the_vm_then_releases_the_node():
    record = rec("w1", "stopping", 2, 1)
    still = World(NOW, [record], [], [node("w1", DRAINED)], [vm("w1", 1)])
    assert acts(decide(still, settings())) == []
    gone = World(NOW, [record], [], [node("w1", DRAINED)], [])
    assert acts(decide(gone, settings())) == [("release", "w1", "gone")]
    retried = World(NOW, [rec("w1", "stopping", 61, 1)], [], [node("w1", DRAINED)],
                    [vm("w1", 1)])
    assert acts(decide(retried, settings())) == [("terminate", "w1", "stopping")]


@pytest.mark.parametrize("state, node_state, expected", [
    ("failed", "powering_up", "release"),  # never joined: give the node back now
    ("failed", POWERED_DOWN, "release"),  # after ResumeTimeout Slurm left it DOWN
    ("stopping", POWERED_DOWN, "record_"),  # suspended: Slurm powers it down itself
    ("stopping", IDLE, "release")])
def test_power_save_gives_nodes_back(state, node_state, expected):
    world = World(NOW, [rec("w1", state, 2, 1)], [], [node("w1", node_state)], [])
    assert acts(decide(world, ps())) == [(expected, "w1", "gone")]


def test_duplicate_vm_for_a_name_is_terminated():
    world = World(NOW, [rec("w1", "booting", 1, 3)], [], [], [vm("w1", 3), vm("w1", 4)])
    decision = decide(world, settings())
    assert [(a.verb, a.vm_id) for a in decision.actions] == [("terminate", 4)]


# --- failures in a row stop the asking ---
def test_failures_in_a_row_stop_the_asking_and_say_why():
    streak = Streak(2, NOW - 10, "did not join within 100 s")
    decision = decide(World(NOW, [], [job(3)], [], [], streak=streak),
                      settings(reconcile_interval=1000))
    assert [a for a in decision.actions if a.verb == "instantiate"] == []
    assert "stopped asking for VMs: 2 joins failed in a row (last: did not join within 100 s)" \
        in decision.summary
    assert decision.wake_at == NOW - 10 + 300


def test_after_the_back_off_one_trial_vm():
    streak = Streak(2, NOW - 400, "did not join within 100 s")
    decision = decide(World(NOW, [], [job(3)], [], [], streak=streak), settings())
    assert [a.name for a in decision.actions if a.verb == "instantiate"] == ["w1"]


def test_a_join_resets_the_streak_and_a_timeout_counts():
    joined = decide(World(NOW, [rec("w1", "booting", 5, 1)], [], [node("w1", IDLE)],
                          [vm("w1", 1)], streak=Streak(1, NOW, "x")), settings())
    assert joined.streak == Streak()
    timed_out = decide(World(NOW, [rec("w1", "booting", 100, 1)], [], [], [vm("w1", 1)]),
                       settings())
    assert timed_out.streak.failures == 1


def test_never_joined_vm_is_terminated_even_at_the_minimum():
    world = World(NOW, [rec("w1", "booting", 100, 1)], [], [], [vm("w1", 1)])
    assert acts(decide(world, settings(min_vms=1)))[0] == ("terminate", "w1", "failed")


# --- power-save mode: Slurm's requests ---
def ps(**changes):
    return settings(mode="power-save", idle_threshold=0, **changes)


def test_resume_requests_become_vms_and_repeats_are_ignored():
    requests = [Request(1, RESUME, "w3", NOW), Request(2, RESUME, "w3", NOW),
                Request(3, RESUME, "w5", NOW)]
    nodes = [node(n, POWERED_DOWN) for n in NAMES]
    decision = decide(World(NOW, [], [], nodes, [], requests), ps())
    assert acts(decision) == [("record_", "w3", "requested"), ("record_", "w5", "requested"),
                              ("instantiate", "w3", "booting"), ("instantiate", "w5", "booting")]
    assert decision.done_requests == (1, 2, 3)


def test_resume_over_quota_is_refused_with_the_reason():
    records = [rec(f"w{i}", "joined", 5, i) for i in range(1, 5)]
    vms = [vm(r.name, r.vm_id) for r in records]
    nodes = [node(r.name, BUSY) for r in records]
    decision = decide(World(NOW, records, [], nodes, vms, [Request(9, RESUME, "w6", NOW)]),
                      ps())
    (refuse,) = decision.actions
    assert (refuse.verb, refuse.name, refuse.reason) == ("refuse", "w6",
                                                         "quota reached (4 VMs)")


def test_suspend_and_resume_fail():
    records = [rec("w1", "idle", 5, 1), rec("w2", "booting", 5, 2)]
    world = World(NOW, records, [], [node("w1", IDLE), node("w2", POWERED_DOWN)],
                  [vm("w1", 1), vm("w2", 2)],
                  [Request(1, SUSPEND, "w1", NOW), Request(2, RESUME_FAIL, "w2", NOW)])
    decision = decide(world, ps())
    assert acts(decision) == [("terminate", "w1", "stopping"), ("terminate", "w2", "failed")]
    assert decision.streak.failures == 1


def test_power_save_minimum_asks_slurm():
    nodes = [node(n, POWERED_DOWN) for n in NAMES]
    assert acts(decide(World(NOW, [], [], nodes, []), ps(min_vms=2))) == [
        ("powerup", "w1", None), ("powerup", "w2", None)]


def test_refused_nodes_are_unheld_when_there_is_room():
    held = Node("w7", DRAINED, 1, reason="vaf elastic: quota reached (4 VMs)")
    decision = decide(World(NOW, [], [], [held], []), ps())
    assert acts(decision) == [("unhold", "w7", None)]


def test_squeeze_while_workers_run_release_after_the_last():
    s = settings(squeeze=("--attr", "BATCH=1"))
    working = World(NOW, [rec("w1", "joined", 5, 1)], [], [node("w1", BUSY)], [vm("w1", 1)])
    assert [(a.verb, a.on) for a in decide(working, s).actions] == [("squeeze", True)]
    done = World(NOW, [rec("w1", "gone", 5)], [], [], [], squeezed=True)
    assert [(a.verb, a.on) for a in decide(done, s).actions] == [("squeeze", False)]


def test_wake_soon_while_booting_and_at_thresholds():
    booting = World(NOW, [rec("w1", "booting", 5, 1)], [], [], [vm("w1", 1, "booting")])
    assert decide(booting, settings()).wake_at == NOW + 1
    young = World(NOW, [], [job(1, age=2)], [], [])
    assert decide(young, settings()).wake_at == NOW + 3
    assert decide(World(NOW), settings()).wake_at == NOW + 30


# --- the transition table ---
@pytest.mark.parametrize("old, new, allowed", [
    (None, "requested", True), (None, "joined", False), ("requested", "booting", True),
    ("booting", "joined", True), ("joined", "draining", True), ("draining", "joined", True),
    ("draining", "stopping", True), ("stopping", "gone", True), ("stopping", "joined", False),
    ("gone", "requested", True), ("failed", "joined", False), ("booting", "gone", False)])
def test_transitions(old, new, allowed):
    if allowed:
        states.check_transition("w1", old, new)
    else:
        with pytest.raises(states.BadTransition):
            states.check_transition("w1", old, new)


def test_every_action_state_is_in_the_table():
    assert set(states.TRANSITIONS) == set(states.STATES)
    for targets in states.TRANSITIONS.values():
        assert targets <= set(states.STATES)
