"""CPU priority on the host, with real processes, real threads and real cgroups.

Every value is read back from /proc (each thread's nice) and from the cgroup files; nothing is
mocked. The stand-ins are multi-threaded processes whose command line looks like qemu's.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from vaf.errors import ConfigError
from vaf.host import cpu, proc
from vaf.host.runner import Result, Runner
from vaf.lab.kvm_standins import (
    CGROUP_V1_CPU,
    CGROUP_V2,
    Hypervisor,
    cpu_ticks,
    read_int,
    thread_nices,
    v1_cpu_available,
    v2_available,
)

needs_v1 = pytest.mark.skipif(not v1_cpu_available(), reason="needs root and cgroup v1 cpu")
needs_v2 = pytest.mark.skipif(not v2_available(), reason="needs root and a cgroup2 mount")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="lowering nice needs root")

BATCH = cpu.Priority("batch", 19, "10%")
INTERACTIVE = cpu.Priority("interactive", -5, "200%")


@pytest.fixture
def hypervisor(tmp_path):
    hv = Hypervisor(str(tmp_path))
    yield hv
    hv.close()


@pytest.fixture
def host(hypervisor):
    return cpu.Host(state_dir=hypervisor.state_dir, pid_dir=hypervisor.pid_dir)


def shares(standin) -> int:
    return read_int(os.path.join(standin.cgroup, "cpu.shares"))


# --- pure parts: table-driven ---------------------------------------------------------------

@pytest.mark.parametrize("shares_value, weight", [
    (1024, 100), (2, 1), (102, 10), (2048, 200), (4096, 400), (262144, 10000), (512, 50),
])
def test_shares_to_weight_keeps_the_kernel_scheduler_weight(shares_value, weight):
    assert cpu.shares_to_weight(shares_value) == weight


@pytest.mark.parametrize("weight, shares_value", [
    (100, 1024), (1, 10), (10, 102), (200, 2048), (10000, 102400), (50, 512),
])
def test_weight_to_shares(weight, shares_value):
    assert cpu.weight_to_shares(weight) == shares_value


@pytest.mark.parametrize("spec, version, original, expected", [
    ("10%", 1, 1024, 102), ("10%", 2, 100, 10), ("200%", 1, 1536, 3072),
    ("0.1%", 1, 1024, 2),  # clamped to the v1 minimum
    ("50000%", 2, 100, 10000),  # clamped to the v2 maximum
    ("512", 1, 1024, 512), ("512", 2, 100, 50),  # libvirt cpu_shares, converted on v2
    ("1000000", 1, 1024, 262144), ("", 1, 1024, None),
])
def test_target_weight(spec, version, original, expected):
    assert cpu.Priority("x", 0, spec).target_weight(version, original) == expected


@pytest.mark.parametrize("nice, weight", [(20, ""), (-21, ""), (0, "ten"), (0, "-5%"), (0, "5 %")])
def test_bad_priority_is_refused(nice, weight):
    with pytest.raises(ConfigError):
        cpu.Priority("x", nice, weight)


@pytest.mark.parametrize("argv, name", [
    (["qemu-system-x86_64", "-name", "guest=one-7,debug-threads=on"], "one-7"),
    (["/usr/bin/qemu-system-x86_64", "-S", "-name", "one-12"], "one-12"),
    (["/usr/libexec/qemu-kvm", "-name", "debug-threads=on,guest=one-3"], "one-3"),
    (["qemu-system-x86_64", "-drive", "file=/x/guest=one-7,", "-name", "guest=one-8"], "one-8"),
    (["python3", "-name", "guest=one-7"], None),
    (["qemu-system-x86_64", "-name"], None),
    ([], None),
])
def test_qemu_guest_name(argv, name):
    assert proc.qemu_guest_name(argv) == name


# --- nice and cgroup v1 weight on real processes --------------------------------------------

@needs_v1
def test_squeeze_reaches_every_thread_and_the_v1_weight(hypervisor, host):
    vm = hypervisor.start(7, threads=4, cgroup=CGROUP_V1_CPU)
    result = cpu.apply(7, BATCH, "squeeze", host)
    nices = thread_nices(vm.pid)
    assert len(nices) == 5 and set(nices.values()) == {19}
    assert shares(vm) == 102  # 10 % of the default 1024
    assert result["status"] == "applied" and result["threads"] == 5
    assert result["weight"] == {"file": os.path.join(vm.cgroup, "cpu.shares"), "value": 102}


@needs_v1
def test_second_squeeze_is_idempotent_and_keeps_the_originals(hypervisor, host):
    vm = hypervisor.start(7, cgroup=CGROUP_V1_CPU)
    cpu.apply(7, BATCH, "squeeze", host)
    saved = host.store.load(7)
    cpu.apply(7, BATCH, "squeeze", host)
    assert host.store.load(7) == saved
    assert set(thread_nices(vm.pid).values()) == {19}
    assert shares(vm) == 102  # 10 % of the original, not of the squeezed value
    cpu.release(7, host)
    assert set(thread_nices(vm.pid).values()) == {0} and shares(vm) == 1024


@needs_v1
@needs_root
def test_release_restores_the_exact_previous_values(hypervisor, host):
    vm = hypervisor.start(7, threads=3, cgroup=CGROUP_V1_CPU)
    tids = sorted(thread_nices(vm.pid))
    for offset, tid in enumerate(tids):  # uneven values, as an admin's manual renice leaves
        os.setpriority(os.PRIO_PROCESS, tid, offset - 2)
    with open(os.path.join(vm.cgroup, "cpu.shares"), "w") as handle:
        handle.write("1536")  # OpenNebula's CPU=1.5
    before = thread_nices(vm.pid)
    cpu.apply(7, BATCH, "squeeze", host)
    assert set(thread_nices(vm.pid).values()) == {19} and shares(vm) == 154
    result = cpu.release(7, host)
    assert thread_nices(vm.pid) == before
    assert shares(vm) == 1536
    assert result["status"] == "restored"
    assert not os.path.exists(host.store.path(7))


@needs_v1
@needs_root
def test_release_goes_back_to_the_deploy_class(hypervisor, host):
    vm = hypervisor.start(7, cgroup=CGROUP_V1_CPU)
    cpu.apply(7, INTERACTIVE, "deploy", host)
    assert set(thread_nices(vm.pid).values()) == {-5} and shares(vm) == 2048
    cpu.apply(7, BATCH, "squeeze", host)
    assert set(thread_nices(vm.pid).values()) == {19} and shares(vm) == 102
    assert cpu.status(7, host)["status"] == "squeezed"
    cpu.apply(7, INTERACTIVE, "deploy", host)  # the hook again (hotplug -> RUNNING)
    assert set(thread_nices(vm.pid).values()) == {19}  # the squeeze stays in force
    result = cpu.release(7, host)
    assert result["class"] == "interactive"
    assert set(thread_nices(vm.pid).values()) == {-5} and shares(vm) == 2048
    assert cpu.status(7, host)["status"] == "classified"


@needs_v1
def test_a_class_without_weight_means_the_original_weight(hypervisor, host):
    vm = hypervisor.start(7, cgroup=CGROUP_V1_CPU)
    cpu.apply(7, cpu.Priority("quiet", 10), "deploy", host)  # nice only
    cpu.apply(7, BATCH, "squeeze", host)
    assert shares(vm) == 102
    result = cpu.release(7, host)
    assert result["class"] == "quiet" and shares(vm) == 1024
    assert set(thread_nices(vm.pid).values()) == {10}


def test_a_thread_out_of_line_is_caught_by_the_next_squeeze(hypervisor, host):
    vm = hypervisor.start(7, threads=2)
    cpu.apply(7, BATCH, "squeeze", host)
    # New threads inherit the nice of the thread that creates them, so one created by a
    # thread reniced by someone else would differ: the next squeeze must reach it.
    tid = sorted(thread_nices(vm.pid))[-1]
    os.setpriority(os.PRIO_PROCESS, tid, 5)
    cpu.apply(7, BATCH, "squeeze", host)
    assert set(thread_nices(vm.pid).values()) == {19}


def test_found_without_a_pid_file(hypervisor, host):
    vm = hypervisor.start(9, pid_file=False)
    assert proc.find_domain_pid("one-9", hypervisor.pid_dir) == vm.pid
    assert cpu.apply(9, BATCH, "squeeze", host)["pid"] == vm.pid


def test_stale_pid_file_naming_another_process_is_not_trusted(hypervisor, host):
    os.makedirs(hypervisor.pid_dir)
    with open(os.path.join(hypervisor.pid_dir, "one-11.pid"), "w") as handle:
        handle.write(str(os.getpid()))  # pytest itself: not qemu, must not be reniced
    before = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert cpu.apply(11, BATCH, "squeeze", host)["status"] == "gone"
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == before


def test_vanished_vm_is_skipped(hypervisor, host):
    vm = hypervisor.start(7)
    cpu.apply(7, BATCH, "squeeze", host)
    hypervisor.stop(vm)
    result = cpu.release(7, host)
    assert result["status"] == "gone"
    assert "not running" in result["notes"][0]
    assert not os.path.exists(host.store.path(7))  # nothing left to restore
    assert cpu.apply(7, BATCH, "squeeze", host)["status"] == "gone"


def test_state_of_an_earlier_qemu_process_is_dropped(hypervisor, host):
    first = hypervisor.start(7)
    cpu.apply(7, BATCH, "squeeze", host)
    hypervisor.stop(first)
    second = hypervisor.start(7)  # VM powered off and resumed: a new process, nice 0
    result = cpu.apply(7, BATCH, "squeeze", host)
    assert any("earlier qemu process" in note for note in result["notes"])
    assert host.store.load(7).pid == second.pid
    assert host.store.load(7).nice_default == 0


@needs_v1
def test_shared_cgroup_weight_is_left_alone(hypervisor, host):
    vm = hypervisor.start(7, cgroup=CGROUP_V1_CPU)
    other = hypervisor.start(8, cgroup=None)
    with open(os.path.join(vm.cgroup, "emulator", "cgroup.procs"), "w") as handle:
        handle.write(str(other.pid))
    result = cpu.apply(7, BATCH, "squeeze", host)
    assert shares(vm) == 1024 and "weight" not in result
    assert any("shared with other processes" in note for note in result["notes"])
    assert set(thread_nices(vm.pid).values()) == {19}


# --- cgroup v2 ------------------------------------------------------------------------------

@needs_v2
def test_v2_cgroup_without_cpu_controller_falls_back_to_nice(hypervisor, host, tmp_path):
    """On this machine the cpu controller is bound to the v1 hierarchy, so no cgroup2 tree
    can have cpu.weight. The stand-in sits in a real cgroup2 directory; a view of /proc that
    shows only the cgroup2 mount (what a pure-v2 host without the cpu controller looks like)
    must find that directory and fall back to nice."""
    vm = hypervisor.start(7, cgroup=CGROUP_V2)
    with open(f"/proc/{vm.pid}/cgroup") as handle:
        v2_line = next(line for line in handle if line.startswith("0::"))
    assert v2_line.strip() == f"0::/{os.path.relpath(vm.cgroup, CGROUP_V2)}/emulator"
    if os.path.exists(os.path.join(vm.cgroup, "cpu.weight")):
        pytest.skip("this host has a cgroup2 cpu controller")
    view = tmp_path / "proc"
    (view / "self").mkdir(parents=True)
    (view / str(vm.pid)).mkdir()
    with open("/proc/self/mountinfo") as handle:
        (view / "self" / "mountinfo").write_text(
            "".join(line for line in handle if " - cgroup2 " in line))
    (view / str(vm.pid) / "cgroup").write_text(v2_line)
    found, why = cpu.domain_cgroup(vm.pid, str(view))
    assert found is None
    assert why == f"cgroup v2 {vm.cgroup} has no cpu controller (cpu.weight)"
    # With the real /proc of this hybrid host: cpu is on v1, where the VM is in the root cgroup.
    result = cpu.apply(7, BATCH, "squeeze", host)
    assert set(thread_nices(vm.pid).values()) == {19}
    assert "weight" not in result and any("no CPU weight" in n for n in result["notes"])
    assert cpu.release(7, host)["status"] == "restored"
    assert set(thread_nices(vm.pid).values()) == {0}


def test_v2_paths_are_resolved_against_the_mount_root(tmp_path):
    """Path logic only (a directory laid out like a cgroup2 mount with a nested mount root, as
    inside a container); the real-cgroup v2 weight is covered on the test hypervisor."""
    proc_root, mount = tmp_path / "proc", tmp_path / "cg"
    domain = mount / "machine.slice" / "machine-qemu\\x2d7\\x2done\\x2d7.scope"
    (domain / "libvirt" / "emulator").mkdir(parents=True)
    (domain / "cpu.weight").write_text("1024\n")  # libvirt writes cpu_shares verbatim
    (domain / "libvirt" / "emulator" / "cgroup.procs").write_text("4242\n")
    (proc_root / "self").mkdir(parents=True)
    (proc_root / "4242").mkdir()
    (proc_root / "self" / "mountinfo").write_text(
        f"41 31 0:38 /host.slice {mount} rw,relatime - cgroup2 cgroup2 rw\n")
    (proc_root / "4242" / "cgroup").write_text(
        "0::/host.slice/machine.slice/machine-qemu\\x2d7\\x2done\\x2d7.scope/libvirt/emulator\n")
    found, why = cpu.domain_cgroup(4242, str(proc_root))
    assert why == ""
    assert found == cpu.CpuCgroup(2, str(domain))  # the scope: what virsh schedinfo changes
    assert found.read() == 1024


# --- vaf-privileged, the one program the drivers run as root ---------------------------------

def privileged(hypervisor, verb: str, request) -> Result:
    text = request if isinstance(request, str) else json.dumps(request)
    return Runner().run([hypervisor.privileged, verb], input=text, check=False)


@needs_v1
def test_privileged_reports_json_and_skips_a_missing_vm(hypervisor):
    vm = hypervisor.start(7, cgroup=CGROUP_V1_CPU)
    squeeze = {"layer": "squeeze", "label": "batch", "nice": 19, "weight": "10%"}
    out = privileged(hypervisor, "cpu-apply", {**squeeze, "vmids": [7, 404]}).stdout
    vms = {v["vmid"]: v for v in json.loads(out)["vms"]}
    assert vms[7]["status"] == "applied" and vms[404]["status"] == "gone"
    status = json.loads(privileged(hypervisor, "cpu-status", {"vmids": []}).stdout)["vms"]
    assert [(v["vmid"], v["status"], v["thread_nice"]) for v in status] == [
        (7, "squeezed", {"19": 4})]
    assert shares(vm) == 102
    bad = privileged(hypervisor, "cpu-apply", {**squeeze, "nice": 40, "vmids": [7]})
    assert bad.returncode == 2 and "nice must be between" in bad.stderr
    assert set(thread_nices(vm.pid).values()) == {19}  # nothing half-done


@pytest.mark.parametrize("argv, sent, reason", [
    (["cpu-apply", "--state-dir=/tmp"], {}, "usage: vaf-privileged"),
    (["cpu-frob"], {}, "usage: vaf-privileged"),
    (["cpu-release"], "{not json", "request is not valid JSON"),
    (["cpu-release"], {"vmids": ["7"]}, "vmids must be a list of non-negative VM ids"),
    (["cpu-release"], {"vmids": [-1]}, "vmids must be a list of non-negative VM ids"),
    (["cpu-apply"], {"layer": "deploy", "label": "../x", "nice": 1, "vmids": [7]},
     "label must be a class name"),
    (["cpu-apply"], {"layer": "root", "label": "batch", "nice": 1, "vmids": [7]},
     "layer must be one of deploy, squeeze"),
])
def test_privileged_refuses_bad_input_in_one_line(hypervisor, argv, sent, reason):
    vm = hypervisor.start(7)
    text = sent if isinstance(sent, str) else json.dumps(sent)
    done = Runner().run([hypervisor.privileged, *argv], input=text, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(reason) and len(done.stderr.splitlines()) == 1
    assert set(thread_nices(vm.pid).values()) == {0}
    assert not os.path.exists(hypervisor.state_dir)


def test_privileged_takes_its_paths_from_its_own_conf_not_the_environment(hypervisor,
                                                                        monkeypatch):
    hypervisor.start(7)
    monkeypatch.setenv("STATE_DIR", "/tmp/elsewhere")
    done = privileged(hypervisor, "cpu-apply", {"layer": "squeeze", "label": "batch",
                                                "nice": 5, "vmids": [7]})
    assert done.returncode == 0, done.stderr
    assert "7.json" in os.listdir(hypervisor.state_dir)
    assert not os.path.exists("/tmp/elsewhere")


def test_a_corrupt_state_file_fails_that_vm_only(hypervisor):
    hypervisor.start(7)
    vm8 = hypervisor.start(8)
    os.makedirs(hypervisor.state_dir)
    with open(os.path.join(hypervisor.state_dir, "7.json"), "w") as handle:
        handle.write("{not json")
    done = privileged(hypervisor, "cpu-release", {"vmids": [7, 8]})
    assert done.returncode == 1
    vms = {v["vmid"]: v for v in json.loads(done.stdout)["vms"]}
    assert vms[7]["status"] == "error" and "not a vaf CPU state file" in vms[7]["reason"]
    assert vms[8]["status"] == "untouched"
    assert set(thread_nices(vm8.pid).values()) == {0}


# --- the effect -----------------------------------------------------------------------------

def _share_of(squeezed, other, seconds: float = 2.0) -> float:
    """squeezed's CPU time as a fraction of other's over the same window (from /proc)."""
    a0, b0 = cpu_ticks(squeezed.pid), cpu_ticks(other.pid)
    time.sleep(seconds)
    return (cpu_ticks(squeezed.pid) - a0) / max(1, cpu_ticks(other.pid) - b0)


@pytest.mark.slow
@pytest.mark.parametrize("cgroups", [
    pytest.param(True, marks=needs_v1, id="own-cgroups-weight"),
    pytest.param(False, id="no-cgroup-autogroup-nice"),
])
def test_squeezed_vm_gets_clearly_less_cpu(hypervisor, host, cgroups):
    core = sorted(os.sched_getaffinity(0))[-1]
    mount = CGROUP_V1_CPU if cgroups else None
    batch = hypervisor.start(7, threads=1, busy=True, cgroup=mount, cpu=core)
    interactive = hypervisor.start(8, threads=1, busy=True, cgroup=mount, cpu=core)
    time.sleep(0.3)
    baseline = _share_of(batch, interactive)
    cpu.apply(7, BATCH, "squeeze", host)
    squeezed = _share_of(batch, interactive)
    cpu.release(7, host)
    released = _share_of(batch, interactive)
    print(f"batch/interactive CPU: baseline {baseline:.2f}, squeezed {squeezed:.3f}, "
          f"released {released:.2f}")
    assert 0.5 < baseline < 2.0  # equal competitors before
    assert squeezed < 0.3 * baseline  # 10 % weight / nice 19: far less than the other
    assert released > 3 * squeezed
