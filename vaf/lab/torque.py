"""A TORQUE server for tests, the demo and benchmarks: :class:`TorqueLab`.

It creates the stand-in's PBS_HOME (:mod:`vaf.lab.torque_qmgr`), hands out the argv of the
three client commands (so :class:`vaf.batch.torque.Torque` runs them like the real ones),
and plays the parts of the system that no client command covers: users submitting jobs, the
scheduler starting them, moms reporting or dying, the server stopping and restarting. Job
transitions are written to ``server_priv/accounting/YYYYMMDD`` in the captured record format
(``MM/DD/YYYY HH:MM:SS;Q;<id>;queue=batch``), the file named after the lab's clock's day.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vaf.batch.torque import Torque
from vaf.gate.gate import Gate, GateLog, handle
from vaf.gate.identity import HostsFileResolver
from vaf.host.runner import Runner
from vaf.lab import torque_qmgr as server
from vaf.lab.one_api import Vm, Workers
from vaf.lab.torque_qmgr import QMGR_STANDIN

QUEUED_COMMENT = "Not Running: Not enough of the right type of nodes are available"


class TorqueLab:
    """One stand-in server under ``home``; names resolve from the lab's hosts file."""

    def __init__(self, home: str | os.PathLike, managers: tuple[str, ...] | None = None,
                 server_name: str = "head", clock: Callable[[], float] = time.time):
        self.home = str(home)
        self.hosts = Path(self.home) / "hosts"
        self.clock = clock
        server.make_home(self.home, managers, server_name)
        self.hosts.touch()

    # --- the client commands ---------------------------------------------------------

    def argv(self, program: str) -> list[str]:
        return [sys.executable, QMGR_STANDIN, program, "--home", self.home,
                "--hosts", str(self.hosts)]

    @property
    def qmgr(self) -> list[str]:
        return self.argv("qmgr")

    @property
    def pbsnodes(self) -> list[str]:
        return self.argv("pbsnodes")

    @property
    def qstat(self) -> list[str]:
        return self.argv("qstat")

    def torque(self, runner: Runner | None = None, timeout: float = 30.0) -> Torque:
        """The real adapter wired to this server's commands."""
        return Torque(runner or Runner(), self.qmgr, timeout, self.pbsnodes, self.qstat)

    # --- where things are ------------------------------------------------------------

    @property
    def accounting_dir(self) -> Path:
        return Path(self.home) / "server_priv" / "accounting"

    @property
    def nodes_file(self) -> Path:
        return Path(self.home) / "server_priv" / "nodes"

    @property
    def server_name(self) -> str:
        return server.server(self.home)["name"]

    def calls(self, program: str | None = None) -> list[list[str]]:
        """The client calls so far (``[program, *arguments]``), optionally of one program."""
        with open(Path(self.home) / "calls.jsonl", encoding="utf-8") as handle:
            calls = [json.loads(line) for line in handle if line.strip()]
        return [c for c in calls if program is None or c[0] == program]

    def add_host(self, address: str, *names: str) -> None:
        """What the server's resolver knows (a line of its hosts file)."""
        with open(self.hosts, "a", encoding="utf-8") as handle:
            handle.write(f"{address} {' '.join(names)}\n")

    # --- the server ------------------------------------------------------------------

    def stop(self) -> None:
        self._server(running=False)

    def start(self) -> None:
        """Start again after :meth:`stop`: a restart (nodes are ``down`` until moms report)."""
        self._server(running=True)
        with server.locked(self.home):
            nodes = server.read_nodes(self.home)
            for node in nodes.values():
                node["up"] = node["created"] = False
            server.write_nodes(self.home, nodes)

    def slow(self, seconds: float) -> None:
        """Every client call takes ``seconds`` before it is answered (a loaded server)."""
        with server.locked(self.home):
            state = server.server(self.home)
            state["delay"] = seconds
            server.write_json(self.home, "server.json", state)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _server(self, running: bool) -> None:
        with server.locked(self.home):
            state = server.server(self.home)
            state["running"] = running
            server.write_json(self.home, "server.json", state)

    # --- moms ------------------------------------------------------------------------

    def mom_up(self, name: str) -> None:
        """The node's mom reports: ``free`` (no server_logs line, as on a real server)."""
        self._node(name, up=True, created=False)

    def mom_down(self, name: str) -> None:
        """The mom stops reporting: ``down`` (not logged either; only pbsnodes shows it)."""
        self._node(name, up=False)

    def _node(self, name: str, **changes) -> None:
        with server.locked(self.home):
            nodes = server.read_nodes(self.home)
            nodes[name].update(changes)
            server.write_nodes(self.home, nodes)

    # --- jobs and the accounting log -------------------------------------------------

    def submit(self, name: str = "job", owner: str = "tuser", nodes: int = 1, ppn: int = 1,
               walltime: str = "01:00:00", queue: str = "batch") -> str:
        """A user's qsub: the job waits (``Q``); returns its id (``<n>.<server>``)."""
        with server.locked(self.home):
            state = server.server(self.home)
            number = state.get("next_job", 1)
            state["next_job"] = number + 1
            server.write_json(self.home, "server.json", state)
            job_id = f"{number}.{state['name']}"
            now = int(self.clock())
            jobs = server.read_jobs(self.home)
            jobs[job_id] = {
                "name": name, "owner": owner, "queue": queue, "state": "Q", "qtime": now,
                "cores": nodes * ppn, "comment": QUEUED_COMMENT,
                "resources": {"nodes": f"{nodes}:ppn={ppn}", "walltime": walltime,
                              "nodect": str(nodes), "neednodes": f"{nodes}:ppn={ppn}"},
                "submit_args": f"-N {name} -l nodes={nodes}:ppn={ppn},walltime={walltime}"}
            server.write_json(self.home, "jobs.json", jobs)
            self.record("Q", job_id, f"queue={queue}")
        return job_id

    def run(self, job_id: str, node: str) -> None:
        """The scheduler starts ``job_id`` on ``node`` (``S``)."""
        with server.locked(self.home):
            jobs = server.read_jobs(self.home)
            job = jobs[job_id]
            now = int(self.clock())
            cores = job["cores"]
            used = sum(c for _, c in server.node_jobs(node, jobs))
            span = f"{used}-{used + cores - 1}" if cores > 1 else f"{used}"
            job.update(state="R", node=node, exec_host=f"{node}/{span}", start=now,
                       session=20000 + len(jobs), comment=f"Job started on "
                       f"{time.strftime('%a %b %d at %H:%M', time.localtime(now))}")
            server.write_json(self.home, "jobs.json", jobs)
            self.record("S", job_id, self._usage(job))

    def finish(self, job_id: str, exit_status: int = 0) -> None:
        """The job ends (``E``) and leaves the queue."""
        with server.locked(self.home):
            jobs = server.read_jobs(self.home)
            job = jobs.pop(job_id)
            server.write_json(self.home, "jobs.json", jobs)
            self.record("E", job_id, f"{self._usage(job)} session={job['session']} "
                        f"total_execution_slots={job['cores']} unique_node_count=1 "
                        f"end={int(self.clock())} Exit_status={exit_status}")

    def delete(self, job_id: str) -> None:
        """qdel of a job (``D``): it leaves the queue."""
        with server.locked(self.home):
            jobs = server.read_jobs(self.home)
            job = jobs.pop(job_id)
            server.write_json(self.home, "jobs.json", jobs)
            self.record("D", job_id, f"requestor={job['owner']}@localhost")

    def schedule(self) -> list[tuple[str, str]]:
        """pbs_sched's pass: start waiting jobs, oldest first, on the first node with room.

        A node has room when its mom reports, it is not offline and enough of its np are
        free; a job runs on one node (``nodes=1`` jobs; others wait). Returns what started.
        """
        started = []
        for job_id in self._waiting():
            node = self._room_for(job_id)
            if node:
                self.run(job_id, node)
                started.append((job_id, node))
        return started

    def _waiting(self) -> list[str]:
        jobs = server.read_jobs(self.home)
        return sorted((j for j, job in jobs.items() if job["state"] == "Q"),
                      key=lambda j: (jobs[j]["qtime"], int(j.split(".")[0])))

    def _room_for(self, job_id: str) -> str | None:
        jobs = server.read_jobs(self.home)
        job = jobs[job_id]
        if job["resources"]["nodect"] != "1":
            return None
        for name, node in server.read_nodes(self.home).items():
            used = sum(c for _, c in server.node_jobs(name, jobs))
            usable = node["up"] and not node["offline"] and not node["created"]
            if usable and node["np"] - used >= job["cores"]:
                return name
        return None

    def _usage(self, job: dict) -> str:
        resources = " ".join(f"Resource_List.{k}={v}" for k, v in job["resources"].items())
        return (f"user={job['owner']} group={job['owner']} jobname={job['name']} "
                f"queue={job['queue']} ctime={job['qtime']} qtime={job['qtime']} "
                f"etime={job['qtime']} start={job['start']} owner={job['owner']}@localhost "
                f"exec_host={job['exec_host']} {resources}")

    def record(self, kind: str, job_id: str, attributes: str) -> None:
        """Append one accounting record, as pbs_server does, to today's file."""
        now = self.clock()
        stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(now))
        path = self.accounting_dir / time.strftime("%Y%m%d", time.localtime(now))
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp};{kind};{job_id};{attributes}\n")


class Scheduler(threading.Thread):
    """pbs_sched and the jobs themselves: every ``interval`` the waiting jobs that fit start
    (:meth:`TorqueLab.schedule`), and a job ends ``runtime`` seconds after it started."""

    def __init__(self, lab: TorqueLab, runtime: float = 1.0, interval: float = 0.2):
        super().__init__(daemon=True, name="pbs_sched")
        self.lab, self.runtime, self.interval = lab, runtime, interval
        self.started: dict[str, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for job_id, _ in self.lab.schedule():
                self.started[job_id] = time.monotonic()
            for job_id, at in list(self.started.items()):
                if time.monotonic() - at >= self.runtime:
                    self.lab.finish(job_id)
                    del self.started[job_id]

    def stop(self) -> None:
        self._done.set()
        self.join(10)


class TorqueWorkers(Workers):
    """The OpenNebula stand-in's VMs as TORQUE workers: a booted VM joins through the gate
    (its ``handle``, with the lab's hosts file as the resolver: ``qmgr create node``) from
    an address of its own, then its mom reports; a terminated VM's mom stops reporting."""

    def __init__(self, lab: TorqueLab, lock_dir: str, cores: int = 1,
                 properties: tuple[str, ...] = ("cloud",)):
        self.lab, self.lock_dir, self.cores, self.properties = lab, lock_dir, cores, properties
        self.addresses: dict[str, str] = {}
        self.answers: list[tuple[str, int, str]] = []  # node, gate exit code, its line
        self._lock = threading.Lock()

    def address(self, name: str) -> str:
        """One address per node name, for good (the gate denies a name that moved)."""
        with self._lock:
            if name not in self.addresses:
                count = len(self.addresses)
                self.addresses[name] = f"127.0.{1 + count // 250}.{1 + count % 250}"
                self.lab.add_host(self.addresses[name], name)
            return self.addresses[name]

    def start(self, vm: Vm) -> None:
        name = vm.context.get("VAF_NODE") or vm.name
        address = self.address(name)
        gate = Gate(self.lab.torque(), HostsFileResolver(str(self.lab.hosts)),
                    allowed_properties=frozenset(self.properties), lock_dir=self.lock_dir)
        command = f"join {name} {self.cores} {','.join(self.properties)}".strip()
        code, line = handle({"SSH_ORIGINAL_COMMAND": command,
                             "SSH_CONNECTION": f"{address} 40000 127.0.0.1 22"},
                            gate, GateLog(sinks=()))
        self.answers.append((name, code, line))
        if code == 0:
            self.lab.mom_up(name)

    def stop(self, vm: Vm) -> None:
        try:
            self.lab.mom_down(vm.context.get("VAF_NODE") or vm.name)
        except KeyError:  # the daemon deleted the node already
            pass
