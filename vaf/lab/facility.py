"""The whole facility on one machine, for ``scripts/demo`` and its test.

A user submits jobs to real Slurm (:mod:`vaf.lab.slurm`, power saving over ``State=CLOUD``
nodes); the real elastic daemon asks the OpenNebula API stand-in (:mod:`vaf.lab.one_api`)
for workers; each VM's deploy hook runs what oned would on the test hypervisor
(:mod:`vaf.lab.testbed`) through the oned stand-in (:mod:`vaf.lab.oned`): lvmsnap's prolog
(CLONE of the worker image, cold the first time and warm after, MKSWAP, MKIMAGE xfs
scratch, CONTEXT ISO), and the isolation VNM driver's ``post`` for its NIC (a port of a
bridge in a network namespace on this machine), and the CPU priority RUNNING hook for its
class (the worker template says ``CPU_PRIORITY=interactive``; its qemu is a stand-in process
on this machine, beside a long batch VM in class batch). Then the worker joins the batch system
through the gate (a real sshd on 127.0.0.1 whose key line is the one
``vaf gate authorized-keys`` prints; each worker connects from its own loopback address)
and its slurmd starts; the jobs run; idle workers are drained, their VMs terminated (the
epilog: lvmsnap DELETE, the VNM clean) and their nodes powered down. Then the figures of
the seed's table are measured on the same hypervisor.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vaf.guest.context import format_context
from vaf.host.runner import Runner
from vaf.lab import oned
from vaf.lab.elastic_loop import TREE, Loop
from vaf.lab.host_install import install_here
from vaf.lab.kvm_standins import Hypervisor, StandIn, cpu_ticks, thread_nices
from vaf.lab.lvmsnap_env import SYS_DS, LvmsnapEnv, prepare_host
from vaf.lab.netns import BRIDGE, Lab
from vaf.lab.one_api import ACTIVE, LCM_RUNNING, Vm, vm_document
from vaf.lab.sshd import Sshd, make_client_key
from vaf.one.xml import encode_payload

VG = f"vg-one-{SYS_DS}"
FIRST_VMID = 100  # the OpenNebula stand-in's first VM ID
BATCH_VMID = FIRST_VMID - 1  # a long batch VM, there before the workers
WORKER_CLASS = "interactive"  # CPU_PRIORITY of the worker template
CPU_SECONDS = 3.0  # how long two VMs compete for one core in the measurement
SWAP_MB = 512
SCRATCH_GIB = 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COPY = "/var/tmp/demo-image"  # where the seed's scp-then-dd puts the image on the host


class FacilityError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass
class Deploy:
    name: str
    vmid: int
    prolog: float = 0.0  # seconds of the prolog transfer
    started: float = 0.0  # monotonic clock at the prolog's start
    cold: bool = False  # this prolog filled the host's cache
    fill: float = 0.0  # the driver's own "filled cache ... in X s"
    join: float = 0.0  # seconds of the gate call
    joined_at: float = 0.0  # wall clock when the gate said joined


@dataclass
class Facility:
    tb: object  # a started vaf.lab.testbed.Testbed
    work: Path
    workers: int = 4
    image_mb: int = 64
    job_seconds: float = 5.0
    scratch_gib: int = SCRATCH_GIB
    swap_mb: int = SWAP_MB
    say: Callable[[str], None] = print
    deploys: dict[str, Deploy] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.loop: Loop | None = None
        self.sshd: Sshd | None = None
        self.net: Lab | None = None
        self.hv: Hypervisor | None = None
        self.qemus: dict[int, StandIn] = {}

    # --- set-up ----------------------------------------------------------------------

    def start(self) -> Facility:
        started = time.monotonic()
        prepare_host(self.tb, VG)  # the VG, the datastores, what install.sh host installs
        self.env = LvmsnapEnv(self.tb, self.work / "frontend")
        self.image, _ = self.env.image("worker-image", self.image_mb, seed=2014)
        self.say(f"[setup] test hypervisor {self.tb.host}: {VG} on /dev/vdb, worker image "
                 f"{self.image_mb} MiB on the image datastore "
                 f"({time.monotonic() - started:.0f} s)")
        self.loop = Loop(workers=self.workers, max_vms=self.workers, boot_delay=0.0,
                         suspend_time=600, resume_timeout=600,
                         settings={"IDLE_THRESHOLD": "3", "DEPLOY_TIMEOUT": "600",
                                   "POLL_INTERVAL": "0.5"},
                         dir=self.work / "loop", on_deploy=self.deploy,
                         on_undeploy=self.undeploy, first_vmid=FIRST_VMID)
        (self.work / "loop").mkdir()
        self.loop.start()
        self.say(f"[setup] Slurm 22.05 up (power saving over w[1-{self.workers}], "
                 f"State=CLOUD), OpenNebula API stand-in on {self.loop.api.endpoint}")
        self._gate()
        self._network()
        self._cpu()
        self.loop.start_daemon()
        self.say("[setup] vaf-elastic running (power-save mode)")
        return self

    def address(self, name: str) -> str:
        return f"127.0.1.{int(name[1:])}"

    def _gate(self) -> None:
        """sshd on 127.0.0.1 with the admin's key line; gate.conf for this Slurm."""
        gate_dir = self.work / "gate"
        gate_dir.mkdir()
        self.sshd = Sshd(gate_dir / "sshd").start()
        self.join_key = make_client_key(Runner(), self.sshd.dir)
        hosts = gate_dir / "hosts"
        hosts.write_text("".join(f"{self.address(f'w{i}')} w{i}\n"
                                 for i in range(1, self.workers + 1)))
        env = f"env SLURM_CONF={self.loop.slurm.conf}"
        conf = gate_dir / "gate.conf"
        conf.write_text("\n".join([
            "BACKEND=slurm", f"SCONTROL={shlex.quote(env + ' scontrol')}",
            f"SINFO={shlex.quote(env + ' sinfo')}", f"HOSTS_FILE={hosts}",
            f"LOCK_DIR={gate_dir / 'locks'}", f"LOG_FILE={gate_dir / 'gate.log'}",
            "ALLOWED_PROPERTIES=cloud", "MAX_CPUS=1", "TIMEOUT=30"]) + "\n")
        program = shlex.join(["env", f"PYTHONPATH={TREE}", sys.executable, "-m", "vaf.gate"])
        line = Runner().output([sys.executable, "-m", "vaf.gate", "authorized-keys",
                                "--key", f"{self.join_key}.pub", "--config", str(conf),
                                "--program", program, "--from", "127.0.0.0/8"]).strip()
        self.sshd.authorize(line)
        self.say(f"[setup] gate: sshd on 127.0.0.1:{self.sshd.port}, key line "
                 f"{line.split(' ssh-')[0][:60]}...")

    def _network(self) -> None:
        """The workers' bridge in a network namespace, and the isolation VNM driver's tree
        (the launcher of this repo, its conf) as oned syncs it to a hypervisor."""
        self.net = Lab().start()
        backend = "nft" if not self.net.missing_kernel_support("nft") else "ebtables"
        root = self.work / "vnm-remotes"
        driver = root / "vnm" / "vaf_isolation"
        driver.mkdir(parents=True)
        (root / "vaf").symlink_to(Path(TREE) / "remotes" / "vaf")
        for action in ("post", "clean"):
            (driver / action).symlink_to("../../vaf/dispatch")
        conf = root / "etc" / "vnm" / "vaf_isolation" / "vaf_isolation.conf"
        conf.parent.mkdir(parents=True)
        # root's commands through vaf-privileged, laid out as install.sh host does
        privileged = install_here(self.work / "host-install")
        conf.write_text(f"BACKEND={backend}\nVN_MADS=vaf_isolation\nPRIVILEGED={privileged}\n")
        self.vnm_root, self.backend = root, backend
        self.say(f"[setup] workers' bridge {BRIDGE} in network namespace {self.net.host}, "
                 f"isolation backend {backend}")

    def nic(self, name: str, vmid: int) -> tuple[str, str, str]:
        """(tap, MAC, IP) of a worker's one NIC."""
        index = int(name[1:])
        return f"one-{vmid}-0", f"02:00:0a:00:01:{index:02x}", f"10.0.1.{index}"

    def vm_document(self, name: str, vmid: int) -> str:
        tap, mac, ip = self.nic(name, vmid)
        nic = (f"<NIC><NIC_ID>0</NIC_ID><NETWORK_ID>0</NETWORK_ID><VN_MAD>vaf_isolation"
               f"</VN_MAD><BRIDGE>{BRIDGE}</BRIDGE><MAC>{mac}</MAC><TARGET>{tap}</TARGET>"
               f"<IP>{ip}</IP></NIC>")
        return (f"<VM><ID>{vmid}</ID><NAME>{name}</NAME><STATE>3</STATE><LCM_STATE>3"
                f"</LCM_STATE><TEMPLATE>{nic}</TEMPLATE><USER_TEMPLATE/><HISTORY_RECORDS>"
                "<HISTORY><HOSTNAME>node1</HOSTNAME></HISTORY></HISTORY_RECORDS></VM>")

    def vnm(self, action: str, name: str, vmid: int, *args: str):
        """The VNM driver's action as oned runs it on the hypervisor (payload on stdin)."""
        return self.net.run(self.net.host, [str(self.vnm_root / "vnm" / "vaf_isolation" /
                                                action), *args], check=False,
                            input=encode_payload(self.vm_document(name, vmid)) + "\n")

    def _isolate(self, record: Deploy) -> None:
        tap, mac, ip = self.nic(record.name, record.vmid)
        self.net.add_machine(record.name, tap, mac, f"{ip}/16")
        result = self.vnm("post", record.name, record.vmid, "deploy-uuid", "node1")
        if result.returncode != 0:
            raise FacilityError(f"vnm post: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        self.say(f"[deploy] {record.name}: NIC {tap} ({mac}, {ip}) isolated by the VNM "
                 f"post ({self.backend})")

    def _unisolate(self, name: str, vmid: int) -> None:
        result = self.vnm("clean", name, vmid, "node1")
        if result.returncode != 0:
            self.errors.append(f"vnm clean of VM {vmid}: {result.stderr.strip()[-200:]}")
        self.net.remove_port(self.nic(name, vmid)[0])

    def _cpu(self) -> None:
        """The hypervisor's CPU side: a remotes tree with the CPU priority hook (as
        ``onehost sync`` leaves it), the worker template's class, and a long batch VM."""
        self.hv = Hypervisor(str(self.work / "cpu"))
        self.cpu_remotes = self.hv.remotes(str(self.work / "cpu-remotes"))
        oned.write_version_file(self.cpu_remotes)
        self.loop.api.templates[0]["CPU_PRIORITY"] = WORKER_CLASS
        said = self.start_qemu(self._lone_vm(BATCH_VMID, "batch"), busy=False)
        self.say(f"[setup] a long batch VM (VM {BATCH_VMID}) on the hypervisor: {said}")

    def _lone_vm(self, vmid: int, label: str) -> Vm:
        """A running VM of class ``label`` that the elastic daemon does not own."""
        return Vm(vmid, f"{label}-{vmid}", {"CPU": "1", "VCPU": "2"}, {"CPU_PRIORITY": label},
                  state=ACTIVE, lcm_state=LCM_RUNNING)

    def start_qemu(self, vm: Vm, busy: bool, cpu: int | None = None) -> str:
        """Start ``vm``'s qemu (a stand-in), then the RUNNING hook as the hook manager runs
        it; checks every thread got the class's nice; what the hook said."""
        qemu = self.hv.start(vm.id, threads=2, busy=busy, cpu=cpu)
        self.qemus[vm.id] = qemu
        running = replace(vm, state=ACTIVE, lcm_state=LCM_RUNNING)  # as the hook sees it
        done = oned.run_hook("cpu-priority/vaf-cpu-priority", remotes=self.cpu_remotes,
                             template_xml=vm_document(running))
        said = (done.logs or [done.reason or "?"])[0]
        if not done.ok:
            raise FacilityError(f"CPU priority hook of VM {vm.id}: {done.reason}")
        nices = set(thread_nices(qemu.pid).values())
        label = vm.user_template["CPU_PRIORITY"]
        if len(nices) != 1:
            raise FacilityError(f"VM {vm.id}'s threads run at nice {sorted(nices)} after "
                                f"class {label}")
        return said[said.index("CPU priority"):] if "CPU priority" in said else said

    def stop_qemu(self, vmid: int) -> None:
        qemu = self.qemus.pop(vmid, None)
        if qemu is not None:
            self.hv.stop(qemu)

    # --- what oned does for a VM -------------------------------------------------------

    def deploy(self, vm: Vm) -> None:
        """oned's deploy of ``vm``, then the worker's join; raising fails the VM."""
        name = vm.context.get("VAF_NODE") or vm.name
        record = Deploy(name, vm.id)
        with self._lock:
            self.deploys[name] = record
        try:
            self._prolog(vm, record)
            self._isolate(record)
            said = self.start_qemu(vm, busy=False)
            self.say(f"[deploy] {name}: VM {vm.id} running, RUNNING hook: {said}")
            self._join(record)
        except Exception as err:
            self.errors.append(f"{name}: {err}")
            self.say(f"[deploy] {name}: FAILED: {err}")
            raise

    def _prolog(self, vm: Vm, record: Deploy) -> None:
        self.prolog(record, {**vm.context, "SET_HOSTNAME": record.name})
        self.say(f"[deploy] {record.name}: VM {record.vmid} prolog {record.prolog:.1f} s "
                 f"({'cold: filled the cache' if record.cold else 'warm clone'}, swap, "
                 f"XFS scratch {self.scratch_gib} GiB, context ISO)")

    def prolog(self, record: Deploy, context: dict[str, str]) -> None:
        """The transfer file oned writes for a worker's deploy, run as one_tm does."""
        vmid, host, scratch = record.vmid, self.tb.host, self.scratch_gib * 1024
        self.env.vm(vmid, {"DISK_ID": 0}, {"DISK_ID": 1, "TYPE": "swap", "SIZE": self.swap_mb},
                    {"DISK_ID": 2, "TYPE": "fs", "SIZE": scratch, "FS": "xfs"})
        path = self.work / f"context-{vmid}.sh"
        path.write_text(format_context(context))
        record.started = time.monotonic()
        reply = self.env.transfer(
            vmid, self.env.clone_line(self.image, vmid, 0),
            f"MKSWAP lvmsnap {self.swap_mb} {host}:{self.env.disk_path(vmid, 1)} {vmid} "
            f"{SYS_DS}",
            f"MKIMAGE lvmsnap {scratch} raw {host}:{self.env.disk_path(vmid, 2)} {vmid} "
            f"{SYS_DS}",
            f"CONTEXT lvmsnap {path} {host}:{self.env.disk_path(vmid, 3)} {vmid} {SYS_DS}")
        record.prolog = time.monotonic() - record.started
        _ok(reply, f"prolog of VM {vmid}")
        for line in reply.logs:
            if "filled cache from" in line.text:
                record.cold = True
                record.fill = float(line.text.split(" in ")[-1].split(" s ")[0])

    def _join(self, record: Deploy) -> None:
        """The worker's one ssh call to the gate, from its own address."""
        argv = ["ssh", "-F", "none", "-i", str(self.join_key), "-p", str(self.sshd.port),
                "-l", "root", "-b", self.address(record.name), "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-T", "--",
                "127.0.0.1", f"join {record.name} 1 cloud"]
        started = time.monotonic()
        result = Runner().run(argv, check=False, timeout=120)
        record.join = time.monotonic() - started
        said = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise FacilityError(f"gate refused the join (exit {result.returncode}): {said}")
        record.joined_at = time.time()
        self.say(f"[join] {record.name} from {self.address(record.name)}: {said} "
                 f"({record.join:.1f} s); slurmd -N {record.name} starts")

    def undeploy(self, vm: Vm) -> None:
        """The epilog after terminate: every disk of the VM deleted (the cache stays)."""
        name = vm.context.get("VAF_NODE") or vm.name
        self.stop_qemu(vm.id)
        reply = self.epilog(vm.id)
        self._unisolate(name, vm.id)
        if reply.result != "SUCCESS":
            self.errors.append(f"epilog of VM {vm.id}: {reply.reason}")
        self.say(f"[epilog] {name}: VM {vm.id} terminated, its disks deleted, "
                 f"its NIC cleaned ({reply.result})")

    def epilog(self, vmid: int) -> oned.Reply:
        host = self.tb.host
        lines = [f"DELETE lvmsnap {host}:{self.env.disk_path(vmid, d)} {vmid} {SYS_DS}"
                 for d in (0, 1, 2, 3)]
        lines.append(f"DELETE lvmsnap {host}:/var/lib/one/datastores/{SYS_DS}/{vmid} {vmid} "
                     f"{SYS_DS}")
        return self.env.transfer(vmid, *lines)

    # --- the user's part ----------------------------------------------------------------

    def run_jobs(self) -> dict[str, float]:
        """Submit one job per worker; wait for the workers, the jobs, and the shrink."""
        loop = self.loop
        started = time.time()
        loop.submit(self.workers, self.job_seconds)
        self.say(f"[user] sbatch x {self.workers} (one core, {self.job_seconds:g} s each)")
        names = [f"w{i}" for i in range(1, self.workers + 1)]
        loop.wait(lambda: self.errors or all(
            loop.node_states().get(n, "").rstrip("*~#%") in ("allocated", "mixed", "completing",
                                                           "idle")
            and n in self.deploys and self.deploys[n].joined_at for n in names),
            "every worker joined", 600)
        if self.errors:
            raise FacilityError("; ".join(self.errors))
        joined = time.time()
        self.say(f"[slurm] {self.workers} workers joined {joined - started:.1f} s after "
                 "the first sbatch; the jobs run")
        loop.wait(lambda: not loop.queue(), "every job done", 600)
        self.say(f"[slurm] every job done ({time.time() - started:.1f} s)")
        loop.wait(lambda: not loop.api.live(), "workers drained and removed", 600)
        loop.wait(lambda: all(s == "idle~" for s in loop.node_states().values()),
                  "nodes powered down", 120)
        self.say(f"[elastic] idle workers drained, VMs terminated, nodes powered down "
                 f"({time.time() - started:.1f} s)")
        left = [n for n in self.env.lvs() if n.startswith("lv-one-")]
        if left or self.errors:
            raise FacilityError(f"left behind: {left} {self.errors}")
        first_ask = min(at for name, _a, at in loop.api.calls
                        if name == "one.template.instantiate")
        return {"queue_to_request": first_ask - started, "queue_to_joined": joined - started,
                "first_joined": min(d.joined_at for d in self.deploys.values()) - started}

    # --- the seed's table ---------------------------------------------------------------

    def measure(self) -> list[tuple[str, float, float, str]]:
        """(what, ours s, baseline s, ratio), measured now on the same hypervisor."""
        rows = []
        deploys = list(self.deploys.values())
        burst = max(d.started + d.prolog for d in deploys) - min(d.started for d in deploys)
        alone = Deploy("alone", FIRST_VMID + 902)
        self.prolog(alone, {"SET_HOSTNAME": "alone"})
        _ok(self.epilog(alone.vmid), "epilog of the lone prolog")
        self.say(f"[measure] one warm prolog alone: {alone.prolog:.1f} s")
        rows.append((f"{len(deploys)} workers' prologs at once (wall) vs {len(deploys)} x one "
                     "alone", burst, len(deploys) * alone.prolog,
                     f"{len(deploys) * alone.prolog / max(burst, 1e-3):.1f}x"))
        self.env.guest(f"for lv in $(lvs --noheadings -o lv_name {VG} | grep vaf-cache-); "
                       f"do lvremove -qfy {VG}/$lv; done")
        cold, fill = self._clone(FIRST_VMID + 903)
        warm, _ = self._clone(FIRST_VMID + 904)
        seed = self._scp_then_dd()
        self.say(f"[measure] cold clone {cold:.1f} s (fill {fill:.1f} s), warm clone "
                 f"{warm:.1f} s, seed's scp + lvcreate + dd {seed:.1f} s")
        rows.append((f"cold clone ({self.image_mb} MiB image, fills the cache) vs seed's "
                     "scp + lvcreate + dd", cold, seed, f"{seed / max(cold, 1e-3):.1f}x"))
        rows.append(("warm clone (snapshot of the cache) vs the cold clone", warm, cold,
                     f"{cold / max(warm, 1e-3):.1f}x"))
        rows.append(self._cpu_share())
        for gib in (20, 40):
            xfs, ext3 = self._mkimage(gib, "xfs"), self._mkimage(gib, "ext3")
            rows.append((f"XFS scratch {gib} GiB vs ext3 {gib} GiB", xfs, ext3,
                         f"{ext3 / max(xfs, 1e-3):.1f}x"))
        return rows

    def _cpu_share(self) -> tuple[str, float, float, str]:
        """CPU seconds an interactive VM gets on a core it shares with a busy batch VM, with
        the classes applied against without (both in the default class)."""
        got = {}
        for run, (mine, theirs) in {"classes": (WORKER_CLASS, "batch"),
                                    "none": ("normal", "normal")}.items():
            ids = (FIRST_VMID + 905, FIRST_VMID + 906)
            for vmid, label in zip(ids, (mine, theirs), strict=True):
                self.start_qemu(self._lone_vm(vmid, label), busy=True, cpu=0)
            before = cpu_ticks(self.qemus[ids[0]].pid)
            time.sleep(CPU_SECONDS)
            got[run] = (cpu_ticks(self.qemus[ids[0]].pid) - before) / CLOCK_TICKS
            for vmid in ids:
                self.stop_qemu(vmid)
        self.say(f"[measure] an interactive VM's CPU in {CPU_SECONDS:g} s on a core shared "
                 f"with a busy batch VM: {got['classes']:.2f} s with the classes, "
                 f"{got['none']:.2f} s without")
        return (f"interactive VM's CPU seconds in {CPU_SECONDS:g} s on one core shared with a "
                "busy batch VM: classes vs none (more is better)", got["classes"], got["none"],
                f"{got['classes'] / max(got['none'], 1e-3):.1f}x more CPU")

    def _clone(self, vmid: int) -> tuple[float, float]:
        """Seconds of one CLONE action, and of the cache fill it logged (0: warm)."""
        self.env.vm(vmid, {"DISK_ID": 0})
        started = time.monotonic()
        reply = self.env.transfer(vmid, self.env.clone_line(self.image, vmid))
        seconds = time.monotonic() - started
        _ok(reply, f"clone for VM {vmid}")
        _ok(self.env.delete(vmid, None), f"delete of VM {vmid}")
        fills = [float(x.text.split(" in ")[-1].split(" s ")[0]) for x in reply.logs
                 if "filled cache from" in x.text]
        return seconds, (fills or [0.0])[0]

    def _scp_then_dd(self) -> float:
        create = f"lvcreate -qy -n demo-raw -L {self.image_mb}M {VG} >/dev/null"
        started = time.monotonic()
        subprocess.run(["scp", "-q", "-F", self.tb.ssh_config, str(self.env.local(self.image)),
                        f"{self.tb.host}:{COPY}"], check=True, timeout=600)
        self.env.guest(f"{create} && dd if={COPY} of=/dev/{VG}/demo-raw bs=4M oflag=direct "
                       "conv=fsync status=none")
        seconds = time.monotonic() - started
        self.env.guest(f"lvremove -qfy {VG}/demo-raw >/dev/null; rm -f {COPY}")
        return seconds

    def _mkimage(self, gib: int, fs: str) -> float:
        vmid = FIRST_VMID + 901
        size = gib * 1024
        self.env.vm(vmid, {"DISK_ID": 1, "TYPE": "fs", "SIZE": size, "FS": fs})
        started = time.monotonic()
        _ok(self.env.transfer(vmid, f"MKIMAGE lvmsnap {size} raw {self.tb.host}:"
                                    f"{self.env.disk_path(vmid, 1)} {vmid} {SYS_DS}"),
            f"{fs} {gib} GiB")
        seconds = time.monotonic() - started
        _ok(self.env.delete(vmid, None), f"delete of the {fs} disk")
        self.say(f"[measure] MKIMAGE {fs} {gib} GiB: {seconds:.1f} s")
        return seconds

    # --- the end -------------------------------------------------------------------------

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.sh("scancel", "--full", "--user=root", check=False)
            self.loop.stop()
        if self.sshd is not None:
            self.sshd.stop()
        if self.net is not None:
            self.net.close()
        if self.hv is not None:
            self.hv.close()


def _ok(reply: oned.Reply, what: str) -> None:
    if reply.result != "SUCCESS":
        raise FacilityError(f"{what} failed: {reply.reason}")


def table(rows, workers: int, timings: dict[str, float]) -> str:
    """The seed's table, from this run."""
    lines = ["| measured in this run | ours | baseline | baseline / ours (> 1: ours faster) |",
             "|---|---|---|---|"]
    for what, ours, base, ratio in rows:
        lines.append(f"| {what} | {ours:.2f} s | {base:.2f} s | {ratio} |")
    lines.append(f"| sbatch -> first VM request (Slurm + vaf-elastic) | "
                 f"{timings['queue_to_request']:.2f} s | 3.50 s (seed: 7 s poll, mean) | "
                 f"{3.5 / max(timings['queue_to_request'], 1e-3):.1f}x |")
    lines.append(f"| sbatch -> first worker joined | {timings['first_joined']:.2f} s | | |")
    lines.append(f"| sbatch -> all {workers} workers joined | {timings['queue_to_joined']:.2f} s"
                 f" | 90 s (seed: 40 workers) | |")
    return "\n".join(lines)
