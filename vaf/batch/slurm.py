"""Slurm 22.05 through ``scontrol``, ``squeue --json`` and ``sinfo --json``.

:class:`Slurm` is the gate's part (cloud nodes); :class:`SlurmQueue` the whole protocol the
elastic daemon needs (jobs, nodes, drain/resume/remove, power down/up of CLOUD nodes).

``scontrol create NodeName=<name> NodeAddr=<address> NodeHostname=<name> CPUs=<cores>
[Feature=<p1,p2>] State=CLOUD``. CLOUD (not FUTURE) because the node then shows in ``sinfo``
(with ``PrivateData=cloud``) and the worker's ``slurmd -Z -N <name>`` claims it; a plain
``slurmd -N`` cannot claim a created node in 22.05. ``scontrol create`` of an existing name
exits 0 without changing it, so :meth:`Slurm.add_node` asks ``scontrol show node`` first and
reports the truth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.batch.base import (
    ADDED,
    BUSY,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    OTHER,
    PENDING,
    POWERED_DOWN,
    POWERING_UP,
    PRESENT,
    RUNNING,
    UNKNOWN,
    BatchFailed,
    Job,
    Node,
    NodeRequest,
    batch_failure,
    run_batch,
)
from vaf.host.runner import Runner

SLURM_NOT_FOUND = "not found"
_NODE_ADDR_RE = re.compile(r"\bNodeAddr=(\S+)")


def scontrol_create_node(request: NodeRequest) -> list[str]:
    """The ``scontrol create`` words (after the program) for ``request``."""
    words = ["create", f"NodeName={request.name}"]
    if request.address:
        words.append(f"NodeAddr={request.address}")
    words += [f"NodeHostname={request.name}", f"CPUs={request.cores}"]
    if request.features:
        words.append(f"Feature={','.join(request.features)}")
    words.append("State=CLOUD")
    return words


@dataclass(frozen=True)
class Slurm:
    runner: Runner
    scontrol: Sequence[str] = ("scontrol",)
    timeout: float = 30.0
    name = "slurm"

    def add_node(self, request: NodeRequest) -> str:
        show = [*self.scontrol, "show", "node", request.name]
        shown = run_batch(self.runner, show, self.timeout)
        if shown.returncode == 0:
            return self._follow_address(request, shown.stdout)
        if SLURM_NOT_FOUND not in shown.stdout + shown.stderr:
            raise batch_failure(show, shown)
        create = [*self.scontrol, *scontrol_create_node(request)]
        created = run_batch(self.runner, create, self.timeout)
        if created.returncode != 0:
            raise batch_failure(create, created)
        return ADDED

    def _follow_address(self, request: NodeRequest, shown: str) -> str:
        """A name that now resolves to a new address (a re-created VM) moves the node there.

        The gate's identity check has just proved that the name belongs to the address;
        leaving the old NodeAddr would make slurmctld talk to whoever has the old address.
        """
        match = _NODE_ADDR_RE.search(shown)
        if not request.address or not match or match[1] == request.address:
            return PRESENT
        update = [*self.scontrol, "update", f"NodeName={request.name}",
                  f"NodeAddr={request.address}", f"NodeHostname={request.name}"]
        updated = run_batch(self.runner, update, self.timeout)
        if updated.returncode != 0:
            raise batch_failure(update, updated)
        return f"{PRESENT}, address {match[1]} -> {request.address}"


# --- reading the queue and the nodes: ``squeue --json`` and ``sinfo --json`` (22.05) ---

_HOSTLIST_RE = re.compile(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)")


def expand_hostlist(hostlist: str) -> list[str]:
    """``w[1-3,5],x2`` -> ``w1 w2 w3 w5 x2``: Slurm's node list notation, zero padding kept."""
    names: list[str] = []
    for prefix, ranges in _HOSTLIST_RE.findall(hostlist.strip()):
        if not ranges:
            names.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            width = len(first) if first.startswith("0") else 0
            for number in range(int(first), int(last or first) + 1):
                names.append(f"{prefix}{number:0{width}d}")
    return names


def _job_state(state: str) -> str:
    if state == "PENDING":
        return PENDING
    return RUNNING if state in ("RUNNING", "CONFIGURING") else OTHER


def parse_squeue_json(text: str) -> list[Job]:
    """Jobs from ``squeue --json``: cores are the job's ``cpus`` (asked for when pending)."""
    return [Job(id=str(job["job_id"]), state=_job_state(job.get("job_state", "")),
                cores=int(job.get("cpus") or 1), submitted=float(job.get("submit_time") or 0),
                queue=job.get("partition") or None,
                nodes=tuple(expand_hostlist(job.get("nodes") or "")),
                reason=job.get("state_reason") if job.get("state_reason") != "None" else None)
            for job in _json_list(text, "jobs")]


def node_state(state: str, flags: Sequence[str], alloc_cpus: int) -> str:
    """sinfo's base state and flags -> the protocol's node state.

    Power states come first (a POWERED_DOWN node has no machine whatever its base state), then
    drain (DRAINING while cores are still allocated), then the base state.
    """
    flags = set(flags)
    if "POWERING_UP" in flags:
        return POWERING_UP
    if flags & {"POWERED_DOWN", "POWERING_DOWN", "POWER_DOWN"}:
        return POWERED_DOWN
    if state in ("down", "future") or "NOT_RESPONDING" in flags:
        return DOWN
    if "DRAIN" in flags or state in ("drained", "draining"):
        return DRAINING if alloc_cpus or state == "draining" else DRAINED
    if state in ("allocated", "mixed", "completing") or alloc_cpus:
        return BUSY
    return IDLE if state == "idle" else UNKNOWN


def parse_sinfo_json(text: str) -> list[Node]:
    nodes = []
    for node in _json_list(text, "nodes"):
        flags = node.get("state_flags") or []
        alloc = int(node.get("alloc_cpus") or 0)
        last_busy = float(node.get("last_busy") or 0)
        nodes.append(Node(
            name=node["name"], state=node_state(node.get("state", ""), flags, alloc),
            cores=int(node.get("cpus") or 0), jobs=1 if alloc else 0,
            address=node.get("address") or None,
            features=tuple(f for f in (node.get("features") or "").split(",") if f),
            reason=node.get("reason") or None, since=last_busy or None,
            dynamic="CLOUD" in flags or "DYNAMIC_NORM" in flags))
    return nodes


def _json_list(text: str, key: str) -> list[dict]:
    try:
        document = json.loads(text)
    except ValueError as err:
        raise BatchFailed(f"slurm: unreadable JSON ({err})") from None
    if document.get("errors"):
        raise BatchFailed(f"slurm: {document['errors'][0]}")
    return list(document.get(key) or [])


@dataclass(frozen=True)
class SlurmQueue(Slurm):
    """The whole protocol: :class:`Slurm` (the gate's part) plus reading and node changes."""

    squeue: Sequence[str] = ("squeue",)
    sinfo: Sequence[str] = ("sinfo",)

    def _answer(self, argv: Sequence[str]) -> str:
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode != 0:
            raise batch_failure(argv, result)
        return result.stdout

    def jobs(self) -> list[Job]:
        return parse_squeue_json(self._answer([*self.squeue, "--json"]))

    def nodes(self) -> list[Node]:
        return parse_sinfo_json(self._answer([*self.sinfo, "--json"]))

    def _update(self, name: str, *words: str) -> None:
        self._answer([*self.scontrol, "update", f"NodeName={name}", *words])

    def drain(self, name: str, reason: str) -> None:
        self._update(name, "State=DRAIN", f"Reason={reason}")

    def resume(self, name: str) -> None:
        self._update(name, "State=RESUME")

    def remove_node(self, name: str) -> None:
        argv = [*self.scontrol, "delete", f"NodeName={name}"]
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode != 0 and "Invalid node name" not in result.stderr + result.stdout:
            raise batch_failure(argv, result)

    # Power saving (CLOUD nodes from slurm.conf stay configured: they are powered down, not
    # deleted).
    def power_down(self, name: str, reason: str) -> None:
        """Powered down now (its jobs are requeued); an already powered-down node is fine."""
        argv = [*self.scontrol, "update", f"NodeName={name}", "State=POWER_DOWN_FORCE",
                f"Reason={reason}"]
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode != 0 and "Invalid node state" not in result.stderr:
            raise batch_failure(argv, result)

    def power_up(self, name: str) -> None:
        """Ask slurmctld to resume ``name`` (it then calls ResumeProgram itself)."""
        self._update(name, "State=POWER_UP")
