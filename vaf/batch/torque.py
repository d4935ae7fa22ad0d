"""TORQUE through its own commands: ``qstat -f -x`` for jobs, ``pbsnodes -x`` for nodes,
``pbsnodes -o``/``-c`` to drain and resume, ``qmgr`` to create and delete nodes.

qmgr: only the last ``-c`` of a call runs and attributes are one comma-separated word
(``create node <name> np=<cores>,properties="<p1,p2>"``), so every directive is one ``-c``
string built from validated fields only. "Node name already exists" (exit 2) means present;
"Unknown node " (exit 2, with a trailing space) means the name does not resolve on the
server, or, for ``delete``, that the node is gone already.

The parsers are pure functions of the commands' XML (documented in docs/torque.md, tested
against captured outputs in tests/data/torque/). TORQUE reports a node's state as a comma
list (``free``, ``job-exclusive``, ``down,offline``, ``down,offline,MOM-list-not-sent``);
:func:`node_state` maps it to the protocol's vocabulary. A job asks for cores through
``Resource_List.nodes`` (``2:ppn=4+1:ppn=2`` = 10 cores) or, without it, ``ncpus``/``procs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from xml.etree import ElementTree

from vaf.batch.base import (
    ADDED,
    BUSY,
    DOWN,
    DRAINED,
    DRAINING,
    IDLE,
    OTHER,
    PENDING,
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

QMGR_DUPLICATE = "Node name already exists"
QMGR_UNKNOWN = "Unknown node"
#: pbsnodes/qstat when the server has nothing to list (not an error for vaf)
NO_NODES = "Server has no node list"
#: PBS_MAXNODENAME: TORQUE creates longer names as given but cannot hold them everywhere
MAX_NODE_NAME = 80

# qstat's job_state letters: Q queued, W waiting for its start time, H held, T moving,
# R running, E exiting, C completed, S suspended. Only Q is demand for new workers.
_JOB_STATES = {"Q": PENDING, "R": RUNNING, "E": RUNNING}
_NODE_SPEC_RE = re.compile(r"^(?:(\d+)|[^:+]+)((?::[^:+]*)*)$")
_PPN_RE = re.compile(r"^(?:ppn|ncpus)=(\d+)$")
_JOB_SLOTS_RE = re.compile(r"^[0-9,-]+/(\S+)$")


def qmgr_create_node(request: NodeRequest) -> str:
    """The qmgr directive for ``request``: one ``-c`` string, comma-separated attributes."""
    attributes = [f"np={request.cores}"]
    if request.features:
        attributes.append(f'properties="{",".join(request.features)}"')
    return f"create node {request.name} {','.join(attributes)}"


def qmgr_delete_node(name: str) -> str:
    return f"delete node {name}"


def node_state(states: str, jobs: int) -> str:
    """The protocol state of a node whose ``<state>`` is ``states`` and that runs ``jobs``.

    ``down`` wins over everything (no mom: nothing runs there whatever else is set);
    ``offline`` is TORQUE's drain: DRAINING while a job still runs, DRAINED after; a node
    with jobs is BUSY even while ``free`` (cores left over); ``state-unknown`` alone is
    UNKNOWN.
    """
    words = {word.strip() for word in states.split(",") if word.strip()}
    if "down" in words:
        return DOWN
    if "offline" in words:
        return DRAINING if jobs else DRAINED
    if jobs or words & {"job-exclusive", "job-sharing", "busy", "reserve"}:
        return BUSY
    if "free" in words:
        return IDLE
    return UNKNOWN


def job_ids_on_node(jobs: str) -> tuple[str, ...]:
    """Distinct job ids of a ``<jobs>`` value (``0-1/2.vm,2/3.vm`` or ``0/2.vm, 1/2.vm``)."""
    found: list[str] = []
    for slot in jobs.split(","):
        match = _JOB_SLOTS_RE.match(slot.strip())
        if match and match[1] not in found:
            found.append(match[1])
    return tuple(found)


def parse_pbsnodes_xml(text: str) -> list[Node]:
    """The nodes of one ``pbsnodes -x`` document."""
    if not text.strip():
        return []
    nodes = []
    for element in _xml(text, "pbsnodes -x").iter("Node"):
        name = _text(element, "name")
        if not name:
            continue
        jobs = job_ids_on_node(_text(element, "jobs"))
        properties = tuple(p for p in _text(element, "properties").split(",") if p)
        nodes.append(Node(name=name, state=node_state(_text(element, "state"), len(jobs)),
                          cores=_int(_text(element, "np"), 1), jobs=len(jobs),
                          features=properties, reason=_text(element, "note") or None))
    return nodes


def parse_qstat_xml(text: str) -> list[Job]:
    """The jobs of one ``qstat -f -x`` document (empty output: no jobs)."""
    if not text.strip():
        return []
    jobs = []
    for element in _xml(text, "qstat -x").iter("Job"):
        job_id = _text(element, "Job_Id")
        if not job_id:
            continue
        resources = {child.tag: (child.text or "").strip()
                     for child in element.findall("Resource_List/*")}
        exec_host = _text(element, "exec_host")
        jobs.append(Job(id=job_id, state=_JOB_STATES.get(_text(element, "job_state"), OTHER),
                        cores=job_cores(resources),
                        submitted=float(_int(_text(element, "qtime"), 0)),
                        queue=_text(element, "queue") or None,
                        nodes=exec_hosts(exec_host),
                        reason=_text(element, "comment") or None))
    return jobs


def job_cores(resources: dict[str, str]) -> int:
    """Cores a job asks for from its Resource_List (``nodes`` = sum of count × ppn)."""
    spec = resources.get("nodes", "")
    if spec:
        return sum(_node_spec_cores(part) for part in spec.split("+"))
    for key in ("procs", "ncpus"):
        if resources.get(key, "").isdigit() and int(resources[key]) > 0:
            return int(resources[key])
    return 1


def _node_spec_cores(part: str) -> int:
    """``2:ppn=4`` -> 8, ``1`` -> 1, ``wn13:ppn=2`` (a named node) -> 2, ``gpu`` -> 1."""
    match = _NODE_SPEC_RE.match(part.strip())
    if not match:
        return 1
    count = int(match[1]) if match[1] else 1
    ppn = 1
    for option in match[2].split(":"):
        found = _PPN_RE.match(option)
        if found:
            ppn = int(found[1])
    return max(count, 1) * max(ppn, 1)


def exec_hosts(exec_host: str) -> tuple[str, ...]:
    """Node names of an ``exec_host`` value (``vm/0-1+w2/0``), in order, once each."""
    names: list[str] = []
    for part in exec_host.split("+"):
        name = part.split("/", 1)[0].strip()
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _xml(text: str, what: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(text.strip().encode())
    except ElementTree.ParseError as err:
        raise BatchFailed(f"{what} printed output that is not XML: {err}") from None


def _text(element: ElementTree.Element, path: str) -> str:
    found = element.find(path)
    return (found.text or "").strip() if found is not None else ""


def _int(text: str, default: int) -> int:
    return int(text) if text.isascii() and text.isdigit() else default


@dataclass(frozen=True)
class Torque:
    runner: Runner
    qmgr: Sequence[str] = ("qmgr",)
    timeout: float = 30.0
    pbsnodes: Sequence[str] = ("pbsnodes",)
    qstat: Sequence[str] = ("qstat",)
    #: ``server_priv/accounting`` of the server: :meth:`watch` follows it ("": no watching)
    accounting: str = ""
    #: where the log follower keeps its position across restarts
    accounting_state: str = ""
    accounting_poll: float = 0.2
    name = "torque"

    def watch(self, wake: Callable[[], None],
              stopped: Callable[[], bool] = lambda: False) -> None:
        """Call ``wake`` whenever the accounting log says a job waits, ends or comes back
        (the log is the trigger; ``qstat -f -x``, read by the caller, is the truth)."""
        if not self.accounting or not self.accounting_state:
            return
        from vaf.batch.torque_log import AccountingFollower, wake_on_records

        follower = AccountingFollower(self.accounting, self.accounting_state,
                                      poll=self.accounting_poll)
        wake_on_records(follower, wake, stopped)

    def jobs(self) -> list[Job]:
        return parse_qstat_xml(self._query([*self.qstat, "-f", "-x"]))

    def nodes(self) -> list[Node]:
        return parse_pbsnodes_xml(self._query([*self.pbsnodes, "-x"]))

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

    def drain(self, name: str, reason: str) -> None:
        """``pbsnodes -o -N <reason> <name>``: offline, running jobs go on."""
        self._change([*self.pbsnodes, "-o", "-N", reason, name])

    def resume(self, name: str) -> None:
        """``pbsnodes -c -N "" <name>``: clear offline and the note."""
        self._change([*self.pbsnodes, "-c", "-N", "", name])

    def remove_node(self, name: str) -> None:
        argv = [*self.qmgr, "-c", qmgr_delete_node(name)]
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode != 0 and QMGR_UNKNOWN not in result.stdout + result.stderr:
            raise batch_failure(argv, result)

    def _query(self, argv: list[str]) -> str:
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode == 0:
            return result.stdout
        if NO_NODES in result.stdout + result.stderr:
            return ""
        raise batch_failure(argv, result)

    def _change(self, argv: list[str]) -> None:
        result = run_batch(self.runner, argv, self.timeout)
        if result.returncode != 0:
            raise batch_failure(argv, result)
