"""A batch system in memory behind the :mod:`vaf.batch` protocol, for the daemon's queue mode.

As tardis ships a fake batch system: jobs wait until a node with free cores exists, run for
their duration, then leave; nodes join when their worker starts (the OpenNebula stand-in's
:class:`FakeBatchWorkers`) and are drained, resumed and removed as a real system would (a
drained node takes no new job; removing a node with a job fails). TORQUE itself cannot run
here; its adapter's parsers are tested against real captured outputs instead.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from vaf.batch.base import (
    BUSY,
    DRAINED,
    DRAINING,
    IDLE,
    PENDING,
    RUNNING,
    BatchFailed,
    Job,
    Node,
    NodeRequest,
)
from vaf.lab.one_api import Vm, Workers


@dataclass
class _Job:
    id: str
    cores: int
    seconds: float
    submitted: float
    node: str | None = None
    started: float = 0.0


@dataclass
class _Node:
    name: str
    cores: int
    drained: bool = False
    since: float = field(default_factory=time.time)


class FakeBatch:
    name = "fake"

    def __init__(self, clock=time.time):
        self.clock = clock
        self._jobs: dict[str, _Job] = {}
        self._nodes: dict[str, _Node] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.down = False  # the server does not answer
        self.removed: list[str] = []

    def submit(self, cores: int = 1, seconds: float = 1.0) -> str:
        with self._lock:
            job = _Job(str(next(self._ids)), cores, seconds, self.clock())
            self._jobs[job.id] = job
            return job.id

    def _tick(self) -> None:
        """Finish jobs whose time is up, start waiting ones where cores are free."""
        now = self.clock()
        for job in list(self._jobs.values()):
            if job.node and now - job.started >= job.seconds:
                del self._jobs[job.id]
                self._nodes[job.node].since = now if job.node in self._nodes else now
        for job in sorted(self._jobs.values(), key=lambda j: j.submitted):
            if job.node:
                continue
            for node in self._nodes.values():
                if not node.drained and self._free(node) >= job.cores:
                    job.node, job.started = node.name, now
                    break

    def _free(self, node: _Node) -> int:
        return node.cores - sum(j.cores for j in self._jobs.values() if j.node == node.name)

    def _check(self) -> None:
        if self.down:
            raise BatchFailed("fake: cannot connect to server")

    def jobs(self) -> list[Job]:
        with self._lock:
            self._check()
            self._tick()
            return [Job(j.id, RUNNING if j.node else PENDING, j.cores, j.submitted,
                        nodes=(j.node,) if j.node else ()) for j in self._jobs.values()]

    def nodes(self) -> list[Node]:
        with self._lock:
            self._check()
            self._tick()
            result = []
            for node in self._nodes.values():
                busy = self._free(node) < node.cores
                state = (DRAINING if busy else DRAINED) if node.drained else (
                    BUSY if busy else IDLE)
                result.append(Node(node.name, state, node.cores, jobs=int(busy),
                                   since=node.since, dynamic=True))
            return result

    def add_node(self, request: NodeRequest) -> str:
        with self._lock:
            self._nodes.setdefault(request.name, _Node(request.name, request.cores))
            return "added"

    def drain(self, name: str, reason: str) -> None:
        with self._lock:
            self._check()
            self._nodes[name].drained = True

    def resume(self, name: str) -> None:
        with self._lock:
            self._check()
            self._nodes[name].drained = False

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._check()
            if any(j.node == name for j in self._jobs.values()):
                raise BatchFailed(f"fake: node {name} is busy")
            if self._nodes.pop(name, None) is not None:
                self.removed.append(name)

    def start_job_on(self, name: str, cores: int = 1, seconds: float = 5.0) -> str:
        """A job lands on ``name`` right now (the race the daemon must survive)."""
        with self._lock:
            job = _Job(str(next(self._ids)), cores, seconds, self.clock(), name, self.clock())
            self._jobs[job.id] = job
            return job.id


class FakeBatchWorkers(Workers):
    """A booted VM's worker adds its node at the end of contextualization, as the gate does."""

    def __init__(self, batch: FakeBatch, cores: int = 1):
        self.batch, self.cores = batch, cores

    def start(self, vm: Vm) -> None:
        self.batch.add_node(NodeRequest(vm.context.get("VAF_NODE", vm.name), self.cores))

    def stop(self, vm: Vm) -> None:
        """The VM is gone: its node stops answering (the daemon removes it)."""
