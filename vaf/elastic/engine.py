"""The decisions, as one pure function: (queue, nodes, VMs, records, requests, settings) -> actions.

Nothing here does I/O or reads a clock: :func:`decide` gets everything in a :class:`World`
and returns a :class:`Decision` (the actions, in order, each naming the state its node takes
when it succeeds, the time to look again, and why). The daemon observes, calls it, and acts.

Observations that could not be made are ``None`` (OpenNebula or the batch system did not
answer); nothing is then decided from them: no VM is asked for or terminated without a fresh
list of VMs, no node is drained, joined or released without a fresh list of nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from vaf.batch import base as batch
from vaf.batch.base import Job, Node
from vaf.elastic.config import Settings
from vaf.elastic.states import (
    BOOTING,
    DRAINING,
    ENDING,
    FAILED,
    GONE,
    IDLE,
    JOINED,
    LIVE,
    REQUESTED,
    STOPPING,
    TRANSIENT,
    UPCOMING,
)

#: node states in which a worker has joined the batch system
UP = frozenset({batch.IDLE, batch.BUSY, batch.DRAINING, batch.DRAINED})

# cloud VM states, as :mod:`vaf.one.api` reports them
VM_PENDING = "pending"
VM_BOOTING = "booting"
VM_RUNNING = "running"
VM_FAILED = "failed"
VM_ENDING = "ending"  # shutting down

RESUME = "resume"
SUSPEND = "suspend"
RESUME_FAIL = "resume-fail"


@dataclass(frozen=True)
class Vm:
    id: int
    name: str  # the node name it was started for (its ownership tag)
    state: str
    since: float = 0.0


@dataclass(frozen=True)
class Record:
    name: str
    state: str
    since: float
    vm_id: int | None = None
    cores: int = 1
    reason: str = ""
    requested_at: float = 0.0


@dataclass(frozen=True)
class Request:
    id: int
    kind: str  # RESUME, SUSPEND or RESUME_FAIL
    name: str
    at: float


@dataclass(frozen=True)
class Streak:
    """Joins that failed in a row (reset by a join), and when the last one failed and why."""

    failures: int = 0
    last_at: float = 0.0
    last_reason: str = ""


@dataclass(frozen=True)
class World:
    now: float
    records: Sequence[Record] = ()
    jobs: Sequence[Job] | None = ()
    nodes: Sequence[Node] | None = ()
    vms: Sequence[Vm] | None = ()
    requests: Sequence[Request] = ()
    streak: Streak = Streak()
    squeezed: bool = False


# --- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    name: str
    state: str | None  # the record's state once the action has succeeded (None: unchanged)
    reason: str

    @property
    def verb(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True)
class Record_(Action):
    """Only a state change in the store (the systems already show it)."""

    vm_id: int | None = None


@dataclass(frozen=True)
class Instantiate(Action):
    cores: int = 1


@dataclass(frozen=True)
class Terminate(Action):
    vm_id: int = -1


@dataclass(frozen=True)
class Drain(Action):
    pass


@dataclass(frozen=True)
class Undrain(Action):
    pass


@dataclass(frozen=True)
class Release(Action):
    """Give the node back to the batch system: Slurm powers a CLOUD node down, TORQUE deletes it."""


@dataclass(frozen=True)
class Refuse(Action):
    """Slurm asked for a node we will not start: back to powered-down, held, with the reason."""


@dataclass(frozen=True)
class Unhold(Action):
    """A node we refused earlier may be asked for again (capacity is back)."""


@dataclass(frozen=True)
class PowerUp(Action):
    """Ask Slurm to resume the node (keeps MIN_VMS in power-save mode)."""


@dataclass(frozen=True)
class Squeeze(Action):
    on: bool = True


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    wake_at: float
    why: tuple[str, ...]
    done_requests: tuple[int, ...] = ()
    streak: Streak = Streak()
    held: tuple[str, ...] = ()  # nodes refused and still held

    @property
    def summary(self) -> str:
        return "; ".join(self.why) if self.why else "nothing to do"


# --- the decision ---------------------------------------------------------------------------

@dataclass
class _Plan:
    """The decision being built: actions, the records as they will be, and the reasons."""

    world: World
    settings: Settings
    records: dict[str, Record]
    actions: list[Action] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    wake: list[float] = field(default_factory=list)
    streak: Streak = Streak()
    new_vms: int = 0
    waiting_now: int = 0  # cores of pending jobs (any age)

    def __post_init__(self) -> None:
        # counts kept as records change, so that a decision stays linear in the nodes
        self.live_count = sum(r.state in LIVE for r in self.records.values())
        self.draining = sum(r.state == DRAINING for r in self.records.values())
        self.waiting_now = _waiting_cores(self.world.jobs or (), self.world.now, 0.0)

    def act(self, action: Action) -> None:
        self.actions.append(action)
        if action.state:
            old = self.records.get(action.name)
            old_state = old.state if old else GONE
            self.live_count += (action.state in LIVE) - (old_state in LIVE)
            self.draining += (action.state == DRAINING) - (old_state == DRAINING)
            vm_id = getattr(action, "vm_id", None)
            self.records[action.name] = Record(
                action.name, action.state, self.world.now,
                vm_id=vm_id if vm_id not in (None, -1) else (old.vm_id if old else None),
                cores=getattr(action, "cores", old.cores if old else self.settings.cores_per_vm),
                reason=action.reason, requested_at=old.requested_at if old else self.world.now)


    def fail(self, reason: str) -> None:
        self.streak = Streak(self.streak.failures + 1, self.world.now, reason)

    def blocked(self) -> str | None:
        """Why no VM may be asked for now (the broken-image brake), or None."""
        s, streak = self.settings, self.streak
        if streak.failures < s.max_join_failures:
            return None
        retry_at = streak.last_at + s.failure_backoff
        probing = any(r.state in UPCOMING for r in self.records.values())
        if self.world.now < retry_at or probing:
            if not probing:
                self.wake.append(retry_at)
            return (f"stopped asking for VMs: {streak.failures} joins failed in a row "
                    f"(last: {streak.last_reason}); one more try "
                    + ("is on its way" if probing else f"in {retry_at - self.world.now:.0f} s"))
        return None

    def room(self) -> int:
        """How many more VMs may be asked for in this decision (quota, rate, brake)."""
        if self.blocked():
            return 0
        if self.streak.failures >= self.settings.max_join_failures:
            return 1 - self.new_vms  # the one trial after the back-off
        quota = self.settings.max_vms - self.live_count
        return max(0, min(quota, self.settings.max_requests_per_cycle - self.new_vms))


def decide(world: World, settings: Settings) -> Decision:
    plan = _Plan(world, settings, {r.name: r for r in world.records}, streak=world.streak)
    nodes = None if world.nodes is None else {n.name: n for n in world.nodes}
    vms = None if world.vms is None else _vms_by_name(world.vms, plan)
    if vms is not None:
        _adopt(plan, vms)
    done = _requests(plan, nodes)
    for record in list(plan.records.values()):
        _follow(plan, record, nodes, vms)
    if settings.mode == "queue" and world.jobs is not None and nodes is not None:
        _grow_for_queue(plan, world.jobs, nodes)
    _keep_minimum(plan, nodes)
    _instantiate_requested(plan, vms)
    held = _unhold(plan, nodes)
    _squeeze(plan)
    block = plan.blocked()
    if block:
        plan.why.append(block)
    transient = any(r.state in TRANSIENT for r in plan.records.values())
    wake = [world.now + settings.reconcile_interval, *plan.wake]
    if transient:
        wake.append(world.now + settings.poll_interval)
    return Decision(tuple(plan.actions), min(wake), tuple(plan.why), tuple(done), plan.streak,
                    held)


def _vms_by_name(vms: Sequence[Vm], plan: _Plan) -> dict[str, Vm]:
    """One VM per name; a second one for the same name (never asked for twice, but a crash
    between OpenNebula's answer and the store could leave one) is terminated."""
    by_name: dict[str, Vm] = {}
    for vm in sorted(vms, key=lambda v: v.id):
        if vm.state == VM_ENDING:
            continue
        if vm.name in by_name:
            plan.actions.append(Terminate(vm.name, None, "a second VM for the same node",
                                          vm_id=vm.id))
            plan.why.append(f"{vm.name}: terminate duplicate VM {vm.id}")
            continue
        by_name[vm.name] = vm
    return by_name


def _adopt(plan: _Plan, vms: dict[str, Vm]) -> None:
    """OpenNebula is the truth about VMs: ours that the store does not know become records."""
    for name, vm in vms.items():
        record = plan.records.get(name)
        if record is None or record.state == GONE:
            plan.act(Record_(name, BOOTING, f"VM {vm.id} found in OpenNebula", vm_id=vm.id))
            plan.why.append(f"{name}: adopted VM {vm.id}")
        elif record.state == REQUESTED:
            plan.act(Record_(name, BOOTING, f"VM {vm.id} is ours", vm_id=vm.id))


def _requests(plan: _Plan, nodes: dict[str, Node] | None) -> list[int]:
    """Slurm's power-saving calls, oldest first: resume asks for a node, suspend ends one."""
    done = []
    for request in sorted(plan.world.requests, key=lambda r: (r.at, r.id)):
        record = plan.records.get(request.name)
        state = record.state if record else GONE
        if request.name not in plan.settings.nodes:
            plan.why.append(f"{request.name}: {request.kind} ignored, not one of NODES")
        elif request.kind == RESUME:
            _resume(plan, request, state)
        elif request.kind in (SUSPEND, RESUME_FAIL) and state in LIVE:
            failed = request.kind == RESUME_FAIL
            reason = ("Slurm gave up waiting for it (ResumeTimeout)" if failed
                      else "Slurm suspended it (idle for SuspendTime)")
            _end(plan, record, FAILED if failed else STOPPING, reason)
            if failed:
                plan.fail(reason)
        done.append(request.id)
    return done


def _resume(plan: _Plan, request: Request, state: str) -> None:
    if state in LIVE:
        return  # Slurm asked again for a node on its way: nothing new
    if state in ENDING:
        plan.act(Refuse(request.name, None, "its previous VM is still being terminated"))
        plan.why.append(f"{request.name}: refused, previous VM still terminating")
        return
    block = plan.blocked()
    if block or plan.room() <= 0:
        reason = block or f"quota reached ({plan.settings.max_vms} VMs)"
        plan.act(Refuse(request.name, None, reason))
        plan.why.append(f"{request.name}: refused, {reason}")
        return
    plan.act(Record_(request.name, REQUESTED, "Slurm resumed it"))
    plan.new_vms += 1


def _end(plan: _Plan, record: Record, state: str, reason: str) -> None:
    """Terminate the record's VM (or just forget it when it has none yet)."""
    if record.vm_id is None:
        plan.act(Record_(record.name, state, reason))
    else:
        plan.act(Terminate(record.name, state, reason, vm_id=record.vm_id))
    plan.why.append(f"{record.name}: {state}, {reason}")


def _follow(plan: _Plan, record: Record, nodes: dict[str, Node] | None,
            vms: dict[str, Vm] | None) -> None:
    """One record against what the systems show now."""
    node = nodes.get(record.name) if nodes is not None else None
    vm = vms.get(record.name) if vms is not None else None
    # A VM missing from a list taken after the record changed is really gone.
    vm_gone = vms is not None and vm is None and record.vm_id is not None
    if record.state in ENDING:
        _finish(plan, record, nodes, vm, vm_gone)
        return
    if record.state not in LIVE or record.state == REQUESTED:
        return
    if vm_gone:
        plan.act(Record_(record.name, FAILED, f"VM {record.vm_id} vanished from OpenNebula"))
        plan.why.append(f"{record.name}: VM {record.vm_id} vanished")
        if record.state == BOOTING:
            plan.fail(f"VM {record.vm_id} vanished while booting")
        return
    if vm is not None and vm.state == VM_FAILED:
        _end(plan, record, FAILED, f"VM {vm.id} failed in OpenNebula")
        if record.state == BOOTING:
            plan.fail(f"VM {vm.id} failed in OpenNebula")
        return
    if nodes is None:
        return
    if record.state != BOOTING and (node is None or node.state == batch.DOWN):
        _stale(plan, record, node)
    elif record.state == BOOTING:
        _booting(plan, record, node)
    elif record.state in (JOINED, IDLE):
        _running(plan, record, node)
    elif record.state == DRAINING:
        _draining(plan, record, node)


def _stale(plan: _Plan, record: Record, node: Node | None) -> None:
    """A joined worker whose node is down or missing: removed after STALE_THRESHOLD."""
    s = plan.settings
    since = max(record.since, node.since or 0.0) if node is not None else record.since
    if plan.world.now - since >= s.stale_threshold:
        _end(plan, record, STOPPING, f"node {'missing' if node is None else 'down'} for "
             f"{plan.world.now - since:.0f} s")
    else:
        plan.wake.append(since + s.stale_threshold)


def _booting(plan: _Plan, record: Record, node: Node | None) -> None:
    now, s = plan.world.now, plan.settings
    if node is not None and node.state in UP:
        state = JOINED if node.state == batch.BUSY else IDLE
        plan.act(Record_(record.name, state, f"joined after {now - record.requested_at:.1f} s"))
        plan.why.append(f"{record.name}: joined")
        plan.streak = Streak()
    elif now - record.since >= s.deploy_timeout:
        reason = f"did not join within {s.deploy_timeout:.0f} s"
        _end(plan, record, FAILED, reason)
        plan.fail(reason)
    else:
        plan.wake.append(record.since + s.deploy_timeout)


def _running(plan: _Plan, record: Record, node: Node | None) -> None:
    now, s = plan.world.now, plan.settings
    if node is None or node.state not in UP:
        return
    if node.state == batch.BUSY:
        if record.state != JOINED:
            plan.act(Record_(record.name, JOINED, "runs a job"))
        return
    if node.state in (batch.DRAINING, batch.DRAINED):
        return  # an admin drained it: leave it to them
    if record.state != IDLE:
        plan.act(Record_(record.name, IDLE, "no job"))
        record = plan.records[record.name]
    if s.idle_threshold <= 0:
        return
    idle_for = now - record.since
    if idle_for < s.idle_threshold:
        plan.wake.append(record.since + s.idle_threshold)
    elif plan.live_count - plan.draining <= s.min_vms:
        return
    elif plan.waiting_now > 0 and s.mode == "queue":
        return  # jobs wait that this node may run: keep it
    else:
        plan.act(Drain(record.name, DRAINING, f"idle for {idle_for:.0f} s"))
        plan.why.append(f"{record.name}: drain, idle for {idle_for:.0f} s")


def _draining(plan: _Plan, record: Record, node: Node | None) -> None:
    if node is None or node.state not in UP:
        return
    if node.state in (batch.BUSY, batch.DRAINING):
        plan.act(Undrain(record.name, JOINED, "picked up a job while draining"))
        plan.why.append(f"{record.name}: put back, it picked up a job")
    else:
        _end(plan, record, STOPPING, "drained")


def _finish(plan: _Plan, record: Record, nodes: dict[str, Node] | None, vm: Vm | None,
            vm_gone: bool) -> None:
    """STOPPING/FAILED: the VM goes first, then the node is given back, then the record."""
    now, s = plan.world.now, plan.settings
    if vm is not None:
        if record.vm_id is not None and now - record.since >= s.terminate_retry:
            plan.act(Terminate(record.name, record.state, "still listed, asking again",
                               vm_id=vm.id))
        plan.wake.append(record.since + s.terminate_retry)
        return
    if not (vm_gone or record.vm_id is None) or nodes is None:
        return
    node = nodes.get(record.name)
    if node is None:
        plan.act(Record_(record.name, GONE, record.reason))
    elif s.mode == "power-save" and record.state == STOPPING and node.state == batch.POWERED_DOWN:
        plan.act(Record_(record.name, GONE, record.reason))  # Slurm powers it down itself
    else:
        # a failed worker's node may still be powering up (Slurm would wait ResumeTimeout,
        # then mark it DOWN): give it back now, so its jobs go elsewhere at once
        plan.act(Release(record.name, GONE, record.reason))


def _waiting_cores(jobs: Sequence[Job], now: float, threshold: float) -> int:
    return sum(j.cores for j in jobs if j.state == batch.PENDING and now - j.submitted >= threshold)


def _grow_for_queue(plan: _Plan, jobs: Sequence[Job], nodes: dict[str, Node]) -> None:
    """Queue mode: enough VMs for the cores that have waited past the threshold."""
    now, s = plan.world.now, plan.settings
    waiting = _waiting_cores(jobs, now, s.wait_threshold)
    young = [j.submitted + s.wait_threshold for j in jobs
             if j.state == batch.PENDING and now - j.submitted < s.wait_threshold]
    plan.wake.extend(young)
    upcoming = sum(r.cores for r in plan.records.values() if r.state in UPCOMING)
    idle = sum(plan.records[n].cores for n in plan.records
               if plan.records[n].state == IDLE)
    short = waiting - upcoming - idle
    if short <= 0:
        return
    wanted = math.ceil(short / s.cores_per_vm)
    room = plan.room()
    names = _free_names(plan, nodes)[:min(wanted, room)]
    for name in names:
        plan.act(Record_(name, REQUESTED, f"{waiting} cores waiting"))
        plan.new_vms += 1
    if names:
        plan.why.append(f"{waiting} cores wait, {upcoming} on their way: asking for "
                        f"{len(names)} VM(s)")
    if len(names) < wanted:
        plan.why.append(f"{wanted - len(names)} more VM(s) wanted, "
                        + (plan.blocked() or f"quota {s.max_vms} / rate "
                           f"{s.max_requests_per_cycle} per cycle"))


def _free_names(plan: _Plan, nodes: dict[str, Node] | None) -> list[str]:
    """Names of NODES with no record in use; in queue mode also absent from the batch system."""
    taken = {n for n, r in plan.records.items() if r.state != GONE}
    taken |= set(plan.settings.static_nodes)
    if plan.settings.mode == "queue" and nodes is not None:
        taken |= set(nodes)
    if plan.settings.mode == "power-save" and nodes is not None:
        taken |= {n for n, node in nodes.items() if node.state != batch.POWERED_DOWN}
    return [n for n in plan.settings.nodes if n not in taken]


def _keep_minimum(plan: _Plan, nodes: dict[str, Node] | None) -> None:
    s = plan.settings
    missing = s.min_vms - plan.live_count
    if missing <= 0 or nodes is None or plan.room() <= 0:
        return
    for name in _free_names(plan, nodes)[:min(missing, plan.room())]:
        if s.mode == "power-save":
            plan.act(PowerUp(name, None, f"MIN_VMS is {s.min_vms}"))
        else:
            plan.act(Record_(name, REQUESTED, f"MIN_VMS is {s.min_vms}"))
            plan.new_vms += 1
        plan.why.append(f"{name}: keeping MIN_VMS {s.min_vms}")


def _instantiate_requested(plan: _Plan, vms: dict[str, Vm] | None) -> None:
    """Ask OpenNebula for every requested node, but only with a fresh list of VMs in hand
    (a request whose answer was lost may have created the VM: it would be listed)."""
    if vms is None:
        if any(r.state == REQUESTED for r in plan.records.values()):
            plan.why.append("OpenNebula did not answer: requests wait")
        return
    for record in list(plan.records.values()):
        if record.state == REQUESTED and record.name not in vms:
            plan.act(Instantiate(record.name, BOOTING, record.reason, cores=record.cores))


def _unhold(plan: _Plan, nodes: dict[str, Node] | None) -> tuple[str, ...]:
    """Nodes we refused stay held (drained, powered down) until there is room again."""
    if nodes is None:
        return ()
    held = [n for n in plan.settings.nodes if n in nodes and nodes[n].state == batch.DRAINED
            and nodes[n].reason and nodes[n].reason.startswith(REFUSED_PREFIX)
            and (n not in plan.records or plan.records[n].state == GONE)]
    room = plan.room()
    for name in held[:room]:
        plan.act(Unhold(name, None, "room again"))
    return tuple(held[room:])


REFUSED_PREFIX = "vaf elastic:"


def _squeeze(plan: _Plan) -> None:
    if not plan.settings.squeeze:
        return
    working = any(r.state in (JOINED, IDLE, DRAINING) for r in plan.records.values())
    anything = plan.live_count > 0 or any(r.state in ENDING for r in plan.records.values())
    if working and not plan.world.squeezed:
        plan.act(Squeeze("cpu", None, "workers run: squeeze the batch clusters", on=True))
    elif not anything and plan.world.squeezed:
        plan.act(Squeeze("cpu", None, "last worker gone: release the batch clusters", on=False))


def with_state(record: Record, state: str, now: float, **changes) -> Record:
    return replace(record, state=state, since=now, **changes)
