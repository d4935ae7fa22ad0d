"""vaf.one.api (the real pyone client) against the OpenNebula API stand-in of vaf/lab."""

from __future__ import annotations

import time

import pytest

from vaf.lab.one_api import FAIL, NO_JOIN, OneApi, Workers
from vaf.one.api import Cloud, CloudRefused, CloudUnavailable, read_session, vm_state


class Recorded(Workers):
    def __init__(self):
        self.started, self.stopped = [], []

    def start(self, vm):
        self.started.append(vm.context["VAF_NODE"])

    def stop(self, vm):
        self.stopped.append(vm.context["VAF_NODE"])


@pytest.fixture
def api():
    server = OneApi(workers=Recorded(), boot_delay=0.05).up()
    yield server
    server.stop()


def cloud(api, owner="pool-a", session=None):
    return Cloud(api.endpoint, session or api.session, owner, timeout=5)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_instantiate_tags_lists_and_terminates(api):
    pool = cloud(api)
    vm_id = pool.instantiate(0, "w1", {"VAF_GATE": "head:22"})
    vm = api.vms[vm_id]
    assert vm.name == "w1"
    assert vm.context == {"NETWORK": "YES", "VAF_GATE": "head:22", "VAF_NODE": "w1"}
    # ownership lives in the user template, where OpenNebula keeps unknown attributes
    assert vm.user_template == {"VAF_ELASTIC": "pool-a", "VAF_NODE": "w1"}
    wait_until(lambda: api.workers.started == ["w1"])
    (listed,) = pool.owned_vms()
    assert (listed.id, listed.name, listed.state) == (vm_id, "w1", "running")
    pool.terminate(vm_id)
    assert api.workers.stopped == ["w1"]
    assert pool.owned_vms() == []
    pool.terminate(vm_id + 100)  # a VM that does not exist is already what we want


def test_only_our_own_vms_are_listed(api):
    cloud(api, owner="pool-b").instantiate(0, "other", {})
    mine = cloud(api).instantiate(0, "w2", {})
    assert [vm.id for vm in cloud(api).owned_vms()] == [mine]


def test_failed_and_silent_vms_show_their_state(api):
    api.next_behaviours = [FAIL, NO_JOIN]
    pool = cloud(api)
    failed, silent = pool.instantiate(0, "w1", {}), pool.instantiate(0, "w2", {})
    wait_until(lambda: {v.id: v.state for v in pool.owned_vms()} ==
               {failed: "failed", silent: "running"})
    assert api.workers.started == []


def test_refusals_say_why(api):
    api.quota_vms = 1
    pool = cloud(api)
    pool.instantiate(0, "w1", {})
    with pytest.raises(CloudRefused, match="limit of 1 reached for VMS quota"):
        pool.instantiate(0, "w2", {})
    with pytest.raises(CloudRefused, match="Error getting template \\[7\\]"):
        pool.instantiate(7, "w3", {})
    with pytest.raises(CloudRefused, match="couldn't be authenticated"):
        cloud(api, session="oneadmin:wrong").owned_vms()


def test_api_down_is_unavailable_not_a_crash(api):
    pool = cloud(api)
    api.down()
    with pytest.raises(CloudUnavailable, match=f"127.0.0.1:{api.port}.* did not answer"):
        pool.owned_vms()
    api.up()
    assert pool.owned_vms() == []


def test_session_file(tmp_path):
    auth = tmp_path / "one_auth"
    auth.write_text("elastic:secret\n")
    assert read_session(environ={"ONE_AUTH": str(auth)}) == "elastic:secret"
    auth.write_text("no colon\n")
    with pytest.raises(CloudRefused, match="expected user:password"):
        read_session(str(auth))
    with pytest.raises(CloudRefused, match="cannot read OpenNebula credentials"):
        read_session(str(tmp_path / "missing"))


@pytest.mark.parametrize("state, lcm, expected", [
    (1, 0, "pending"), (3, 1, "booting"), (3, 3, "running"), (3, 36, "failed"),
    (7, 0, "failed"), (8, 0, "failed"), (3, 18, "ending"), (6, 0, "ending")])
def test_vm_states(state, lcm, expected):
    assert vm_state(state, lcm) == expected
