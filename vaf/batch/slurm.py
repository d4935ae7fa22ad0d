"""Slurm 22.05 through ``scontrol``: cloud nodes.

``scontrol create NodeName=<name> NodeAddr=<address> NodeHostname=<name> CPUs=<cores>
[Feature=<p1,p2>] State=CLOUD``. CLOUD (not FUTURE) because the node then shows in ``sinfo``
(with ``PrivateData=cloud``) and the worker's ``slurmd -Z -N <name>`` claims it; a plain
``slurmd -N`` cannot claim a created node in 22.05. ``scontrol create`` of an existing name
exits 0 without changing it, so :meth:`Slurm.add_node` asks ``scontrol show node`` first and
reports the truth.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.batch.base import ADDED, PRESENT, NodeRequest, batch_failure, run_batch
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
