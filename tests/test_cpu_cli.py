"""``vaf cpu squeeze|release|status`` against a canned oned (``onevm`` stand-in printing XML in
oned's format) and hosts reached through an ssh stand-in that runs the remote line with
``sh -c`` on this machine, where real stand-in qemu processes run."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.cpu_onevm import CannedVm, write_cloud
from vaf.cli import main
from vaf.lab.kvm_standins import CGROUP_V1_CPU, Hypervisor, read_int, thread_nices, v1_cpu_available

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
ATLAS_1 = "<BATCH_CLUSTER><![CDATA[atlas-1]]></BATCH_CLUSTER>"
CLOUD = [
    CannedVm(7, "batch", "atlas", "node1", user_template=ATLAS_1),
    CannedVm(8, "batch", "atlas", "node2", user_template=ATLAS_1),
    CannedVm(9, "alice", "proof", "node1", uid=5, gid=101,
             user_template="<CPU_PRIORITY><![CDATA[interactive]]></CPU_PRIORITY>"),
    CannedVm(10, "batch", "atlas", "node1", state=8, lcm_state=0, user_template=ATLAS_1),
    CannedVm(11, "batch", "atlas", "node2", user_template=ATLAS_1),  # oned thinks it runs
    CannedVm(12, "batch", "atlas", "node1",
             user_template="<BATCH_CLUSTER><![CDATA[atlas-2]]></BATCH_CLUSTER>"),
]


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """Stand-ins for VMs 7, 8, 9, 12 (7 in its own cgroup when possible), the conf, the log."""
    hv = Hypervisor(str(tmp_path / "hv"))
    data = tmp_path / "oned"
    data.mkdir()
    write_cloud(str(data), CLOUD)
    conf = tmp_path / "cpu-priority.conf"
    python = shlex.quote(sys.executable)
    conf.write_text(
        f'ONEVM="{python} {SUPPORT}/cpu_onevm.py {data}"\n'
        f'SSH="{python} {SUPPORT}/login_shell_ssh.py"\n'
        f'SUDO="env"\nPYTHON={python}\nHOST_REMOTES={REPO}/remotes\n'
        f"PRIVILEGED={hv.privileged}\n")
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    mount = CGROUP_V1_CPU if v1_cpu_available() else None
    vms = {7: hv.start(7, cgroup=mount), 8: hv.start(8), 9: hv.start(9), 12: hv.start(12)}
    yield conf, vms, tmp_path / "ssh.log", data
    hv.close()


def vaf(conf: Path, *args: str):
    command, rest = args[0], args[1:]
    return CliRunner().invoke(main, ["cpu", command, "--conf", str(conf), *rest])


def nice_of(vm) -> set[int]:
    return set(thread_nices(vm.pid).values())


def test_squeeze_a_users_cluster_on_every_host_at_once(cloud):
    conf, vms, ssh_log, _ = cloud
    done = vaf(conf, "squeeze", "--user", "batch")
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert "    10  -             skipped: not active (state 8)" in lines
    assert any(line.startswith("     7  node1         applied: class batch, nice 19 on 4 "
                               "threads") for line in lines)
    assert "    11  node2         skipped: not running on this host" in lines
    assert sorted(ssh_log.read_text().split()) == ["node1", "node2"]  # one call per host
    assert nice_of(vms[7]) == nice_of(vms[8]) == nice_of(vms[12]) == {19}
    assert nice_of(vms[9]) == {0}
    if vms[7].cgroup:
        assert read_int(os.path.join(vms[7].cgroup, "cpu.shares")) == 102


def test_status_then_release_by_template_attribute(cloud):
    conf, vms, _, _ = cloud
    assert vaf(conf, "status").output == "no VM has a CPU priority set by vaf\n"
    assert vaf(conf, "squeeze", "--user", "batch").exit_code == 0
    again = vaf(conf, "squeeze", "--group", "atlas")  # idempotent
    assert again.exit_code == 0 and nice_of(vms[7]) == {19}
    status = vaf(conf, "status", "--json")
    assert status.exit_code == 0, status.output
    squeezed = {(r["vmid"], r["host"], r["status"]) for r in json.loads(status.output)}
    assert squeezed == {(7, "node1", "squeezed"), (12, "node1", "squeezed"),
                        (8, "node2", "squeezed")}
    released = vaf(conf, "release", "--attr", "BATCH_CLUSTER=atlas-1")
    assert released.exit_code == 0, released.output
    assert "     7  node1         restored: original priority, nice 0 on 4 threads" \
        in released.output
    assert nice_of(vms[7]) == nice_of(vms[8]) == {0}
    assert nice_of(vms[12]) == {19}  # atlas-2 stays squeezed
    if vms[7].cgroup:
        assert read_int(os.path.join(vms[7].cgroup, "cpu.shares")) == 1024
    left = json.loads(vaf(conf, "status", "--json").output)
    assert [(r["vmid"], r["status"]) for r in left] == [(12, "squeezed")]


def test_an_unreachable_host_fails_alone(cloud):
    conf, vms, _, data = cloud
    write_cloud(str(data), CLOUD + [CannedVm(13, "batch", "atlas", "down")])
    done = vaf(conf, "squeeze", "--user", "batch", "--class", "normal")
    assert done.exit_code == 1
    python = os.path.basename(sys.executable)  # the conf's PYTHON (python3, or a venv's python)
    assert (f"     -  down          failed: cannot run {python} on down: ssh failed: ssh: "
            "connect to host down port 22: No route to host") in done.output.splitlines()
    assert nice_of(vms[7]) == {0} and "applied: class normal" in done.output


def test_vm_ids_and_errors(cloud):
    conf, vms, _, _ = cloud
    done = vaf(conf, "squeeze", "9", "404")
    assert done.exit_code == 0 and nice_of(vms[9]) == {19}
    assert "   404  -             skipped: no such VM in the selection" in done.output
    nothing = vaf(conf, "squeeze")
    assert nothing.exit_code == 2 and "refusing to act on every VM" in nothing.output
    bad = vaf(conf, "squeeze", "--class", "turbo", "9")
    assert bad.exit_code == 1
    assert "vaf cpu: --class must be one of interactive, normal, batch, got 'turbo'" \
        in bad.output
    bad_attr = vaf(conf, "release", "--attr", "NOEQUALS")
    assert bad_attr.exit_code == 2 and "expected KEY=VALUE" in bad_attr.output


def test_onevm_failure_is_one_clear_line(cloud, tmp_path):
    conf, _, _, _ = cloud
    conf.write_text(conf.read_text() + f'ONEVM="{sys.executable} -c exit(3)"\n')
    done = vaf(conf, "status", "--user", "batch")
    assert done.exit_code == 1
    assert done.output.startswith("vaf cpu: python")
