"""The gate against workers that lie: aliases of their address, a second node on one
address, more cpus or properties than the admin allows, names TORQUE cannot hold, a name
already registered with other attributes, concurrent joins from one address. Everything
runs the gate's whole decision (``serve`` with a gate.conf) against the TORQUE stand-in."""

from __future__ import annotations

import ipaddress
import os
import shlex

import pytest

from vaf.batch.base import Node
from vaf.gate.gate import BATCH_FAILED, BUSY, DENIED, MISCONFIGURED, OK, REFUSED, serve
from vaf.gate.gate import check_occupancy as occupancy
from vaf.gate.grammar import JoinRequest
from vaf.gate.identity import Denied, HostsFileResolver
from vaf.host.locks import if_free
from vaf.lab.torque import TorqueLab

LONG_NAME = "a" * 63 + "." + "b" * 17  # 81 characters: a valid host name, too long for TORQUE


class Head:
    """gate.conf, the server's hosts file and the TORQUE stand-in of one test."""

    def __init__(self, tmp_path, **settings: str):
        self.lab = TorqueLab(tmp_path / "torque")
        for line in ("10.0.0.13 wn13 wn13-alias", "10.0.0.14 wn14", "10.0.0.15 wn15",
                     f"10.0.0.16 {LONG_NAME}"):
            self.lab.add_host(*line.split())
        self.lock_dir = tmp_path / "locks"
        values = {"BACKEND": "torque", "QMGR": shlex.join(self.lab.qmgr),
                  "PBSNODES": shlex.join(self.lab.pbsnodes), "HOSTS_FILE": str(self.lab.hosts),
                  "LOCK_DIR": str(self.lock_dir), "MAX_CPUS": "8",
                  "ALLOWED_PROPERTIES": "cloud,small", "LOG_FILE": str(tmp_path / "gate.log")}
        values.update(settings)
        self.conf = tmp_path / "gate.conf"
        self.conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))

    def join(self, command: str, source: str) -> tuple[int, str]:
        out: list[str] = []
        code = serve(str(self.conf), {"SSH_ORIGINAL_COMMAND": command,
                                      "SSH_CONNECTION": f"{source} 40000 10.0.0.1 22"},
                     lambda c, line: out.append(line))
        return code, out[0]

    def nodes(self) -> str:
        return self.lab.nodes_file.read_text() if self.lab.nodes_file.exists() else ""


@pytest.fixture
def head(tmp_path):
    return Head(tmp_path)


def test_an_alias_of_the_address_is_not_a_second_node(head):
    assert head.join("join wn13 2", "10.0.0.13") == (OK, "vaf-gate: joined wn13")
    assert head.join("join wn13-alias 2", "10.0.0.13") == (
        DENIED, "vaf-gate: denied: wn13-alias is an alias: the name of 10.0.0.13 is wn13 "
                "(one address, one node)")
    assert head.nodes() == "wn13 np=2\n"


def test_an_address_that_carries_a_node_refuses_another_name(tmp_path):
    # even with the reverse check switched off, the batch system's nodes decide
    head = Head(tmp_path, CHECK_REVERSE="no")
    assert head.join("join wn13 2", "10.0.0.13")[0] == OK
    assert head.join("join wn13-alias 2", "10.0.0.13") == (
        DENIED, "vaf-gate: denied: 10.0.0.13 already carries node wn13 (one address, one node)")
    assert head.nodes() == "wn13 np=2\n"


@pytest.mark.parametrize(("command", "source", "why"), [
    ("join wn14 9", "10.0.0.14", "9 cpus is more than MAX_CPUS=8 of gate.conf"),
    ("join wn14 4096", "10.0.0.14", "4096 cpus is more than MAX_CPUS=8 of gate.conf"),
    ("join wn14 2 gpu", "10.0.0.14",
     "property 'gpu' is not in ALLOWED_PROPERTIES of gate.conf (allowed: cloud,small)"),
    ("join wn14 2 cloud,bigmem", "10.0.0.14",
     "property 'bigmem' is not in ALLOWED_PROPERTIES of gate.conf (allowed: cloud,small)"),
    (f"join {LONG_NAME} 2", "10.0.0.16",
     "torque holds node names of at most 80 characters, aaaaaaaaaaaaaaaaaaaa... has 81"),
])
def test_what_the_admin_does_not_allow_is_refused_and_nothing_runs(head, command, source, why):
    assert head.join(command, source) == (REFUSED, f"vaf-gate: refused: {why}")
    assert head.lab.calls() == []


def test_no_properties_unless_the_admin_lists_them(tmp_path):
    head = Head(tmp_path, ALLOWED_PROPERTIES="")
    assert head.join("join wn14 2 cloud", "10.0.0.14") == (
        REFUSED, "vaf-gate: refused: property 'cloud' is not in ALLOWED_PROPERTIES of "
                 "gate.conf (allowed: none)")
    assert head.join("join wn14 2", "10.0.0.14")[0] == OK


def test_a_name_already_registered_with_other_attributes_is_not_present(head):
    assert head.join("join wn14 2 cloud", "10.0.0.14")[0] == OK
    for command, asked in [("join wn14 4 cloud", "4 cpus and properties cloud"),
                           ("join wn14 2", "2 cpus and properties none"),
                           ("join wn14 2 cloud,small", "2 cpus and properties cloud,small")]:
        assert head.join(command, "10.0.0.14") == (
            DENIED, f"vaf-gate: denied: wn14 is already a node with 2 cpus and properties "
                    f"cloud, not {asked}: the admin must remove it first")
    assert head.join("join wn14 2 cloud", "10.0.0.14") == (
        OK, "vaf-gate: already present: wn14")
    assert head.nodes() == "wn14 np=2 cloud\n"


def test_a_concurrent_join_from_the_same_address_is_refused_at_once(head):
    head.lock_dir.mkdir(mode=0o700)
    with if_free(str(head.lock_dir), "join-10.0.0.14") as held:  # a join in progress
        assert held
        assert head.join("join wn14 2", "10.0.0.14") == (
            BUSY, "vaf-gate: busy: another join from 10.0.0.14 is in progress; retry later")
        assert head.lab.calls() == []
        # another address is not held up
        assert head.join("join wn15 2", "10.0.0.15") == (OK, "vaf-gate: joined wn15")
    assert head.join("join wn14 2", "10.0.0.14") == (OK, "vaf-gate: joined wn14")


def test_the_lock_directory_is_created_private(head):
    assert head.join("join wn14 2", "10.0.0.14")[0] == OK
    info = os.lstat(head.lock_dir)
    assert (info.st_mode & 0o777, info.st_uid) == (0o700, os.geteuid())


@pytest.mark.parametrize("make", ["symlink", "world-writable", "other-owner", "missing-parent"])
def test_a_lock_directory_the_gate_does_not_own_is_misconfiguration(tmp_path, make):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    lock_dir = tmp_path / "locks"
    if make == "symlink":
        lock_dir.symlink_to(target)
    elif make == "world-writable":
        lock_dir.mkdir()
        lock_dir.chmod(0o1777)
    elif make == "other-owner":
        lock_dir.mkdir(mode=0o700)
        os.chown(lock_dir, 65534, 65534)
    else:
        lock_dir = tmp_path / "no" / "such"
    head = Head(tmp_path, LOCK_DIR=str(lock_dir))
    code, line = head.join("join wn14 2", "10.0.0.14")
    assert code == MISCONFIGURED
    assert line.startswith(f"vaf-gate: misconfigured: LOCK_DIR {lock_dir}")
    assert head.lab.calls() == [] and list(target.iterdir()) == []


@pytest.mark.parametrize(("settings", "reason"), [
    ({"MAX_CPUS": "0"}, "MAX_CPUS"),
    ({"MAX_CPUS": "5000"}, "MAX_CPUS"),
    ({"ALLOWED_PROPERTIES": "cloud,Bad"}, "ALLOWED_PROPERTIES"),
])
def test_bad_limits_in_gate_conf(tmp_path, settings, reason):
    code, line = Head(tmp_path, **settings).join("join wn14 2", "10.0.0.14")
    assert code == MISCONFIGURED and reason in line


def test_a_server_that_is_down_creates_nothing(head):
    head.lab.stop()
    code, line = head.join("join wn14 2", "10.0.0.14")
    assert code == BATCH_FAILED and "cannot connect to server" in line
    assert head.lab.calls("qmgr") == []


# --- the occupancy rule as a table (Slurm reports NodeAddr; TORQUE only names) -----------

ADDRESS = ipaddress.ip_address("10.0.0.5")


@pytest.fixture
def resolver(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.5 w1\n10.0.0.6 w2\n")
    return HostsFileResolver(str(hosts))


@pytest.mark.parametrize(("nodes", "denial"), [
    ([], None),
    ([Node("w1", "idle", 2)], None),
    ([Node("w1", "idle", 2, address="10.0.0.9")], None),  # re-created elsewhere: Slurm moves it
    ([Node("w2", "idle", 2)], None),
    ([Node("w2", "idle", 2, address="10.0.0.5")], "10.0.0.5 already carries node w2"),
    ([Node("old", "down", 1, address="w1")], "10.0.0.5 already carries node old"),
    ([Node("w1", "idle", 4)], "w1 is already a node with 4 cpus and properties none, not 2"),
    ([Node("w1", "idle", 2, features=("gpu",))], "already a node with 2 cpus and properties gpu"),
    ([Node("ghost", "down", 1)], None),  # a node whose name no longer resolves
])
def test_occupancy_table(resolver, nodes, denial):
    request = JoinRequest("w1", 2)
    if denial is None:
        occupancy(request, ADDRESS, nodes, resolver)
    else:
        with pytest.raises(Denied, match=denial):
            occupancy(request, ADDRESS, nodes, resolver)
