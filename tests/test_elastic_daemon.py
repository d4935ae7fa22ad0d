"""The daemon in queue mode (the TORQUE wiring: only the vaf.batch protocol), in process:
the OpenNebula API stand-in through real pyone, and the in-memory batch system of vaf/lab."""

from __future__ import annotations

import time

import pytest

from vaf.elastic.config import Settings
from vaf.elastic.daemon import Daemon, join_context, squeeze_argv
from vaf.elastic.store import Store
from vaf.errors import VafError
from vaf.lab.fake_batch import FakeBatch, FakeBatchWorkers
from vaf.lab.one_api import OneApi
from vaf.one.api import Cloud


@pytest.fixture
def batch():
    return FakeBatch()


@pytest.fixture
def api(batch):
    server = OneApi(workers=FakeBatchWorkers(batch), boot_delay=0.05).up()
    yield server
    server.stop()


def make(api, batch, tmp_path, **changes):
    values = dict(batch="torque", mode="queue", nodes=("w1", "w2", "w3", "w4"), max_vms=3,
                  wait_threshold=0, idle_threshold=0.4, poll_interval=0.05, deploy_timeout=5,
                  state_dir=str(tmp_path / "state"), owner="test",
                  join_context=("VAF_GATE=head:22",))
    values.update(changes)
    settings = Settings(**values)
    store = Store(settings.database)
    daemon = Daemon(settings, store, batch,
                    lambda: Cloud(api.endpoint, api.session, settings.owner, timeout=5))
    return daemon, store


def run_until(daemon, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached"
        daemon.cycle()
        time.sleep(0.05)


def states(store):
    return {r.name: r.state for r in store.records()}


def test_grow_run_drain_terminate_remove(api, batch, tmp_path):
    daemon, store = make(api, batch, tmp_path)
    batch.submit(cores=1, seconds=0.3)
    batch.submit(cores=1, seconds=0.3)
    daemon.cycle()
    assert states(store) == {"w1": "booting", "w2": "booting"}
    assert api.vms[0].context["VAF_GATE"] == "head:22"
    daemon.cycle()
    assert len(api.live()) == 2  # the same waiting jobs never ask twice
    run_until(daemon, lambda: set(states(store).values()) == {"gone"})
    assert sorted(batch.removed) == ["w1", "w2"]
    assert api.live() == []
    assert api.count("one.template.instantiate") == 2
    assert batch.jobs() == []


def test_a_node_that_picked_up_a_job_while_draining_is_put_back(api, batch, tmp_path):
    daemon, store = make(api, batch, tmp_path)
    batch.submit(cores=1, seconds=0.1)
    run_until(daemon, lambda: states(store).get("w1") == "draining")
    batch.start_job_on("w1", seconds=30)
    daemon.cycle()
    assert states(store)["w1"] == "joined"
    assert [n.state for n in batch.nodes()] == ["busy"]
    assert len(api.live()) == 1


def test_state_rebuilt_from_opennebula_alone(api, batch, tmp_path):
    daemon, store = make(api, batch, tmp_path, idle_threshold=600)
    for _ in range(2):
        batch.submit(cores=1, seconds=30)
    daemon.cycle()
    store.close()
    (tmp_path / "state" / "state.db").unlink()
    reborn, store = make(api, batch, tmp_path, idle_threshold=600)
    reborn.cycle()
    assert {r.name: r.vm_id for r in store.records()} == {"w1": 0, "w2": 1}
    assert api.count("one.template.instantiate") == 2


def test_api_down_then_back(api, batch, tmp_path):
    daemon, store = make(api, batch, tmp_path)
    api.down()
    batch.submit(cores=2, seconds=30)
    daemon.cycle()
    daemon.cycle()
    assert states(store) == {"w1": "requested", "w2": "requested"}
    assert "OpenNebula did not answer" in store.get("last_decision")["why"]
    api.up()
    daemon.cycle()
    assert states(store) == {"w1": "booting", "w2": "booting"}
    assert api.count("one.template.instantiate") == 2


def test_dry_run_changes_nothing(api, batch, tmp_path, caplog):
    daemon, store = make(api, batch, tmp_path, dry_run=True)
    batch.submit(cores=1)
    with caplog.at_level("INFO"):
        daemon.cycle()
    assert api.live() == [] and store.records() == []
    assert "dry run: would instantiate w1" in caplog.text


def test_cloud_refusal_counts_and_says_why(api, batch, tmp_path):
    api.quota_vms = 0
    daemon, store = make(api, batch, tmp_path, max_join_failures=1)
    batch.submit(cores=1, seconds=30)
    daemon.cycle()
    daemon.cycle()
    assert store.streak().failures == 1
    assert "limit of 0 reached for VMS quota" in store.streak().last_reason
    assert "stopped asking for VMs: 1 joins failed in a row" in store.get("last_decision")["why"]


def test_squeeze_runs_the_cpu_command_and_releases(api, batch, tmp_path):
    calls = tmp_path / "calls"
    script = tmp_path / "vaf"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    script.chmod(0o755)
    daemon, store = make(api, batch, tmp_path, squeeze=("--attr", "BATCH=1"),
                         vaf=(str(script),))
    batch.submit(cores=1, seconds=0.2)
    run_until(daemon, lambda: store.get("squeezed"))
    run_until(daemon, lambda: set(states(store).values()) == {"gone"} and
              not store.get("squeezed"))
    assert calls.read_text().splitlines() == ["cpu squeeze --attr BATCH=1",
                                              "cpu release --attr BATCH=1"]


def test_small_builders():
    settings = Settings(nodes=("w1",), max_vms=1, squeeze=("--user", "batch"))
    assert squeeze_argv(settings, False) == ["vaf", "cpu", "release", "--user", "batch"]
    # power saving resumes slurm.conf's State=CLOUD nodes: the worker's slurmd drops -Z
    assert join_context(settings) == {"VAF_SLURMD_MODE": "cloud"}
    assert join_context(Settings(batch="torque", mode="queue", nodes=("w1",), max_vms=1,
                                 join_context=("A=b",))) == {"VAF_SLURMD_MODE": "dynamic",
                                                             "A": "b"}
    assert join_context(Settings(nodes=("w1",), max_vms=1, join_context=(
        "VAF_SLURMD_MODE=dynamic",))) == {"VAF_SLURMD_MODE": "dynamic"}
    with pytest.raises(VafError, match="JOIN_CONTEXT: expected KEY=value"):
        join_context(Settings(nodes=("w1",), max_vms=1, join_context=("nokey",)))
