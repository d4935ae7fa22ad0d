"""cgroup v2 for real, end to end: ``vaf cpu`` over real ssh to the test hypervisor.

This machine binds the cpu controller to its cgroup v1 hierarchy, so no cgroup2 tree here can
have ``cpu.weight``. The test hypervisor's guest mounts no cgroups at all, so there a cgroup2
mount gets the cpu controller: libvirt's v2 layout (``<domain>/emulator``) is built, stand-in
qemu processes run in it, and the admin command squeezes and releases them through ssh and
``sudo -n``, exactly as on a hypervisor. The effect is measured there too.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.cpu_onevm import CannedVm, write_cloud
from vaf.cli import main
from vaf.lab.kvm_standins import STANDIN_BODY

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
DEST = "/var/tmp/vaf-cpu-test"  # the guest's remotes-like tree for this test
CGROUP = "/sys/fs/cgroup"
BASE = f"{CGROUP}/vaf-cpu-test"

# Runs in the guest: join the cgroup, write libvirt's pid file, become the stand-in qemu.
LAUNCHER = f"""
import os, sys
vmid, busy, cpu, pid_dir, cgroup = sys.argv[1:6]
os.sched_setaffinity(0, {{int(cpu)}})
with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
    handle.write(str(os.getpid()))
os.makedirs(pid_dir, exist_ok=True)
with open(os.path.join(pid_dir, "one-%s.pid" % vmid), "w") as handle:
    handle.write("%d\\n" % os.getpid())
os.execv(sys.executable, ["qemu-system-x86_64", "-c", {STANDIN_BODY!r}, "-name",
         "guest=one-%s,debug-threads=on" % vmid, "-threads", "2", "-busy", busy])
"""

# Runs in the guest: {pid: {"nice": [...], "ticks": utime+stime}} read from /proc.
PROBE = """
import json, os, sys
out = {}
for pid in sys.argv[1:]:
    nices, ticks = [], 0
    for tid in os.listdir("/proc/%s/task" % pid):
        text = open("/proc/%s/task/%s/stat" % (pid, tid)).read()
        fields = text[text.rindex(")") + 2:].split()
        nices.append(int(fields[16]))
    text = open("/proc/%s/stat" % pid).read()
    fields = text[text.rindex(")") + 2:].split()
    out[pid] = {"nice": sorted(set(nices)), "ticks": int(fields[11]) + int(fields[12])}
print(json.dumps(out))
"""


def domain(vmid: int) -> str:
    """libvirt's v2 layout under systemd: the machine scope, libvirt's own child inside."""
    return f"{BASE}/machine-qemu\\x2d{vmid}\\x2done\\x2d{vmid}.scope"


def emulator(vmid: int) -> str:
    return f"{domain(vmid)}/libvirt/emulator"


@pytest.fixture
def guest(testbed, tmp_path):
    """Package + launcher in the guest, a cgroup2 mount with the cpu controller, two busy
    stand-ins (VMs 7 and 8) pinned to one vCPU in their own domain cgroups."""
    stage = tmp_path / "stage"
    shutil.copytree(REPO / "vaf", stage / "vaf" / "lib" / "vaf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "remotes" / "vaf" / "host-command", stage / "vaf" / "host-command")
    # the privileged entry point as installed on hosts (its conf names this test's dirs)
    (stage / "privileged").mkdir()
    shutil.copy(REPO / "share" / "privileged" / "vaf-privileged", stage / "privileged")
    (stage / "privileged" / "lib").symlink_to("../vaf/lib")
    (stage / "privileged" / "privileged.conf").write_text(
        f"STATE_DIR=/run/vaf-cpu-test\nPID_DIR={DEST}/run/libvirt/qemu\n")
    (stage / "launcher.py").write_text(LAUNCHER)
    (stage / "probe.py").write_text(PROBE)
    testbed.sync_remotes(stage, DEST)
    testbed.ssh(f"set -e; mountpoint -q {CGROUP} || mount -t cgroup2 cgroup2 {CGROUP}; "
                f"echo +cpu > {CGROUP}/cgroup.subtree_control; mkdir -p {BASE}; "
                f"echo +cpu > {BASE}/cgroup.subtree_control; "
                f"mkdir -p {shlex.quote(emulator(7))} {shlex.quote(emulator(8))}")
    pids = {}
    try:
        for vmid in (7, 8):
            args = shlex.join([f"{DEST}/launcher.py", str(vmid), "1", "1",
                               f"{DEST}/run/libvirt/qemu", emulator(vmid)])
            testbed.ssh(f"setsid python3 {args} </dev/null >{DEST}/{vmid}.log 2>&1 &")
        for vmid in (7, 8):
            pids[vmid] = _wait_for_threads(testbed, vmid, 3)
        yield testbed, pids
    finally:
        if pids:
            testbed.ssh(["kill", "-9", *map(str, pids.values())], check=False)
        dirs = [emulator(7), emulator(8), f"{domain(7)}/libvirt", f"{domain(8)}/libvirt",
                domain(7), domain(8), BASE]
        testbed.ssh(f"sleep 0.5; rmdir {shlex.join(dirs)}", check=False)


def _wait_for_threads(testbed, vmid: int, count: int) -> int:
    pid_file = f"{DEST}/run/libvirt/qemu/one-{vmid}.pid"
    for _ in range(50):
        done = testbed.ssh(f"cat {pid_file} && ls /proc/$(cat {pid_file})/task "
                           f"|| cat {DEST}/{vmid}.log", check=False)
        lines = done.stdout.split()
        if done.returncode == 0 and len(lines) - 1 >= count:  # the pid, then the tids
            return int(lines[0])
        time.sleep(0.2)
    raise AssertionError(f"stand-in for VM {vmid} did not start in the guest: "
                         f"{done.stdout} {done.stderr}")


def probe(testbed, pids: dict[int, int]) -> dict[int, dict]:
    out = testbed.ssh(["python3", f"{DEST}/probe.py", *map(str, pids.values())]).stdout
    by_pid = json.loads(out)
    return {vmid: by_pid[str(pid)] for vmid, pid in pids.items()}


def weight(testbed, vmid: int) -> int:
    return int(testbed.ssh(["cat", f"{domain(vmid)}/cpu.weight"]).stdout)


def share_of_7(testbed, pids, seconds: float = 3.0) -> float:
    before = probe(testbed, pids)
    time.sleep(seconds)
    after = probe(testbed, pids)
    return ((after[7]["ticks"] - before[7]["ticks"])
            / max(1, after[8]["ticks"] - before[8]["ticks"]))


def test_squeeze_and_release_over_ssh_with_cgroup_v2_weight(guest, tmp_path):
    testbed, pids = guest
    data = tmp_path / "oned"
    data.mkdir()
    write_cloud(str(data), [CannedVm(7, "batch", "atlas", "testhv"),
                            CannedVm(8, "alice", "proof", "testhv")])
    conf = tmp_path / "cpu-priority.conf"
    conf.write_text(
        f'ONEVM="{shlex.quote(sys.executable)} {SUPPORT}/cpu_onevm.py {data}"\n'
        f'SSH="ssh -F {testbed.ssh_config} -l oneadmin"\nSUDO="sudo -n"\nPYTHON=python3\n'
        f"HOST_REMOTES={DEST}\nPRIVILEGED={DEST}/privileged/vaf-privileged\n")

    def vaf(*args: str):
        done = CliRunner().invoke(main, ["cpu", args[0], "--conf", str(conf), *args[1:]])
        assert done.exit_code == 0, done.output
        return done.output

    baseline = share_of_7(testbed, pids)
    out = vaf("squeeze", "--user", "batch")
    assert "     7  testhv        applied: class batch, nice 19 on 3 threads, cpu.weight 10" \
        in out
    assert weight(testbed, 7) == 10 and weight(testbed, 8) == 100  # 10 % of the v2 default
    assert probe(testbed, pids)[7]["nice"] == [19] and probe(testbed, pids)[8]["nice"] == [0]
    squeezed = share_of_7(testbed, pids)
    status = json.loads(vaf("status", "--json"))
    assert [(r["vmid"], r["status"], r["weight"]["value"]) for r in status] == [
        (7, "squeezed", 10)]
    vaf("release", "--user", "batch")
    assert weight(testbed, 7) == 100 and probe(testbed, pids)[7]["nice"] == [0]
    print(f"guest, cgroup v2: VM 7 / VM 8 CPU: baseline {baseline:.2f}, squeezed {squeezed:.3f}")
    assert 0.5 < baseline < 2.0
    assert squeezed < 0.3 * baseline
