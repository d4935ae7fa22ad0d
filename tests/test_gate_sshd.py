"""End to end: a real sshd, the real authorized_keys line, the gate as forced command.

Workers are played by this machine connecting from different loopback addresses
(``ssh -b 127.0.0.x``); the gate's resolver reads a hosts file the test owns (HOSTS_FILE in
gate.conf), so /etc/hosts is never edited. TORQUE is the stand-in qmgr; Slurm is the real
22.05 from Debian (munge, slurmctld, slurmd started here without systemd).
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vaf.gate.gate import slurm_backend
from vaf.guest.worker import Worker, settings_from_context
from vaf.host.runner import Runner
from vaf.lab import slurm as slurm_support
from vaf.lab import sshd as sshd_support
from vaf.lab.daemons import wait_for
from vaf.lab.torque import TorqueLab

REPO = Path(__file__).resolve().parent.parent
HOSTS = "127.0.0.1 vafw1\n127.0.0.3 vafw3\n"

pytestmark = pytest.mark.skipif(not sshd_support.available(),
                                reason="needs openssh-server (scripts/deps/apt-context.txt)")


@pytest.fixture(scope="module")
def sshd():
    server = sshd_support.Sshd(Path(tempfile.mkdtemp(prefix="vaf-sshd-"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def join_key(sshd):
    return sshd_support.make_client_key(Runner(), sshd.dir)


class Head:
    """The head node's side of one test: gate.conf, hosts file, the key line in sshd."""

    def __init__(self, sshd, join_key: Path, directory: Path, settings: dict[str, str],
                 sources: tuple[str, ...] = ("127.0.0.0/8",)):
        self.sshd, self.key, self.dir = sshd, join_key, directory
        self.hosts = directory / "hosts"
        self.hosts.write_text(HOSTS)
        self.log_file = directory / "gate.log"
        self.conf = directory / "gate.conf"
        lines = [f"HOSTS_FILE={self.hosts}", f"LOG_FILE={self.log_file}", "TIMEOUT=30",
                 f"LOCK_DIR={directory / 'locks'}", "ALLOWED_PROPERTIES=cloud"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in settings.items()]
        self.conf.write_text("\n".join(lines) + "\n")
        self.line = self.admin_line(sources)
        sshd.authorize(self.line)

    def admin_line(self, sources) -> str:
        """What the admin pastes: printed by ``vaf gate authorized-keys``."""
        program = shlex.join(["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "vaf.gate"])
        argv = [sys.executable, "-m", "vaf.gate", "authorized-keys", "--key",
                f"{self.key}.pub", "--config", str(self.conf), "--program", program]
        for source in sources:
            argv += ["--from", source]
        return Runner().output(argv)

    def ssh(self, command: str, source: str = "127.0.0.1"):
        argv = ["ssh", "-F", "none", "-i", str(self.key), "-p", str(self.sshd.port),
                "-l", "root", "-b", source, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-T", "--", "127.0.0.1", command]
        return Runner().run(argv, check=False, timeout=60)

    def gate_log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


def guest(head: Head, root: Path, hostname: str = "vafw1", batch: str = "torque",
          observed: list | None = None) -> Worker:
    """The guest's real join step (real ssh) from a sample context."""
    host_key = " ".join(head.sshd.host_public_key)
    settings = settings_from_context({
        "SET_HOSTNAME": hostname, "VAF_HEAD": "127.0.0.1", "VAF_HEAD_PORT": str(head.sshd.port),
        "VAF_HEAD_USER": "root", "VAF_HEAD_HOST_KEY": host_key, "VAF_CPUS": "2",
        "VAF_PROPERTIES": "cloud", "VAF_BATCH": batch,
        "VAF_JOIN_KEY_BASE64": base64.b64encode(head.key.read_bytes()).decode()})
    seen = observed if observed is not None else []
    runner = Runner().observed_by(lambda host, argv: seen.append(argv))
    return Worker(settings, root, runner, log=lambda message: None, sleep=lambda s: None)


# --- TORQUE stand-in ------------------------------------------------------------------

@pytest.fixture
def torque(sshd, join_key, tmp_path):
    lab = TorqueLab(tmp_path / "torque")
    head = Head(sshd, join_key, tmp_path, {"BACKEND": "torque", "QMGR": shlex.join(lab.qmgr),
                                           "PBSNODES": shlex.join(lab.pbsnodes)})
    lab.hosts.write_text(head.hosts.read_text())  # the server resolves as the gate does
    head.lab = lab
    head.nodes = lab.nodes_file
    head.calls = Path(lab.home) / "calls.jsonl"
    return head


def test_the_key_line_is_restricted_and_forced(torque):
    assert torque.line.startswith('restrict,from="127.0.0.0/8",command="env PYTHONPATH=')
    assert f"serve --config {torque.conf}\" ssh-ed25519 " in torque.line


def test_guest_joins_torque_over_ssh_once(torque, tmp_path):
    observed: list = []
    worker = guest(torque, tmp_path / "root", observed=observed)
    worker.join()
    assert torque.nodes.read_text() == "vafw1 np=2 cloud\n"
    assert [argv[0] for argv in observed] == ["ssh"]
    worker.join()  # a second boot: the marker says done, no ssh at all
    assert len(observed) == 1
    (tmp_path / "root/var/lib/vaf/joined").unlink()
    worker.join()  # marker lost: the gate finds the node and says so, still success
    assert torque.nodes.read_text() == "vafw1 np=2 cloud\n"
    calls = [json.loads(line) for line in torque.calls.read_text().splitlines()]
    assert calls == [["pbsnodes", "-x"],
                     ["qmgr", "-c", 'create node vafw1 np=2,properties="cloud"']] * 2
    assert "torque: vafw1 (127.0.0.1) already present" in torque.gate_log()


def test_a_name_bound_to_another_address_is_refused(torque):
    denied = torque.ssh("join vafw3 2")
    assert denied.returncode == 3
    assert denied.stderr.strip() == ("vaf-gate: denied: vafw3 resolves to 127.0.0.3, "
                                     "not to the connecting address 127.0.0.1")
    assert not torque.nodes.exists() and torque.calls.read_text() == ""
    # the same name from its own address is fine
    allowed = torque.ssh("join vafw3 2", source="127.0.0.3")
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "vaf-gate: joined vafw3")


@pytest.mark.parametrize("command", [
    "join vafw1 2; touch {canary}", "join vafw1 2 $(touch {canary})", "touch {canary}",
    "join vafw1 2 `touch {canary}`", "join vafw1 2\ntouch {canary}", "sh -c 'touch {canary}'",
    "join vafw1 2 x,managers+=root@evil", "join vafw1 np=1 2", "", "join vafw1 ２",
])
def test_hostile_commands_over_real_ssh_run_nothing(torque, tmp_path, command):
    canary = tmp_path / "canary"
    result = torque.ssh(command.format(canary=canary))
    assert result.returncode == 2
    assert result.stderr.startswith("vaf-gate: refused: ")
    assert not canary.exists() and torque.calls.read_text() == ""
    assert "refused from '127.0.0.1'" in torque.gate_log()


def test_from_pattern_keeps_other_addresses_out(sshd, join_key, tmp_path):
    head = Head(sshd, join_key, tmp_path, {"BACKEND": "torque"}, sources=("127.0.0.1",))
    result = head.ssh("join vafw3 2", source="127.0.0.3")
    assert result.returncode == 255 and "Permission denied" in result.stderr
    assert head.gate_log() == ""


def test_no_shell_and_no_forwarding_for_the_key(torque):
    # a pty request and a port forward are refused by `restrict`; the gate still decides
    result = Runner().run(["ssh", "-F", "none", "-i", str(torque.key), "-p",
                           str(torque.sshd.port), "-l", "root", "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "ExitOnForwardFailure=yes", "-L", "0:127.0.0.1:22",
                           "127.0.0.1", "join vafw1 2"], check=False, timeout=60)
    assert result.returncode == 255
    assert torque.calls.read_text() == ""


def test_an_alias_of_the_address_is_denied_over_ssh(torque):
    torque.lab.add_host("127.0.0.6", "vafw6", "vafw6-alias")
    torque.hosts.write_text(torque.lab.hosts.read_text())
    assert torque.ssh("join vafw6 2", source="127.0.0.6").returncode == 0
    alias = torque.ssh("join vafw6-alias 2", source="127.0.0.6")
    assert (alias.returncode, alias.stderr.strip()) == (
        3, "vaf-gate: denied: vafw6-alias is an alias: the name of 127.0.0.6 is vafw6 "
           "(one address, one node)")
    assert torque.nodes.read_text() == "vafw6 np=2\n"


def test_worker_claims_beyond_the_admins_limits_are_refused_over_ssh(torque):
    for command in ("join vafw1 65", "join vafw1 2 gpu"):
        result = torque.ssh(command)
        assert result.returncode == 2 and result.stderr.startswith("vaf-gate: refused: ")
    assert torque.calls.read_text() == ""


def test_a_flood_from_one_address_runs_one_join(torque):
    """Concurrent joins from one address: one reaches the (slow) server, the others are
    refused at once instead of queueing on qmgr."""
    torque.lab.slow(3)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: torque.ssh("join vafw1 2"), range(4)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 6, 6, 6]
    busy = [r.stderr.strip() for r in results if r.returncode == 6]
    assert set(busy) == {"vaf-gate: busy: another join from 127.0.0.1 is in progress; "
                         "retry later"}
    assert [c[0] for c in torque.lab.calls()] == ["pbsnodes", "qmgr"]


# --- real Slurm -----------------------------------------------------------------------

def slurm_settings(cluster) -> dict[str, str]:
    sinfo = ["env", f"SLURM_CONF={cluster.conf}", "sinfo"]
    return {"BACKEND": "slurm", "SCONTROL": shlex.join(cluster.scontrol),
            "SINFO": shlex.join(sinfo)}


@pytest.fixture(scope="module")
def slurm():
    if not slurm_support.available():
        pytest.skip("needs slurmctld, slurmd, munge (scripts/deps/apt-context.txt)")
    if not hasattr(slurm_backend(Runner(), ("scontrol",), 1.0, ("sinfo",)), "nodes"):
        pytest.skip("the gate lists nodes before adding one: needs the Slurm adapter with "
                    "nodes() (SlurmQueue, sinfo --json, from the elastic branch)")
    cluster = slurm_support.Slurm().start()
    yield cluster
    cluster.stop()


def test_guest_joins_real_slurm_and_the_node_shows_in_sinfo(slurm, sshd, join_key, tmp_path):
    head = Head(sshd, join_key, tmp_path, slurm_settings(slurm))
    assert slurm.node_state("vafw1") == ""
    worker = guest(head, tmp_path / "root", batch="slurm")
    worker.join()
    assert slurm.node_state("vafw1") == "idle~"  # created, waiting for its slurmd
    # the worker then starts its batch client: slurmd -Z -N vafw1 claims the node
    slurm.start_slurmd("vafw1", "127.0.0.1", 2, "cloud")
    wait_for(lambda: slurm.node_state("vafw1") == "idle", "vafw1 idle in sinfo")
    # a rerun without the marker: the gate reports the node as present, nothing changes
    (tmp_path / "root/var/lib/vaf/joined").unlink()
    worker.join()
    assert "slurm: vafw1 (127.0.0.1) already present" in head.gate_log()
    assert slurm.node_state("vafw1") == "idle"


def test_slurm_refuses_another_machines_name(slurm, sshd, join_key, tmp_path):
    head = Head(sshd, join_key, tmp_path, slurm_settings(slurm))
    assert head.ssh("join vafw3 2").returncode == 3
    assert slurm.node_state("vafw3") == ""


def test_a_recreated_worker_moves_its_slurm_node_to_the_new_address(slurm, sshd, join_key,
                                                                    tmp_path):
    head = Head(sshd, join_key, tmp_path, slurm_settings(slurm))
    head.hosts.write_text("127.0.0.1 vafw1\n127.0.0.4 vafw4\n")
    assert head.ssh("join vafw4 1").returncode == 3  # not from 127.0.0.1
    assert head.ssh("join vafw4 1", source="127.0.0.4").returncode == 0
    head.hosts.write_text("127.0.0.5 vafw4\n")  # the VM was re-created elsewhere
    moved = head.ssh("join vafw4 1", source="127.0.0.5")
    assert (moved.returncode, moved.stdout.strip()) == (0, "vaf-gate: already present: vafw4")
    shown = Runner().output([*slurm.scontrol, "show", "node", "vafw4"])
    assert "NodeAddr=127.0.0.5 " in shown
    assert "already present, address 127.0.0.4 -> 127.0.0.5" in head.gate_log()
