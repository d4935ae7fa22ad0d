"""TORQUE through its own commands: ``qmgr`` for nodes.

``qmgr -c 'create node <name> np=<cores>[,properties="<p1,p2>"]'``: only the last ``-c`` of a
qmgr call runs and attributes are one comma-separated word (docs/lab.md, "TORQUE"), so the
whole directive is one ``-c`` string built from validated fields only. "Node name already
exists" (exit 2) means present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vaf.batch.base import ADDED, PRESENT, BatchFailed, NodeRequest, batch_failure, run_batch
from vaf.host.runner import Runner

QMGR_DUPLICATE = "Node name already exists"
QMGR_UNKNOWN = "Unknown node"


def qmgr_create_node(request: NodeRequest) -> str:
    """The qmgr directive for ``request``: one ``-c`` string, comma-separated attributes."""
    attributes = [f"np={request.cores}"]
    if request.features:
        attributes.append(f'properties="{",".join(request.features)}"')
    return f"create node {request.name} {','.join(attributes)}"


@dataclass(frozen=True)
class Torque:
    runner: Runner
    qmgr: Sequence[str] = ("qmgr",)
    timeout: float = 30.0
    name = "torque"

    def add_node(self, request: NodeRequest) -> str:
        argv = [*self.qmgr, "-c", qmgr_create_node(request)]
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode == 0:
            return ADDED
        said = result.stdout + result.stderr
        if QMGR_DUPLICATE in said:
            return PRESENT
        if QMGR_UNKNOWN in said:
            raise BatchFailed(f"qmgr: {request.name} does not resolve on the TORQUE server")
        raise batch_failure(argv, result)
