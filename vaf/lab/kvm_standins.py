"""Stand-ins for KVM VMs: real multi-threaded processes whose command line looks like qemu's
(for the CPU priority tests and the demo: what the CPU driver finds, reads and renices).

Each stand-in is a Python interpreter exec'd with ``argv[0] = qemu-system-x86_64`` and
libvirt's ``-name guest=one-<vmid>,debug-threads=on``, runs a few extra threads (idle or
CPU-bound, like vCPUs), gets a pid file in a private ``libvirt/qemu`` directory and, when
asked, its own cgroup laid out like libvirt's (``<domain cgroup>/emulator``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the tree

CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"
#: where the CPU class is applied after deploy: the VNM post.d program and the RUNNING hook
CPU_ENTRY_POINTS = ("vnm/bridge/post.d/vaf-cpu-priority", "hooks/cpu-priority/vaf-cpu-priority")
CGROUP_V2 = "/sys/fs/cgroup/unified"

# The stand-in's body: start THREADS threads (busy loops or sleepers), then say "ready".
STANDIN_BODY = """
import sys, threading, time
args = sys.argv[1:]
threads, busy = int(args[args.index('-threads') + 1]), args[args.index('-busy') + 1] == '1'
def spin():
    while True:
        pass
def idle():
    while True:
        time.sleep(3600)
for _ in range(threads):
    threading.Thread(target=spin if busy else idle, daemon=True).start()
print('ready', flush=True)
(spin if busy else idle)()
"""


def v1_cpu_available() -> bool:
    return os.path.exists(os.path.join(CGROUP_V1_CPU, "cpu.shares")) and os.geteuid() == 0


def v2_available() -> bool:
    return os.path.exists(os.path.join(CGROUP_V2, "cgroup.procs")) and os.geteuid() == 0


@dataclass
class StandIn:
    vmid: int
    process: subprocess.Popen
    cgroup: str | None = None  # the domain cgroup (parent of emulator/)

    @property
    def pid(self) -> int:
        return self.process.pid


def _plain_priority() -> None:
    """Start stand-ins at nice 0 like libvirt's qemu, whatever the test runner's own nice is
    (oned's drivers run at nice 19; a CI job may be niced too)."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)


@dataclass
class Hypervisor:
    """A private pid dir plus the stand-ins and cgroups it created; ``close`` removes all."""

    root: str
    standins: list[StandIn] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def pid_dir(self) -> str:
        return os.path.join(self.root, "libvirt", "qemu")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def privileged(self) -> str:
        """The privileged entry point installed as on a host (program, its conf naming this
        hypervisor's directories, the package next to it); its path."""
        home = os.path.join(self.root, "usr-lib-vaf")
        program = os.path.join(home, "vaf-privileged")
        if not os.path.exists(program):
            os.makedirs(os.path.join(home, "lib"), exist_ok=True)
            shutil.copy(os.path.join(REPO, "share", "privileged", "vaf-privileged"), program)
            os.symlink(os.path.join(REPO, "vaf"), os.path.join(home, "lib", "vaf"))
            with open(os.path.join(home, "privileged.conf"), "w") as handle:
                handle.write(f"STATE_DIR={self.state_dir}\nPID_DIR={self.pid_dir}\n")
        return program

    def remotes(self, root: str) -> str:
        """A hypervisor's remotes tree (``/var/tmp/one``) for the CPU priority entry points:
        the launcher, this package, both entry points, and the conf naming this hypervisor's
        privileged entry point; its path."""
        for entry in CPU_ENTRY_POINTS:
            os.makedirs(os.path.dirname(os.path.join(root, entry)), exist_ok=True)
            os.symlink(os.readlink(os.path.join(REPO, "remotes", entry)),
                       os.path.join(root, entry))
        os.makedirs(os.path.join(root, "vaf", "lib"), exist_ok=True)
        shutil.copy(os.path.join(REPO, "remotes", "vaf", "dispatch"),
                    os.path.join(root, "vaf", "dispatch"))
        os.symlink(os.path.join(REPO, "vaf"), os.path.join(root, "vaf", "lib", "vaf"))
        conf = os.path.join("etc", "vaf", "cpu-priority.conf")
        os.makedirs(os.path.join(root, "etc", "vaf"), exist_ok=True)
        with open(os.path.join(REPO, "remotes", conf)) as stock, \
                open(os.path.join(root, conf), "w") as handle:
            handle.write(stock.read() + f"PRIVILEGED={self.privileged}\n")
        return root

    def start(self, vmid: int, threads: int = 3, busy: bool = False, cgroup: str | None = None,
              cpu: int | None = None, pid_file: bool = True) -> StandIn:
        """Start the stand-in for VM ``vmid``; ``cgroup`` is a hierarchy mount point."""
        argv = ["qemu-system-x86_64", "-c", STANDIN_BODY, "-name",
                f"guest=one-{vmid},debug-threads=on", "-threads", str(threads),
                "-busy", "1" if busy else "0", "-machine", "pc,accel=kvm"]
        process = subprocess.Popen(argv, executable=sys.executable, stdout=subprocess.PIPE,
                                   start_new_session=True, preexec_fn=_plain_priority)
        standin = StandIn(vmid, process)
        self.standins.append(standin)
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"stand-in for VM {vmid} did not start")
        if cpu is not None:
            for tid in os.listdir(f"/proc/{process.pid}/task"):  # affinity is per thread
                os.sched_setaffinity(int(tid), {cpu})
        if cgroup:
            standin.cgroup = self._cgroup_for(cgroup, vmid)
            leaf = os.path.join(standin.cgroup, "emulator")
            with open(os.path.join(leaf, "cgroup.procs"), "w") as handle:
                handle.write(str(process.pid))  # moves every thread (v1 and v2 alike)
        if pid_file:
            os.makedirs(self.pid_dir, exist_ok=True)
            with open(os.path.join(self.pid_dir, f"one-{vmid}.pid"), "w") as handle:
                handle.write(f"{process.pid}\n")
        return standin

    def _cgroup_for(self, mount: str, vmid: int) -> str:
        # libvirt's v1 layout: machine/qemu-<id>-<name>.libvirt-qemu/{emulator,vcpuN}
        base = os.path.join(mount, f"vaf-test-{self.tag}")
        domain = os.path.join(base, f"qemu-{vmid}-one-{vmid}.libvirt-qemu")
        for path in (base, domain, os.path.join(domain, "emulator")):
            if not os.path.isdir(path):
                os.mkdir(path)
                self.cgroups.append(path)
        return domain

    def stop(self, standin: StandIn) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(standin.pid, signal.SIGKILL)
        standin.process.wait()
        standin.process.stdout.close()

    def close(self) -> None:
        for standin in self.standins:
            if standin.process.returncode is None:
                self.stop(standin)
        for path in reversed(self.cgroups):
            _rmdir_when_empty(path)


def _rmdir_when_empty(path: str) -> None:
    # A killed process leaves its cgroup only once the kernel has finished tearing it down.
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    os.rmdir(path)


def thread_nices(pid: int) -> dict[int, int]:
    """Every thread's nice, read from /proc/<pid>/task/<tid>/stat (field 19)."""
    result = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{name}/stat") as handle:
            text = handle.read()
        result[int(name)] = int(text[text.rindex(")") + 2:].split()[16])
    return result


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def read_int(path: str) -> int:
    with open(path) as handle:
        return int(handle.read().strip())
