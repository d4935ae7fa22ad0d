"""Batch-system backends: add one validated node, idempotently, through the runner.

Each backend gets a :class:`~vaf.gate.grammar.JoinRequest` (already validated) and the
connecting address. Commands are argv lists with a timeout; the batch system's own
language (qmgr's) is built here from validated fields only.

* TORQUE: ``qmgr -c 'create node <name> np=<cpus>[,properties="<p1,p2>"]'``. Only the last
  ``-c`` of a qmgr call runs and attributes are comma-separated (batch-systems.md §1.3), so
  the whole request is one ``-c`` string. "Node name already exists" (exit 2) is success.
* Slurm 22.05: ``scontrol create NodeName=<name> NodeAddr=<address> NodeHostname=<name>
  CPUs=<cpus> [Feature=<p1,p2>] State=CLOUD``. CLOUD (not FUTURE) because the node then shows
  in ``sinfo`` (with ``PrivateData=cloud``) and the worker's ``slurmd -Z -N <name>`` claims it;
  a plain ``slurmd -N`` cannot claim a created node in 22.05. ``scontrol create`` of an
  existing name exits 0 without changing it, so the gate asks ``scontrol show node`` first and
  reports the truth.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.errors import VafError
from vaf.gate.grammar import JoinRequest
from vaf.gate.identity import Address
from vaf.host.runner import CommandError, Runner

ADDED = "added"
PRESENT = "already present"

QMGR_DUPLICATE = "Node name already exists"
QMGR_UNKNOWN = "Unknown node"
SLURM_NOT_FOUND = "not found"
_NODE_ADDR_RE = re.compile(r"\bNodeAddr=(\S+)")


class BatchFailed(VafError):
    """The batch system refused or did not answer (exit code 4)."""

    exit_code = 4


def qmgr_create_node(request: JoinRequest) -> str:
    """The qmgr directive for ``request``: one ``-c`` string, comma-separated attributes."""
    attributes = [f"np={request.cpus}"]
    if request.properties:
        attributes.append(f'properties="{",".join(request.properties)}"')
    return f"create node {request.hostname} {','.join(attributes)}"


def scontrol_create_node(request: JoinRequest, address: Address) -> list[str]:
    """The ``scontrol create`` words (after the program) for ``request``."""
    words = ["create", f"NodeName={request.hostname}", f"NodeAddr={address}",
             f"NodeHostname={request.hostname}", f"CPUs={request.cpus}"]
    if request.properties:
        words.append(f"Feature={','.join(request.properties)}")
    words.append("State=CLOUD")
    return words


@dataclass(frozen=True)
class TorqueBackend:
    runner: Runner
    qmgr: Sequence[str] = ("qmgr",)
    timeout: float = 30.0
    name = "torque"

    def register(self, request: JoinRequest, address: Address) -> str:
        argv = [*self.qmgr, "-c", qmgr_create_node(request)]
        result = _run(self.runner, argv, self.timeout)
        if result.returncode == 0:
            return ADDED
        said = result.stdout + result.stderr
        if QMGR_DUPLICATE in said:
            return PRESENT
        if QMGR_UNKNOWN in said:
            raise BatchFailed(f"qmgr: {request.hostname} does not resolve on the TORQUE server")
        raise _failure(argv, result)


@dataclass(frozen=True)
class SlurmBackend:
    runner: Runner
    scontrol: Sequence[str] = ("scontrol",)
    timeout: float = 30.0
    name = "slurm"

    def register(self, request: JoinRequest, address: Address) -> str:
        show = [*self.scontrol, "show", "node", request.hostname]
        shown = _run(self.runner, show, self.timeout)
        if shown.returncode == 0:
            return self._follow_address(request, address, shown.stdout)
        if SLURM_NOT_FOUND not in shown.stdout + shown.stderr:
            raise _failure(show, shown)
        create = [*self.scontrol, *scontrol_create_node(request, address)]
        created = _run(self.runner, create, self.timeout)
        if created.returncode != 0:
            raise _failure(create, created)
        return ADDED

    def _follow_address(self, request: JoinRequest, address: Address, shown: str) -> str:
        """A name that now resolves to a new address (a re-created VM) moves the node there.

        The identity check has just proved that ``request.hostname`` belongs to ``address``;
        leaving the old NodeAddr would make slurmctld talk to whoever has the old address.
        """
        match = _NODE_ADDR_RE.search(shown)
        if not match or match[1] == str(address):
            return PRESENT
        update = [*self.scontrol, "update", f"NodeName={request.hostname}",
                  f"NodeAddr={address}", f"NodeHostname={request.hostname}"]
        updated = _run(self.runner, update, self.timeout)
        if updated.returncode != 0:
            raise _failure(update, updated)
        return f"{PRESENT}, address {match[1]} -> {address}"


def _run(runner: Runner, argv: list[str], timeout: float):
    try:
        return runner.run(argv, timeout=timeout, check=False)
    except CommandError as err:  # not installed, timed out
        raise BatchFailed(err.reason) from None


def _failure(argv: list[str], result) -> BatchFailed:
    return BatchFailed(CommandError(argv, None, result.returncode, result.stdout,
                                    result.stderr).reason)


BACKENDS = {"torque": TorqueBackend, "slurm": SlurmBackend}
