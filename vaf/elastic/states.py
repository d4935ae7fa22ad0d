"""Every managed node's state, and the one table of the changes allowed between them."""

from __future__ import annotations

from vaf.errors import VafError

REQUESTED = "requested"  # we decided to have it; no VM id known yet
BOOTING = "booting"  # the VM exists; its node has not joined the batch system yet
JOINED = "joined"  # the node is up and runs jobs
IDLE = "idle"  # the node is up without a job (since the record's ``since``)
DRAINING = "draining"  # no new jobs: waiting for it to be empty before the VM goes
STOPPING = "stopping"  # the VM is being terminated; the node is given back after it
GONE = "gone"  # no VM, no node (kept for the history; the name may be used again)
FAILED = "failed"  # never joined or broke: the VM is being terminated

STATES = (REQUESTED, BOOTING, JOINED, IDLE, DRAINING, STOPPING, GONE, FAILED)

TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({BOOTING, FAILED, GONE}),
    BOOTING: frozenset({JOINED, IDLE, STOPPING, FAILED}),
    JOINED: frozenset({IDLE, DRAINING, STOPPING, FAILED}),
    IDLE: frozenset({JOINED, DRAINING, STOPPING, FAILED}),
    DRAINING: frozenset({JOINED, IDLE, STOPPING, FAILED}),
    STOPPING: frozenset({GONE}),
    FAILED: frozenset({GONE}),
    GONE: frozenset({REQUESTED, BOOTING}),  # BOOTING: a VM of ours found in OpenNebula
}

#: states that hold (or will hold) a VM and count against the quota
LIVE = frozenset({REQUESTED, BOOTING, JOINED, IDLE, DRAINING})
#: capacity on its way: counted so that the same waiting jobs never ask twice
UPCOMING = frozenset({REQUESTED, BOOTING})
#: a VM that must disappear before the record is done
ENDING = frozenset({STOPPING, FAILED})
#: states in which the daemon watches closely (short poll) instead of waiting for events
TRANSIENT = frozenset({REQUESTED, BOOTING, DRAINING, STOPPING, FAILED})


class BadTransition(VafError):
    pass


def check_transition(name: str, old: str | None, new: str) -> None:
    """Raise :class:`BadTransition` unless ``old -> new`` is in :data:`TRANSITIONS`."""
    if new not in TRANSITIONS:
        raise BadTransition(f"{name}: unknown state {new!r}")
    if old is None:
        if new not in (REQUESTED, BOOTING):
            raise BadTransition(f"{name}: a new node starts as requested or booting, not {new}")
        return
    if old != new and new not in TRANSITIONS[old]:
        raise BadTransition(f"{name}: {old} -> {new} is not allowed")
