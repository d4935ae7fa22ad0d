"""The elastic daemon's loop: observe, decide (:func:`vaf.elastic.engine.decide`), act, wait.

It waits on a unix datagram socket: Slurm's power-saving programs (``vaf elastic resume`` ...)
write their request into the store and send one datagram, so a waiting job becomes a VM
request within the time of one cycle, and nothing runs in between (no polling) except the
short look every POLL_INTERVAL while a worker boots, drains or stops, and the safety-net look
every RECONCILE_INTERVAL. A batch adapter that can watch its own events (TORQUE's accounting
log) gets :meth:`Daemon.wake` through an optional ``watch(wake)`` method.

Every cycle starts from fresh observations (OpenNebula, the batch system, the store), so no
action is based on a status older than its decision. A system that does not answer is
logged once (and again when it recovers) and simply not acted upon.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from vaf.batch.base import BatchFailed
from vaf.elastic import engine
from vaf.elastic.config import Settings
from vaf.elastic.engine import (
    REFUSED_PREFIX,
    Decision,
    Drain,
    Instantiate,
    PowerUp,
    Record_,
    Refuse,
    Release,
    Squeeze,
    Streak,
    Terminate,
    Undrain,
    Unhold,
    World,
)
from vaf.elastic.states import FAILED
from vaf.elastic.store import Store, wake
from vaf.errors import VafError
from vaf.host.runner import CommandError, Runner
from vaf.one.api import CloudRefused

log = logging.getLogger("vaf-elastic")

#: keep records of gone nodes this long, for ``status``
GONE_KEPT = 3600.0


def squeeze_argv(settings: Settings, on: bool) -> list[str]:
    """The existing CPU-priority command: ``vaf cpu squeeze|release <selection>``."""
    return [*settings.vaf, "cpu", "squeeze" if on else "release", *settings.squeeze]


#: how the worker's slurmd claims its node (vaf.guest.worker reads it)
SLURMD_MODE_KEY = "VAF_SLURMD_MODE"


def join_context(settings: Settings) -> dict[str, str]:
    """The CONTEXT the daemon adds to each worker: power saving resumes nodes slurm.conf
    defines (``State=CLOUD``), which slurmd claims without ``-Z``; JOIN_CONTEXT wins."""
    context = {SLURMD_MODE_KEY: "cloud" if settings.mode == "power-save" else "dynamic"}
    for word in settings.join_context:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise VafError(f"JOIN_CONTEXT: expected KEY=value, got {word!r}")
        context[key] = value
    return context


class Daemon:
    def __init__(self, settings: Settings, store: Store, batch, cloud_factory: Callable,
                 runner: Runner | None = None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.batch = batch
        self.cloud_factory = cloud_factory
        self.runner = runner or Runner()
        self.clock = clock
        self.context = join_context(settings)
        self._cloud = None
        self._complaints: dict[str, str] = {}
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    # --- observing ---
    def _complain(self, what: str, message: str | None) -> None:
        """Log a failing system once, and once more when it answers again."""
        before = self._complaints.get(what)
        if message and message != before:
            log.warning("%s", message)
        elif not message and before:
            log.info("%s answers again", what)
        if message:
            self._complaints[what] = message
        else:
            self._complaints.pop(what, None)

    def cloud(self):
        if self._cloud is None:
            self._cloud = self.cloud_factory()
        return self._cloud

    def observe(self) -> World:
        requests = self.store.pending_requests()
        records = self.store.records()
        try:
            vms = [engine.Vm(v.id, v.name, v.state, v.since) for v in self.cloud().owned_vms()]
            self._complain("OpenNebula", None)
        except VafError as err:
            vms = None
            self._complain("OpenNebula", err.reason)
        try:
            nodes = list(self.batch.nodes())
            jobs = list(self.batch.jobs()) if self.settings.mode == "queue" else []
            self._complain(self.batch.name, None)
        except BatchFailed as err:
            nodes = jobs = None
            self._complain(self.batch.name, err.reason)
        return World(self.clock(), records, jobs, nodes, vms, requests, self.store.streak(),
                     bool(self.store.get("squeezed", False)))

    # --- one cycle ---
    def cycle(self) -> Decision:
        world = self.observe()
        decision = engine.decide(world, self.settings)
        streak = self.execute(decision, world.now)
        self.store.finish_requests(decision.done_requests)
        if not self.settings.dry_run:
            self.store.put_streak(streak)
        self.store.put("last_decision", {"at": world.now, "why": decision.summary,
                                         "actions": [f"{a.verb} {a.name}"
                                                     for a in decision.actions],
                                         "held": list(decision.held)})
        self.store.forget_gone(world.now - GONE_KEPT)
        return decision

    def execute(self, decision: Decision, now: float) -> Streak:
        streak = decision.streak
        for action in decision.actions:
            if self.settings.dry_run:
                log.info("dry run: would %s %s (%s)", action.verb, action.name, action.reason)
                continue
            try:
                vm_id = self._do(action)
            except CloudRefused as err:
                streak = self._refused(action, err, streak, now)
                continue
            except VafError as err:  # the system did not answer: try again next cycle
                log.warning("%s %s: %s", action.verb, action.name, err.reason)
                continue
            if action.state:
                self.store.transition(action.name, action.state, action.reason, vm_id=vm_id,
                                      cores=getattr(action, "cores", 1), now=now)
            if not isinstance(action, Record_) or action.state in (FAILED,):
                log.info("%s %s: %s", action.verb, action.name, action.reason)
        return streak

    def _refused(self, action, err, streak: Streak, now: float) -> Streak:
        """OpenNebula said no to a new VM: the node fails (and, with Slurm power saving,
        goes back to powered-down with the reason); it counts as a failed join."""
        reason = err.reason
        log.warning("%s %s: %s", action.verb, action.name, reason)
        if not isinstance(action, Instantiate):
            return streak
        self.store.transition(action.name, FAILED, reason, now=now)
        if self.settings.mode == "power-save":
            self._hold(action.name, reason)
        return Streak(streak.failures + 1, now, reason)

    def _hold(self, name: str, reason: str) -> None:
        said = f"{REFUSED_PREFIX} {reason}"[:200]
        try:
            self.batch.drain(name, said)
            self.batch.power_down(name, said)
        except BatchFailed as err:
            log.warning("refuse %s: %s", name, err.reason)

    def _do(self, action) -> int | None:
        if isinstance(action, Instantiate):
            return self.cloud().instantiate(self.settings.template_id, action.name,
                                            self.context)
        if isinstance(action, Terminate):
            self.cloud().terminate(action.vm_id)
        elif isinstance(action, Record_):
            return action.vm_id
        elif isinstance(action, Drain):
            self.batch.drain(action.name, f"{REFUSED_PREFIX} {action.reason}")
        elif isinstance(action, (Undrain, Unhold)):
            self.batch.resume(action.name)
        elif isinstance(action, Release):
            self._release(action.name)
        elif isinstance(action, Refuse):
            self._hold(action.name, action.reason)
        elif isinstance(action, PowerUp):
            self.batch.power_up(action.name)
        elif isinstance(action, Squeeze):
            self._squeeze(action.on)
        return None

    def _release(self, name: str) -> None:
        """Power-save: the CLOUD node goes back to powered-down, schedulable again;
        queue mode: the node is deleted from the batch system."""
        if self.settings.mode == "power-save":
            self.batch.power_down(name, f"{REFUSED_PREFIX} VM gone")
            try:
                self.batch.resume(name)  # clear DOWN (after ResumeTimeout) or our drain
            except BatchFailed as err:
                if "Invalid node state" not in err.reason:  # nothing to clear
                    raise
        else:
            self.batch.remove_node(name)

    def _squeeze(self, on: bool) -> None:
        try:
            self.runner.run(squeeze_argv(self.settings, on), timeout=120)
        except CommandError as err:
            log.warning("cpu %s: %s", "squeeze" if on else "release", err.reason)
            return
        self.store.put("squeezed", on)

    # --- the loop ---
    def _bind(self) -> socket.socket:
        path = self.settings.socket
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)  # the power-saving programs run as SlurmUser's group
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        return sock

    def wake(self) -> None:
        wake(self.settings)

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def run(self, ready: Callable[[], None] = lambda: None) -> None:
        self._sock = self._bind()
        if hasattr(self.batch, "watch"):
            threading.Thread(target=self.batch.watch, args=(self.wake, self._stop.is_set),
                             daemon=True,
                             name="batch-events").start()
        ready()
        try:
            while not self._stop.is_set():
                decision = self.cycle()
                self._wait(decision.wake_at - self.clock())
        finally:
            self._sock.close()
            if os.path.exists(self.settings.socket):
                os.unlink(self.settings.socket)

    def _wait(self, seconds: float) -> None:
        """Sleep until woken or ``seconds`` pass; swallow every datagram waiting."""
        readable, _, _ = select.select([self._sock], [], [], max(0.0, seconds))
        while readable:
            self._sock.recv(64)
            readable, _, _ = select.select([self._sock], [], [], 0)


def status(store: Store, now: float) -> dict:
    """What ``vaf elastic status`` shows: each node, its state and age, the last decision."""
    return {"nodes": [{**asdict(r), "age": round(now - r.since, 1)} for r in store.records()],
            "last_decision": store.get("last_decision"),
            "streak": asdict(store.streak()),
            "pending_requests": [asdict(r) for r in store.pending_requests()],
            "squeezed": bool(store.get("squeezed", False))}
