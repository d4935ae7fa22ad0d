"""The elastic facility's closed loop, for tests and the benchmark: a real Slurm with power
saving over ``State=CLOUD`` nodes, the OpenNebula API stand-in whose VMs are real slurmds,
and the real daemon (``python -m vaf.elastic run``) as its own process. :class:`TorqueLoop`
is the same loop in queue mode over the TORQUE stand-in (:mod:`vaf.lab.torque`): its VMs
join through the gate (``qmgr create node``) and the daemon wakes on the accounting log.

Slurm's ResumeProgram/SuspendProgram/ResumeFailProgram are small scripts that run this
tree's ``vaf elastic resume|suspend|resume-fail`` with the loop's config, as the shipped
``vaf-elastic-resume`` ... scripts do with /etc/vaf/elastic.conf.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import vaf
from vaf.lab.daemons import free_port, wait_for
from vaf.lab.one_api import OneApi, SlurmWorkers
from vaf.lab.slurm import Slurm
from vaf.lab.torque import Scheduler, TorqueLab, TorqueWorkers

TREE = str(Path(vaf.__file__).resolve().parent.parent)

POWER_SAVE = """\
ResumeProgram={dir}/resume
SuspendProgram={dir}/suspend
ResumeFailProgram={dir}/resume-fail
SuspendTime={suspend_time}
SuspendTimeout={suspend_timeout}
ResumeTimeout={resume_timeout}
ResumeRate=0
SuspendRate=0
BatchStartTimeout=5
{scheduling}{slurm_extra}NodeName=w[1-{count}] NodeAddr=127.0.0.1 CPUs=1 State=CLOUD Feature=cloud \
Port=[{port}-{last}]
"""


#: the shipped slurm.conf's scheduling lines (docs/elastic.md): a batch job is scheduled at
#: once instead of up to 3 s later, and the power-saving pass is never throttled beyond its
#: own 1 s tick (slurmctld's power_save thread sleeps 1 s between looks, a fixed value)
SCHEDULING = """\
SchedulerParameters=batch_sched_delay=0
SlurmctldParameters=power_save_min_interval=0
"""


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on 127.0.0.1 (one per slurmd: a
    CLOUD node range takes a port range)."""
    for _ in range(50):
        first = free_port()
        if first + count > 65535:
            continue
        if all(_free(port) for port in range(first + 1, first + count)):
            return first
    raise RuntimeError(f"no run of {count} free ports")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


@dataclass
class Loop:
    workers: int = 6
    max_vms: int = 3
    boot_delay: float = 1.0
    suspend_time: int = 3
    resume_timeout: int = 30
    settings: dict[str, str] = field(default_factory=dict)
    slurm_extra: str = ""  # more slurm.conf lines
    scheduling: str = SCHEDULING  # "" measures Slurm's defaults
    #: the OpenNebula stand-in's deploy/terminate hooks (:class:`vaf.lab.one_api.OneApi`)
    on_deploy: object = None
    on_undeploy: object = None
    first_vmid: int = 0  # the stand-in's first VM ID
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vaf-elastic-")))

    def __post_init__(self) -> None:
        self.daemon: subprocess.Popen | None = None
        self.slurm: Slurm | None = None
        self.api: OneApi | None = None
        self.daemon_log = self.dir / "daemon.log"

    @property
    def conf(self) -> Path:
        return self.dir / "elastic.conf"

    def start(self) -> Loop:
        self.dir.chmod(0o755)
        port = free_ports(self.workers)
        extra = POWER_SAVE.format(dir=self.dir, suspend_time=self.suspend_time,
                                  suspend_timeout=2, resume_timeout=self.resume_timeout,
                                  count=self.workers, port=port, last=port + self.workers - 1,
                                  scheduling=self.scheduling, slurm_extra=self.slurm_extra)
        self.slurm = Slurm(extra_conf=extra)
        self._scripts()
        self.slurm.start()
        self.api = OneApi(workers=SlurmWorkers(self.slurm), boot_delay=self.boot_delay,
                          on_deploy=self.on_deploy, on_undeploy=self.on_undeploy,
                          first_id=self.first_vmid).up()
        self.write_conf({"BATCH": "slurm", "MODE": "power-save", "IDLE_THRESHOLD": "0",
                         "SLURM_CONF": str(self.slurm.conf)})
        return self

    def write_conf(self, values: dict[str, str]) -> None:
        """The daemon's config: the loop's defaults, ``values``, then :attr:`settings`."""
        auth = self.dir / "one_auth"
        auth.write_text(self.api.session + "\n")
        auth.chmod(0o600)
        conf = {"NODES": f"w[1-{self.workers}]", "MAX_VMS": str(self.max_vms),
                "TEMPLATE_ID": "0", "ONE_XMLRPC": self.api.endpoint, "ONE_AUTH": str(auth),
                "ONE_TIMEOUT": "3", "STATE_DIR": str(self.dir / "state"),
                "POLL_INTERVAL": "0.25", "RECONCILE_INTERVAL": "5", "DEPLOY_TIMEOUT": "20",
                "OWNER": "vaf-lab", "TERMINATE_RETRY": "5", "JOIN_CONTEXT": "VAF_GATE=127.0.0.1",
                **values, **self.settings}
        self.conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in conf.items()))

    def _scripts(self) -> None:
        for kind in ("resume", "suspend", "resume-fail"):
            script = self.dir / kind
            script.write_text(
                "#!/bin/sh\n"
                f"PYTHONPATH={shlex.quote(TREE)} exec {shlex.quote(sys.executable)} "
                f"-m vaf.elastic.power {kind} --conf {shlex.quote(str(self.conf))} \"$@\"\n")
            script.chmod(0o755)

    def start_daemon(self, *extra: str) -> None:
        env = dict(os.environ, PYTHONPATH=TREE)
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "vaf.elastic", "run", "--conf", str(self.conf),
                 "--foreground", *extra], env=env, stderr=log, stdout=log)
        try:
            wait_for(lambda: (self.dir / "state" / "wake.sock").exists(), "vaf-elastic", 20)
        except Exception as err:  # say why: the daemon's own last words
            tail = self.daemon_log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{err}; its log ends with:\n{tail}") from None

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(sig)
            self.daemon.wait(20)
            self.daemon = None

    def sh(self, *argv: str, check: bool = True) -> str:
        result = subprocess.run(argv, env=dict(os.environ, **self.slurm.env),
                                capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{argv}: {result.stderr}")
        return result.stdout

    def submit(self, count: int, seconds: float) -> list[str]:
        return [self.sh("sbatch", "--parsable", "-N1", "-n1", "-o", "/dev/null",
                        "--wrap", f"sleep {seconds}").strip() for _ in range(count)]

    def queue(self) -> list[str]:
        return self.sh("squeue", "-h", "-o", "%i %T", check=False).split("\n")[:-1]

    def node_states(self) -> dict[str, str]:
        out = self.sh("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def status(self) -> str:
        return subprocess.run([sys.executable, "-m", "vaf.elastic", "status", "--conf",
                               str(self.conf), "--json"], env=dict(os.environ, PYTHONPATH=TREE),
                              capture_output=True, text=True, timeout=30).stdout

    def wait(self, condition, what: str, timeout: float) -> float:
        started = time.monotonic()
        wait_for(condition, what, timeout, step=0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        self.kill_daemon(signal.SIGTERM)
        if self.api is not None:
            self.api.stop()
        if self.slurm is not None:
            self.slurm.stop()


@dataclass
class TorqueLoop(Loop):
    """Queue mode over the TORQUE stand-in: jobs wait (``Q`` in the accounting log, which
    wakes the daemon), VMs boot and join through the gate, the stand-in's scheduler runs the
    jobs for ``runtime`` seconds, idle workers are drained (``pbsnodes -o``), their VMs
    terminated and their nodes deleted (``qmgr -c 'delete node'``)."""

    runtime: float = 1.0
    idle_threshold: float = 1.0

    def start(self) -> TorqueLoop:
        self.dir.chmod(0o755)
        self.torque = TorqueLab(self.dir / "torque")
        self.scheduler = Scheduler(self.torque, runtime=self.runtime)
        self.scheduler.start()
        self.joins = TorqueWorkers(self.torque, str(self.dir / "gate-locks"))
        self.api = OneApi(workers=self.joins, boot_delay=self.boot_delay).up()
        self.write_conf({"BATCH": "torque", "MODE": "queue", "WAIT_THRESHOLD": "0",
                         "IDLE_THRESHOLD": str(self.idle_threshold),
                         "QMGR": shlex.join(self.torque.qmgr),
                         "PBSNODES": shlex.join(self.torque.pbsnodes),
                         "QSTAT": shlex.join(self.torque.qstat), "PBS_HOME": self.torque.home,
                         "ACCOUNTING_POLL": "0.05"})
        return self

    def submit(self, count: int, seconds: float = 0.0) -> list[str]:
        """qsub of ``count`` one-core jobs (they run :attr:`runtime` seconds)."""
        return [self.torque.submit(f"job{i}") for i in range(count)]

    def queue(self) -> list[str]:
        return [f"{job.id} {job.state}" for job in self.torque.torque().jobs()]

    def node_states(self) -> dict[str, str]:
        return {node.name: node.state for node in self.torque.torque().nodes()}

    def stop(self) -> None:
        self.kill_daemon(signal.SIGTERM)
        if self.api is not None:
            self.api.stop()
        self.scheduler.stop()


class CloudWatch(threading.Thread):
    """Samples the cloud every 50 ms: the most VMs at once, any name with two live VMs."""

    def __init__(self, api):
        super().__init__(daemon=True)
        self.api, self.most, self.doubles, self.running = api, 0, set(), True

    def run(self):
        while self.running:
            names = [vm.context.get("VAF_NODE") for vm in self.api.live()]
            self.most = max(self.most, len(names))
            self.doubles |= {n for n in names if names.count(n) > 1}
            time.sleep(0.05)
