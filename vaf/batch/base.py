"""What vaf needs from a batch system, whichever it is: jobs, nodes and a few node changes.

Adapters (``vaf/batch/slurm.py``, ``vaf/batch/torque.py``) translate the system's own states
into the small vocabularies below, so the gate and the elastic daemon never parse a batch
system's text themselves. Every adapter method raises :class:`BatchFailed` with one line an
admin can act on when the system refuses or does not answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vaf.errors import VafError
from vaf.host.runner import CommandError, Result, Runner

# Job states, as the daemon needs them.
PENDING = "pending"  # waiting for resources (a candidate for new workers)
RUNNING = "running"
OTHER = "other"  # held, finishing, completed, ...: neither demand nor load

# Node states, as the daemon needs them.
IDLE = "idle"  # up, no job
BUSY = "busy"  # up, at least one job (mixed or allocated)
DRAINING = "draining"  # no new jobs, a job still running
DRAINED = "drained"  # no new jobs, none running: safe to remove
DOWN = "down"  # not responding, or offline with no reason to come back by itself
POWERED_DOWN = "powered_down"  # Slurm CLOUD/power-saving node with no machine behind it
POWERING_UP = "powering_up"  # Slurm: ResumeProgram called, node not registered yet
UNKNOWN = "unknown"

ADDED = "added"
PRESENT = "already present"


class BatchFailed(VafError):
    """The batch system refused or did not answer (the gate's exit code 4)."""

    exit_code = 4


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # PENDING, RUNNING or OTHER
    cores: int  # cores the job asks for in all (not a job count)
    submitted: float  # epoch seconds
    queue: str | None = None  # TORQUE queue or Slurm partition
    nodes: tuple[str, ...] = ()  # where it runs
    reason: str | None = None  # why it waits, as the batch system says


@dataclass(frozen=True)
class Node:
    name: str
    state: str  # one of the node states above
    cores: int
    jobs: int = 0  # jobs running on it
    address: str | None = None
    features: tuple[str, ...] = ()  # Slurm features / TORQUE properties
    reason: str | None = None  # the admin's or the system's comment
    since: float | None = None  # epoch seconds of the last state change, when known
    dynamic: bool = False  # a cloud node (Slurm State=CLOUD, or created by vaf) vs static


@dataclass(frozen=True)
class NodeRequest:
    """A node to add: already validated by the caller (the gate's grammar)."""

    name: str
    cores: int
    features: tuple[str, ...] = ()
    address: str | None = None


class BatchSystem(Protocol):
    """The one protocol both adapters implement."""

    name: str

    def jobs(self) -> Sequence[Job]: ...

    def nodes(self) -> Sequence[Node]: ...

    def add_node(self, request: NodeRequest) -> str:
        """Create the node; :data:`ADDED`, or :data:`PRESENT` when it exists as asked."""

    def drain(self, name: str, reason: str) -> None:
        """No new jobs on ``name``; running ones go on."""

    def resume(self, name: str) -> None:
        """Undo :meth:`drain` (the node picked up work while draining)."""

    def remove_node(self, name: str) -> None:
        """Delete the node from the batch system; a missing node is not an error."""


def run_batch(runner: Runner, argv: Sequence[str], timeout: float) -> Result:
    """Run a batch command; a command that cannot run at all becomes :class:`BatchFailed`."""
    try:
        return runner.run(list(argv), timeout=timeout, check=False)
    except CommandError as err:  # not installed, timed out
        raise BatchFailed(err.reason) from None


def batch_failure(argv: Sequence[str], result: Result) -> BatchFailed:
    """The one-line reason for a batch command that answered with a failure."""
    return BatchFailed(CommandError(list(argv), None, result.returncode, result.stdout,
                                    result.stderr).reason)
