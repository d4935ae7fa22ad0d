"""Real munge + Slurm 22.05 (Debian's packages) started by the tests, without systemd.

Follows the recipe in docs/lab.md (Slurm without systemd), in a private
directory: our own munge key and socket (``AuthInfo=socket=``), our own free ports and
state, so a Slurm or munge already on the machine is left alone. Every daemon is started
through the runner (each daemonises and writes a pid file) and stopped by that pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vaf.host.runner import Runner
from vaf.lab.daemons import free_port, read_pid, stop_pid, wait_for

BINARIES = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")

SLURM_CONF = """\
ClusterName=vaftest
PrivateData=cloud
MailProg=/bin/true
MpiDefault=none
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/run/munge.sock
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd-%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MaxNodeCount=64
TreeWidth=65533
CommunicationParameters=NoAddrCache
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def available() -> bool:
    return all(os.path.exists(b) for b in BINARIES) and shutil.which("scontrol") is not None


@dataclass
class Slurm:
    runner: Runner = field(default_factory=Runner)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vaf-slurm-")))
    slurmds: list[str] = field(default_factory=list)
    #: more slurm.conf lines before the partition (power saving, CLOUD node ranges)
    extra_conf: str = ""

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def scontrol(self) -> list[str]:
        """scontrol has no config option: the file goes through the environment."""
        return ["env", f"SLURM_CONF={self.conf}", "scontrol"]

    def start(self) -> Slurm:
        # munged insists that everybody can reach its socket directory
        self.dir.chmod(0o755)
        for sub in ("run", "state", "log", "spool", "munge"):
            (self.dir / sub).mkdir()
        (self.dir / "munge").chmod(0o700)
        self._start_munged()
        conf = SLURM_CONF.format(host=socket.gethostname(), dir=self.dir,
                                 ctld_port=free_port(), slurmd_port=free_port())
        partition = conf.index("PartitionName")
        self.conf.write_text(conf[:partition] + self.extra_conf + conf[partition:])
        self.start_slurmctld()
        return self

    def start_slurmctld(self) -> None:
        """Start (or restart, keeping its state) the controller and wait until it answers."""
        self.runner.run(["/usr/sbin/slurmctld", "-f", str(self.conf)]
                        + ([] if (self.dir / "state" / "node_state").exists() else ["-i"]))
        wait_for(lambda: "UP" in self.runner.run([*self.scontrol, "ping"], check=False).stdout,
                 "slurmctld")

    def stop_slurmctld(self) -> None:
        stop_pid(read_pid(self.dir / "run" / "slurmctld.pid"))

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _start_munged(self) -> None:
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        munge = self.dir / "munge"
        self.runner.run(["/usr/sbin/munged", f"--key-file={key}",
                         f"--socket={self.dir}/run/munge.sock",
                         f"--pid-file={self.dir}/run/munged.pid",
                         f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"])

    def start_slurmd(self, name: str, address: str, cpus: int, features: str = "") -> None:
        """The worker's side: ``slurmd -Z -N <name>`` claims the node the gate created."""
        (self.dir / "spool" / name).mkdir(exist_ok=True)
        conf = f"NodeAddr={address} NodeHostname={name} CPUs={cpus}"
        if features:
            conf += f" Feature={features}"
        self.runner.run(["/usr/sbin/slurmd", "-Z", "-N", name, "--conf", conf,
                         "-f", str(self.conf)])
        self.slurmds.append(name)

    def start_cloud_slurmd(self, name: str) -> None:
        """A worker of a ``State=CLOUD`` range in slurm.conf (its Port there): ``slurmd -N``.

        ``-Z`` (dynamic registration) refuses a name slurm.conf already defines, and its
        ``--conf`` takes no Port, so several workers on one host need the configured nodes.
        slurmctld ignores a powering-up node whose machine booted before it was resumed
        (a real VM boots after), so the slurmd runs in a time namespace whose boot clock
        starts now, as a fresh VM's would.
        """
        (self.dir / "spool" / name).mkdir(exist_ok=True)
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = int(float(handle.read().split()[0]))  # whole seconds: uptime < 1 s
        self.runner.run(["unshare", "--fork", "--time", f"--boottime=-{uptime}",
                         "/usr/sbin/slurmd", "-N", name, "-f", str(self.conf)])
        if name not in self.slurmds:
            self.slurmds.append(name)

    def stop_slurmd(self, name: str) -> None:
        stop_pid(read_pid(self.dir / "run" / f"slurmd-{name}.pid"))

    def node_state(self, name: str) -> str:
        """State of ``name`` as ``sinfo`` shows it (``idle~``, ``idle``...), '' if absent."""
        out = self.runner.run(["env", f"SLURM_CONF={self.conf}", "sinfo", "-h", "-N",
                               "-o", "%N %t"], check=False).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return states.get(name, "")

    def log(self) -> str:
        path = self.dir / "log" / "slurmctld.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for name in self.slurmds:
            stop_pid(read_pid(self.dir / "run" / f"slurmd-{name}.pid"))
        stop_pid(read_pid(self.dir / "run" / "slurmctld.pid"))
        stop_pid(read_pid(self.dir / "run" / "munged.pid"))
        shutil.rmtree(self.dir, ignore_errors=True)
