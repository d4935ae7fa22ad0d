"""The join grammar, the qmgr/scontrol builders, identity checks and the key line."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from vaf.batch.slurm import scontrol_create_node
from vaf.batch.torque import qmgr_create_node
from vaf.errors import ConfigError
from vaf.gate.gate import node_request
from vaf.gate.grammar import JoinRequest, Refused, parse
from vaf.gate.identity import (
    Denied,
    HostsFileResolver,
    check_binding,
    client_address,
    normalise_address,
)
from vaf.gate.keys import authorized_keys_line

ACCEPTED = [
    ("join w1 1", JoinRequest("w1", 1)),
    ("join worker-7.vaf.example.org 8", JoinRequest("worker-7.vaf.example.org", 8)),
    ("join a 4096", JoinRequest("a", 4096)),
    ("join w1 2 cloud", JoinRequest("w1", 2, ("cloud",))),
    ("join w1 2 cloud,small,gpu_a100,x-1", JoinRequest("w1", 2, ("cloud", "small", "gpu_a100",
                                                                  "x-1"))),
    ("join w1.10.example 2", JoinRequest("w1.10.example", 2)),
    ("join " + "a" * 63 + " 1", JoinRequest("a" * 63, 1)),
    ("join " + ".".join(["a" * 63] * 3) + "." + "b" * 61 + " 1",
     JoinRequest(".".join(["a" * 63] * 3) + "." + "b" * 61, 1)),
    ("join w1 1 " + ",".join(f"p{i}" for i in range(16)),
     JoinRequest("w1", 1, tuple(f"p{i}" for i in range(16)))),
]


@pytest.mark.parametrize(("command", "expected"), ACCEPTED)
def test_accepted_commands_parse_and_round_trip(command, expected):
    request = parse(command)
    assert request == expected
    assert request.command() == command


@pytest.mark.parametrize("bad", [
    dict(hostname="W1", cpus=1), dict(hostname="w1", cpus=0), dict(hostname="w1", cpus=True),
    dict(hostname="w1", cpus=4097), dict(hostname="w1", cpus=1, properties=("a b",)),
    dict(hostname="10.0.0.1", cpus=1), dict(hostname="localhost", cpus=1),
])
def test_requests_validate_their_fields(bad):
    with pytest.raises(Refused):
        JoinRequest(**bad)


QMGR = [
    (JoinRequest("w1", 2), "create node w1 np=2"),
    (JoinRequest("w1.example", 16, ("cloud",)), 'create node w1.example np=16,properties="cloud"'),
    (JoinRequest("w1", 1, ("cloud", "small")), 'create node w1 np=1,properties="cloud,small"'),
]


@pytest.mark.parametrize(("request_", "directive"), QMGR)
def test_qmgr_directive_is_one_comma_separated_create(request_, directive):
    assert qmgr_create_node(node_request(request_, ipaddress.ip_address("10.0.0.5"))) == directive


SCONTROL = [
    (JoinRequest("w1", 2), "10.0.0.5",
     ["create", "NodeName=w1", "NodeAddr=10.0.0.5", "NodeHostname=w1", "CPUs=2", "State=CLOUD"]),
    (JoinRequest("w1", 4, ("dyn", "big")), "fd00::5",
     ["create", "NodeName=w1", "NodeAddr=fd00::5", "NodeHostname=w1", "CPUs=4",
      "Feature=dyn,big", "State=CLOUD"]),
]


@pytest.mark.parametrize(("request_", "address", "words"), SCONTROL)
def test_scontrol_create_words(request_, address, words):
    assert scontrol_create_node(node_request(request_, ipaddress.ip_address(address))) == words


@pytest.fixture
def hosts(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# workers\n10.0.0.5 w1.vaf w1\n10.0.0.6 w2.vaf\n10.0.0.5 alias5\n"
                    "fd00::7 w7\nnot-an-ip junk\n")
    return HostsFileResolver(str(path))


@pytest.mark.parametrize(("name", "client"), [
    ("w1.vaf", "10.0.0.5"), ("w7", "fd00::7"), ("w2.vaf", "::ffff:10.0.0.6"),
])
def test_binding_accepts_a_name_of_the_connecting_address(hosts, name, client):
    check_binding(name, normalise_address(client), hosts)


@pytest.mark.parametrize(("name", "client", "reason"), [
    ("w2.vaf", "10.0.0.5", "w2.vaf resolves to 10.0.0.6, not to the connecting address 10.0.0.5"),
    ("ghost", "10.0.0.5", "ghost does not resolve on the batch server"),
    # aliases of the connecting address: only its canonical name (first on its first line)
    ("w1", "10.0.0.5", "w1 is an alias: the name of 10.0.0.5 is w1.vaf (one address, one node)"),
    ("alias5", "10.0.0.5",
     "alias5 is an alias: the name of 10.0.0.5 is w1.vaf (one address, one node)"),
])
def test_binding_refuses_another_machines_name(hosts, name, client, reason):
    with pytest.raises(Denied) as err:
        check_binding(name, normalise_address(client), hosts)
    assert err.value.reason == reason
    assert err.value.exit_code == 3


def test_reverse_check_is_what_stops_aliases(hosts, tmp_path):
    path = tmp_path / "hosts2"
    path.write_text("10.0.0.5 wn13 wn13-alias\n")
    resolver = HostsFileResolver(str(path))
    check_binding("wn13", normalise_address("10.0.0.5"), resolver)
    with pytest.raises(Denied, match="wn13-alias is an alias: the name of 10.0.0.5 is wn13"):
        check_binding("wn13-alias", normalise_address("10.0.0.5"), resolver)
    check_binding("wn13-alias", normalise_address("10.0.0.5"), resolver, reverse=False)


def test_an_address_without_a_reverse_name_is_denied(tmp_path):
    path = tmp_path / "hosts3"
    path.write_text("10.0.0.5 w1\n")
    forward_only = HostsFileResolver(str(path))
    forward_only.canonical = lambda address: None  # a DNS zone without the PTR record
    with pytest.raises(Denied, match="10.0.0.5 does not resolve back to any name"):
        check_binding("w1", normalise_address("10.0.0.5"), forward_only)


@pytest.mark.parametrize("connection", [None, "", "10.0.0.5 22", "x 1 2 3", "1 2 3 4 5"])
def test_client_address_needs_a_real_ssh_connection(connection):
    with pytest.raises(Denied):
        client_address(connection)


def _public_key(kind=b"ssh-ed25519"):
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + b"k" * 32
    return f"{kind.decode()} {base64.b64encode(blob).decode()}"


def test_authorized_keys_line_is_restricted_and_forced():
    key = _public_key()
    line = authorized_keys_line(key + " vaf join; $(x)", ["10.0.0.0/16", "*.vaf.example"],
                                ["/usr/bin/python3", "-m", "vaf.gate"], "/etc/vaf/gate.conf")
    assert line == ('restrict,from="10.0.0.0/16,*.vaf.example",command="/usr/bin/python3 -m '
                    'vaf.gate serve --config /etc/vaf/gate.conf" ' + key + " vaf_join____x_")


@pytest.mark.parametrize(("key", "patterns", "program"), [
    ("ssh-ed25519 AAAA", ["10.0.0.0/8"], ["/usr/bin/vaf", "gate"]),
    (_public_key().replace("ssh-ed25519", "ssh-rsa", 1), ["10.0.0.0/8"], ["vaf", "gate"]),
    (_public_key(), [], ["vaf", "gate"]),
    (_public_key(), ['10.0.0.0/8",command="sh'], ["vaf", "gate"]),
    (_public_key(), ["10.0.0.0/8"], ['/opt/my"gate']),
])
def test_authorized_keys_line_refuses_what_it_cannot_write_safely(key, patterns, program):
    with pytest.raises(ConfigError):
        authorized_keys_line(key, patterns, program, "/etc/vaf/gate.conf")
