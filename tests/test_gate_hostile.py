"""Nothing but ``join <hostname> <cpus> [<properties>]`` gets past the gate, and nothing runs.

Every hostile command goes through the gate's whole decision (:func:`vaf.gate.gate.handle`)
with a real TORQUE backend whose runner records every command: a refusal must come with
exit code 2 and an empty record. Then hypothesis throws random strings at the grammar.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaf.gate.gate import DENIED, OK, REFUSED, Gate, GateLog, handle
from vaf.gate.grammar import MAX_COMMAND, JoinRequest, Refused, parse
from vaf.gate.identity import HostsFileResolver
from vaf.host.runner import Runner
from vaf.lab.torque import TorqueLab

# Appended to (or put inside) an otherwise valid request: each must break it.
PAYLOADS = [
    ";", "; id", ";id", "&& id", "&&id", "|| id", "| id", "|id", "&", "& id", "$(id)", "`id`",
    "${IFS}id", "$IFS", "> /tmp/x", ">x", "< /etc/shadow", "<x", "\nid", "\n", "\r", "\r\n",
    "\0", "\0id", "\t", "\tid", "'", "'x'", '"', '"x"', "\\", "\\n", "*", "?", "[a]", "{a,b}",
    "~root", "#", "# c", "!", "!!", "%", "^", "=", "+", "@", "(", ")", "\x1b[2J", "\x7f", "\x0b",
    "\x0c", " ", "  ", "а", "Ｗ", "２", "\u00a0", "\u200b", "\u2028", "\ufeff", "é", "\udcff",
]
TEMPLATES = ["join w1{p} 2 cloud", "join w1 2{p} cloud", "join w1 2 cloud{p}", "{p}join w1 2",
             "join{p} w1 2"]
GENERATED = sorted({t.format(p=p) for t in TEMPLATES for p in PAYLOADS})

HAND_WRITTEN = [
    # empty, whitespace, other programs
    "", " ", "\t", "\n", "join", "join ", "join w1", "join w1 ", "join  w1 2", "join w1  2",
    " join w1 2", "join w1 2 ", "JOIN w1 2", "Join w1 2", "add-node w1 2", "join-node w1 2",
    "sh", "bash -i", "/bin/sh -c id", "exec sh", "scp -t /tmp", "scp -f /etc/shadow",
    "rsync --server -e.Lsfx . /", "git-upload-pack 'repo'", "internal-sftp", "true",
    "vaf gate serve", "python3 -c 'import os'", "join w1 2; join w2 2", "join w1 2\njoin w2 2",
    # extra words and wrong arity
    "join w1 2 cloud extra", "join w1 2 cloud small", "join w1 w2 2", "join 2 w1",
    "join w1 2 3", "join w1 cloud 2",
    # bad cpus
    "join w1 0", "join w1 01", "join w1 -1", "join w1 +1", "join w1 1.5", "join w1 1e3",
    "join w1 0x10", "join w1 99999", "join w1 4097", "join w1 9999", "join w1 ", "join w1 two",
    "join w1 ２", "join w1 ٣", "join w1 ⁴",
    # bad host names
    "join W1 2", "join -w1 2", "join --help 2", "join -c 2", "join w1- 2", "join w1. 2",
    "join .w1 2", "join w1..vaf 2", "join w_1 2", "join w*1 2", "join w/1 2", "join ../w1 2",
    "join 1w 2", "join 10.0.0.5 2", "join 127.0.0.1 2", "join 10.0.0.5/24 2", "join ::1 2",
    "join [::1] 2", "join fd00::5 2", "join 0x7f000001 2", "join 2130706433 2",
    "join localhost 2", "join localhost.localdomain 2", "join localhost.vaf 2",
    "join " + "a" * 64 + " 2", "join " + ".".join(["a" * 63] * 4) + " 2",
    "join wаrker 2", "join wοrker 2", "join ｗ1 2", "join w1\u200b 2", "join xn--w1 2x",
    "join w1@evil 2", "join root@w1 2", "join w1:22 2", "join w1=x 2", "join w1,w2 2",
    # qmgr and Slurm injection through any field
    "join w1,managers+=root@evil 2", "join w1 2,managers+=root@evil",
    "join w1 2 x,managers+=root@evil", 'join w1 2 x"',
    'join w1 2 x",np=99', "join w1 np=1 2", "join w1 2 np=1", "join w1 2 np=1,properties=x",
    'join w1 2 properties="x"', "join w1 2 properties=x", "join w1 2 x properties=y",
    "join w1 2 State=DRAIN", "join w1 2 Feature=x", "join w1 2 x&y", "join w1 2 x|y",
    "join w1 2 x[1-2]", "join w1 2 X", "join w1 2 1x", "join w1 2 -x", "join w1 2 _x",
    "join w1 2 x,", "join w1 2 ,x", "join w1 2 x,,y", "join w1 2 " + "p" * 33,
    "join w1 2 " + ",".join(f"p{i}" for i in range(17)),
    "join w1 2 create node evil", "join w1 2 -c", "join w1 2 --", "-- join w1 2",
    # over-long
    "join w1 2 " + "x" * 2000, "join " + "a" * (MAX_COMMAND + 1), "j" * 100_000,
]
HOSTILE = sorted(set(GENERATED) | set(HAND_WRITTEN))


def test_the_table_is_big_enough():
    assert len(HOSTILE) >= 200


@pytest.fixture
def recorded(tmp_path):
    """A gate whose resolver knows w1 and whose TORQUE backend records every command."""
    lab = TorqueLab(tmp_path)
    lab.add_host("10.0.0.5", "w1", "w1.vaf")
    lab.add_host("10.0.0.6", "w2")
    calls: list[tuple] = []
    backend = lab.torque(Runner().observed_by(lambda host, argv: calls.append(argv)))
    logged: list[tuple[int, str]] = []
    log = GateLog((lambda priority, message: logged.append((priority, message)),))
    gate = Gate(backend, HostsFileResolver(str(lab.hosts)),
                allowed_properties=frozenset({"cloud"}), lock_dir=str(tmp_path / "locks"))
    return gate, log, calls, logged


@pytest.mark.parametrize("command", HOSTILE)
def test_hostile_command_is_refused_and_nothing_runs(recorded, command):
    gate, log, calls, logged = recorded
    environ = {"SSH_ORIGINAL_COMMAND": command, "SSH_CONNECTION": "10.0.0.5 50000 10.0.0.1 22"}
    code, line = handle(environ, gate, log)
    assert (code, calls) == (REFUSED, [])
    assert line.startswith("vaf-gate: refused: ") and "\n" not in line
    # logged before deciding, then the refusal; control characters never reach the log raw
    assert [m.split(":")[0] for _, m in logged] == ["request from '10.0.0.5'",
                                                   "refused from '10.0.0.5'"]
    assert all(ch.isprintable() for _, m in logged for ch in m)


@pytest.mark.parametrize(("command", "connection", "why"), [
    ("join w2 2", "10.0.0.5 50000 10.0.0.1 22", "w2 resolves to 10.0.0.6"),
    ("join ghost 2", "10.0.0.5 50000 10.0.0.1 22", "ghost does not resolve"),
    ("join w1 2", "10.0.0.6 50000 10.0.0.1 22", "w1 resolves to 10.0.0.5"),
    ("join w1 2", None, "no usable SSH_CONNECTION"),
    ("join w1 2", "garbage", "no usable SSH_CONNECTION"),
    ("join w1 2", "w1 50000 10.0.0.1 22", "no valid client address"),
])
def test_a_name_bound_to_another_address_is_denied_and_nothing_runs(recorded, command,
                                                                    connection, why):
    gate, log, calls, _ = recorded
    environ = {"SSH_ORIGINAL_COMMAND": command}
    if connection is not None:
        environ["SSH_CONNECTION"] = connection
    code, line = handle(environ, gate, log)
    assert (code, calls) == (DENIED, [])
    assert why in line


def test_a_valid_request_runs_exactly_one_qmgr_and_is_idempotent(recorded, tmp_path):
    gate, log, calls, logged = recorded
    environ = {"SSH_ORIGINAL_COMMAND": "join w1 2 cloud",
               "SSH_CONNECTION": "10.0.0.5 50000 10.0.0.1 22"}
    assert handle(environ, gate, log) == (OK, "vaf-gate: joined w1")
    assert handle(environ, gate, log) == (OK, "vaf-gate: already present: w1")
    torque = gate.backend
    assert calls == [(*torque.pbsnodes, "-x"),
                     (*torque.qmgr, "-c", 'create node w1 np=2,properties="cloud"')] * 2
    assert (tmp_path / "server_priv" / "nodes").read_text() == "w1 np=2 cloud\n"
    assert logged[-1][1] == "torque: w1 (10.0.0.5) already present"


# --- property-based fuzzing -------------------------------------------------------------

NEAR_MISS_ALPHABET = "join w1.-2 ,a_z09;$`'\"\n\r\t\0=+@|&()<>\\аＷ２\u00a0"


@settings(max_examples=1500, deadline=None, database=None)
@given(st.one_of(st.text(max_size=80), st.text(alphabet=NEAR_MISS_ALPHABET, max_size=40),
                 st.builds(lambda a, b: "join " + a + " " + b,
                           st.text(alphabet=NEAR_MISS_ALPHABET, max_size=20),
                           st.text(alphabet=NEAR_MISS_ALPHABET, max_size=20))))
def test_random_strings_are_refused_or_exactly_a_valid_request(command):
    try:
        request = parse(command)
    except Refused:
        return
    assert request.command() == command
    assert JoinRequest(request.hostname, request.cpus, request.properties) == request
    assert command.isascii() and command.isprintable()


LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTNAMES = st.builds(lambda first, rest: ".".join([first, *rest]),
                      st.from_regex(r"[a-z](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
                      .filter(lambda n: n != "localhost"),
                      st.lists(LABEL, max_size=4))
REQUESTS = st.builds(JoinRequest, HOSTNAMES, st.integers(1, 4096),
                     st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True),
                              max_size=16).map(tuple))


@settings(max_examples=300, deadline=None, database=None)
@given(REQUESTS)
def test_every_valid_request_round_trips(request):
    assert parse(request.command()) == request
