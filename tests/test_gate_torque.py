"""The TORQUE stand-in reproduces the documented qmgr behaviour; the backends and the
gate's outer shell (config, exit codes, output streams) are checked against it."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vaf.batch.base import ADDED, PRESENT, BatchFailed
from vaf.batch.slurm import Slurm
from vaf.batch.torque import Torque
from vaf.cli import main as vaf_main
from vaf.gate.gate import node_request, serve
from vaf.gate.grammar import JoinRequest
from vaf.host.runner import Runner
from vaf.lab.torque import TorqueLab

ADDRESS = ipaddress.ip_address("10.0.0.5")


@pytest.fixture
def lab(tmp_path):
    lab = TorqueLab(tmp_path / "torque")
    lab.add_host("10.0.0.5", "w1")
    lab.add_host("10.0.0.6", "w2", "w2.vaf")
    return lab


@pytest.fixture
def server(lab):
    def run(*args, stdin=""):
        done = subprocess.run(lab.qmgr + list(args), input=stdin, capture_output=True,
                              text=True)
        return done.returncode, done.stdout, done.stderr

    run.qmgr = lab.qmgr
    run.lab = lab
    run.nodes = lab.nodes_file
    run.logs = Path(lab.home) / "server_logs"
    return run


def server_log(server) -> list[list[str]]:
    """(event, object type, object name, message) of each server_logs line."""
    return [line.split(";", 5)[1:2] + line.split(";", 5)[3:]
            for log in server.logs.iterdir() for line in log.read_text().splitlines()]


def syntax_error(directive: str, column: int) -> str:
    return f"{directive}\n{' ' * column}^\nqmgr: Syntax error - cannot locate attribute\n"


LONG_NAME = "w" * 81  # longer than PBS_MAXNODENAME: a real server still creates it

# (qmgr arguments, exit code, stderr, server_priv/nodes afterwards), batch-systems facts
QMGR_TABLE = [
    (["-c", "create node w1 np=2"], 0, "", "w1 np=2\n"),
    (["-c", 'create node w1 np=1,properties="cloud,small"'], 0, "", "w1 cloud small\n"),
    (["-c", 'create node w1 np=2,properties="cloud,small"'], 0, "", "w1 np=2 cloud small\n"),
    (["-c", "create node w1"], 0, "", "w1\n"),
    (["-c", "create node w1 np=2 properties=x"], 2,
     syntax_error("create node w1 np=2 properties=x", 20), None),
    (["-c", "create node w1,managers+=root@evil np=1"], 2,
     syntax_error("create node w1,managers+=root@evil np=1", 23), None),
    (["-c", "create node ghost1 np=1"], 2, "qmgr obj=ghost1 svr=default: Unknown node \n", None),
    (["-c", "create node w1 np=1,bogus=1"], 2,
     "qmgr obj=w1 svr=default: Undefined attribute  bogus\n", None),
    (["-c", "create node w1 np=0"], 2,
     "qmgr obj=w1 svr=default: Illegal attribute or resource value for\n", None),
    (["-c", "create node w2 np=1", "-c", "create node w1 np=3"], 0, "", "w1 np=3\n"),
    (["-c", "delete node nosuch"], 2, "qmgr obj=nosuch svr=default: Unknown node \n", None),
    (["-c", "delete node ghost1"], 2, "qmgr obj=ghost1 svr=default: Unknown node \n", None),
    (["-c", f"create node {LONG_NAME}"], 0, "", f"{LONG_NAME}\n"),
]


@pytest.mark.parametrize(("args", "code", "stderr", "nodes"), QMGR_TABLE)
def test_stand_in_reproduces_documented_qmgr(server, args, code, stderr, nodes):
    if LONG_NAME in args[-1]:
        server.lab.add_host("10.0.0.9", LONG_NAME)
    assert server(*args)[::2] == (code, stderr)
    assert (server.nodes.read_text() if server.nodes.exists() else None) == nodes


def test_syntax_errors_never_reach_the_server(server):
    assert server("-c", "create node w1,managers+=root@evil np=1")[0] == 2
    assert server("-c", "create node w1 np=2 properties=x")[0] == 2
    assert list(server.logs.iterdir()) == []


def test_stand_in_duplicate_and_server_log(server):
    assert server("-c", "create node w1 np=2")[0] == 0
    assert server("-c", "create node w1 np=2") == (
        2, "", "qmgr obj=w1 svr=default: Node name already exists\n")
    assert server_log(server) == [
        ["04", "node", "w1", "attributes set: np = 2"],
        ["128", "Req", "req_reject", "Reject reply code=15068(Node name already "
         "exists), aux=0, type=Manager, from root@localhost"]]


def test_unknown_node_is_logged_as_the_server_does(server):
    assert server("-c", "create node ghost1 np=1")[0] == 2
    assert server_log(server) == [
        ["01", "Svr", "PBS_Server", "LOG_ERROR::Unknown node  (15064) in "
         "process_host_name_part, host ghost1 not found"],
        ["128", "Req", "req_reject", "Reject reply code=15064(Unknown node ), aux=0, "
         "type=Manager, from root@localhost"]]


def test_a_node_without_attributes_logs_no_attribute_line(server):
    assert server("-c", "create node w1")[0] == 0
    assert server_log(server) == []


def test_stand_in_reads_directives_from_stdin(server):
    code, out, _ = server(stdin="create node w1 np=1\ncreate node w2 np=4\n")
    assert (code, out) == (0, "Max open servers: 9\n")
    assert server.nodes.read_text() == "w1\nw2 np=4\n"


def test_print_node_as_a_real_server(server):
    server.lab.add_host("10.0.0.7", "tw-a")
    assert server("-c", 'create node tw-a np=2,properties="cloud,small"')[0] == 0
    assert server("-c", "print node tw-a")[1].splitlines() == [
        "create node tw-a", "set node tw-a state = down", "set node tw-a state += offline",
        "set node tw-a state += MOM-list-not-sent", "set node tw-a np = 2",
        "set node tw-a properties = cloud", "set node tw-a properties += small",
        "set node tw-a ntype = cluster"]
    assert server("-c", "print node nosuch") == (
        2, "", "qmgr obj=nosuch svr=default: Unknown node  MSG=cannot locate specified node\n")
    assert [line[1] for line in server_log(server)] == ["node", "node"]  # no reject logged
    assert server("-c", "list node")[0] == 0


def test_node_states_new_restarted_reporting(server):
    assert server("-c", "create node w1 np=2")[0] == 0
    torque = server.lab.torque()
    states = []
    for step in (lambda: None, server.lab.restart, lambda: server.lab.mom_up("w1"),
                 lambda: server.lab.mom_down("w1")):
        step()
        states.append(server("-c", "list node")[1].splitlines()[1].split(" = ")[1])
    assert states == ["down,offline,MOM-list-not-sent", "down", "free", "down"]
    server.lab.restart()
    assert server.nodes.read_text() == "w1 np=2\n"  # nodes survive a restart
    assert [node.name for node in torque.nodes()] == ["w1"]


@pytest.mark.parametrize(("managers", "allowed"), [
    (("root@localhost",), True),
    (("root@head",), False),  # the head's own name is not how a local client is named
    (("vafgate@localhost",), False),
])
def test_only_managers_change_nodes(tmp_path, managers, allowed):
    lab = TorqueLab(tmp_path / "torque", managers=managers)
    lab.add_host("10.0.0.5", "w1")
    done = subprocess.run(lab.qmgr + ["-c", "create node w1 np=1"], capture_output=True,
                          text=True)
    if allowed:
        assert (done.returncode, lab.nodes_file.read_text()) == (0, "w1\n")
    else:
        assert (done.returncode, done.stderr) == (2, "qmgr obj=w1 svr=default: Unauthorized "
                                                  "Request  MSG=error in permissions "
                                                  "(PERM_MANAGER)\n")
        assert not lab.nodes_file.exists()


def test_managers_are_set_with_qmgr(server):
    assert server("-c", "set server managers += vafgate@localhost")[0] == 0
    assert server("-c", "print server")[1] == (
        "set server managers = root@localhost\nset server managers += vafgate@localhost\n")
    assert server_log(server) == [
        ["04", "Svr", "PBS_Server", "attributes set:  at request of root@localhost"],
        ["04", "Svr", "PBS_Server", "attributes set: managers += vafgate@localhost"]]


def test_a_stopped_server(server):
    server.lab.stop()
    assert server("-c", "create node w1 np=1") == (
        3, "", "Unable to communicate with head(127.0.0.1)\n"
               "Cannot connect to specified server host 'head'.\n"
               "qmgr: cannot connect to server  (errno=111) Connection refused\n")
    with pytest.raises(BatchFailed, match="cannot connect to server"):
        server.lab.torque().add_node(node_request(JoinRequest("w1", 1), ADDRESS))
    with pytest.raises(BatchFailed, match="cannot connect to server"):
        server.lab.torque().nodes()


def test_torque_backend_adds_then_reports_present(server):
    backend = Torque(Runner(), server.qmgr)
    request = JoinRequest("w1", 2, ("cloud",))
    assert backend.add_node(node_request(request, ADDRESS)) == ADDED
    assert backend.add_node(node_request(request, ADDRESS)) == PRESENT
    assert server.nodes.read_text() == "w1 np=2 cloud\n"


@pytest.mark.parametrize(("qmgr", "reason"), [
    (None, "ghost does not resolve on the TORQUE server"),
    (["/nonexistent/qmgr"], "qmgr is not installed"),
    ([sys.executable, "-c", "import time; time.sleep(30)"], "did not finish within 1 s"),
    ([sys.executable, "-c", "import sys; sys.exit('qmgr: cannot connect to server')"],
     "cannot connect to server"),
])
def test_torque_backend_failures_are_batch_failures(server, qmgr, reason):
    backend = Torque(Runner(), qmgr or server.qmgr, timeout=1)
    with pytest.raises(BatchFailed) as err:
        backend.add_node(node_request(JoinRequest("ghost", 1), ADDRESS))
    assert reason in err.value.reason and err.value.exit_code == 4


def test_slurm_backend_failure_when_the_controller_is_down():
    script = "import sys; sys.exit('slurm_load_node error: Unable to contact slurm controller')"
    backend = Slurm(Runner(), [sys.executable, "-c", script], timeout=5)
    with pytest.raises(BatchFailed, match="Unable to contact slurm controller"):
        backend.add_node(node_request(JoinRequest("w1", 1), ADDRESS))


def _serve(tmp_path, config: str, command: str, source: str = "10.0.0.5"):
    conf = tmp_path / "gate.conf"
    conf.write_text(config)
    out: list = []
    code = serve(str(conf), {"SSH_ORIGINAL_COMMAND": command,
                             "SSH_CONNECTION": f"{source} 4000 10.0.0.1 22"},
                 lambda c, line: out.append(line))
    return code, out


def test_serve_end_to_end_in_process(server, tmp_path):
    config = (f"BACKEND=torque\nQMGR='{' '.join(server.qmgr)}'\n"
              f"PBSNODES='{' '.join(server.lab.pbsnodes)}'\nLOCK_DIR={tmp_path / 'locks'}\n"
              f"HOSTS_FILE={server.lab.hosts}\nLOG_FILE={tmp_path / 'gate.log'}\n")
    assert _serve(tmp_path, config, "join w1 2") == (0, ["vaf-gate: joined w1"])
    assert _serve(tmp_path, config, "join w1 2") == (0, ["vaf-gate: already present: w1"])
    assert _serve(tmp_path, config, "join w1 2;id")[0] == 2
    assert _serve(tmp_path, config, "join w2 2")[0] == 3
    log = (tmp_path / "gate.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in log[-2:]] == [
        "request from '10.0.0.5': 'join w2 2'",
        "denied from '10.0.0.5': w2 resolves to 10.0.0.6, not to the connecting address 10.0.0.5"]


@pytest.mark.parametrize(("config", "reason"), [
    ("BACKEND=condor\n", "BACKEND"),
    ("TIMEOUT=soon\n", "TIMEOUT"),
    ("HOSTS_FILE=/nonexistent/hosts\n", "HOSTS_FILE"),
    ("QMGR='unbalanced\n", "No closing quotation"),
])
def test_serve_misconfigured_is_exit_5_and_runs_nothing(tmp_path, config, reason):
    code, out = _serve(tmp_path, config, "join w1 2")
    assert code == 5 and out[0].startswith("vaf-gate: misconfigured: ") and reason in out[0]


def test_vaf_cli_has_the_gate():
    result = CliRunner().invoke(vaf_main, ["gate", "--help"])
    assert result.exit_code == 0 and "authorized-keys" in result.output


def test_exit_codes_agree_between_errors_gate_and_guest():
    from vaf.gate import gate
    from vaf.gate.grammar import Refused
    from vaf.gate.identity import Denied
    from vaf.guest import worker
    assert (Refused.exit_code, Denied.exit_code, BatchFailed.exit_code) == (
        gate.REFUSED, gate.DENIED, gate.BATCH_FAILED) == (2, 3, 4)
    assert (worker.GATE_REFUSED, worker.GATE_DENIED) == (gate.REFUSED, gate.DENIED)
