"""A stand-in for OpenNebula's XML-RPC API server (oned's ``/RPC2``), for the elastic daemon.

It speaks the real protocol to the real pyone client: the ``one.*`` method names and
arguments, answers as ``[success, result-or-message, error-code, ...]``, the error codes
(authentication 0x0100, authorization 0x0200, no such object 0x0400, action 0x0800) and the
VM and pool documents of OpenNebula's schemas (``vm.xsd``: a full VM; ``vm_pool.xsd``: the
pool's short VM with the CPU/MEMORY/VCPU template and the whole user template). Attributes
given at instantiation that are not OpenNebula's own go to the user template, as oned does.

Its VMs are real workers: ``boot_delay`` seconds after instantiation a :class:`Workers`
starts one (for Slurm, a real ``slurmd`` claiming its CLOUD node) and terminate stops it.
Each VM can be told how to behave (:data:`BEHAVIOURS`). :meth:`OneApi.down` closes the port
(clients get "connection refused", VMs keep running) and :meth:`OneApi.up` opens it again.
"""

from __future__ import annotations

import html
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from lxml import etree

from vaf.lab.daemons import free_port

AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800

# VM STATE / LCM_STATE numbers
PENDING, ACTIVE, DONE = 1, 3, 6
LCM_INIT, LCM_PROLOG, LCM_BOOT, LCM_RUNNING, LCM_BOOT_FAILURE = 0, 1, 2, 3, 36
LCM_EPILOG, LCM_PROLOG_FAILURE = 11, 39

OK = "ok"
FAIL = "fail"  # BOOT_FAILURE, no worker
NEVER_BOOT = "never-boot"  # stays in BOOT forever
NO_JOIN = "no-join"  # RUNNING, but its worker never joins
BEHAVIOURS = (OK, FAIL, NEVER_BOOT, NO_JOIN)

#: template attributes oned keeps in the VM's TEMPLATE; everything else is the user's
SYSTEM_ATTRIBUTES = {"CPU", "VCPU", "MEMORY", "DISK", "NIC", "CONTEXT", "OS", "GRAPHICS",
                     "FEATURES", "INPUT", "RAW", "TEMPLATE_ID", "VMID", "AUTOMATIC_REQUIREMENTS"}


class Workers:
    """What a booted VM runs; the default runs nothing."""

    def start(self, vm: Vm) -> None:
        pass

    def stop(self, vm: Vm) -> None:
        pass


@dataclass
class Vm:
    id: int
    name: str
    template: dict[str, object]  # TEMPLATE (CONTEXT a dict)
    user_template: dict[str, str]
    behaviour: str = OK
    state: int = PENDING
    lcm_state: int = LCM_INIT
    stime: int = field(default_factory=lambda: int(time.time()))
    etime: int = 0
    worker: bool = False
    booted: float = 0.0  # when its worker was started

    @property
    def context(self) -> dict[str, str]:
        context = self.template.get("CONTEXT")
        return context if isinstance(context, dict) else {}


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)

    def log_message(self, *args) -> None:  # quiet
        pass


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class OneApi:
    session: str = "oneadmin:lab-password"
    workers: Workers = field(default_factory=Workers)
    boot_delay: float = 0.5
    quota_vms: int | None = None  # the user's VMS quota
    first_id: int = 0  # the first VM's ID (oned counts on from the last VM it ever made)
    port: int = field(default_factory=free_port)
    templates: dict[int, dict[str, object]] = field(
        default_factory=lambda: {0: {"NAME": "worker", "CPU": "1", "VCPU": "1",
                                     "MEMORY": "512", "CONTEXT": {"NETWORK": "YES"}}})
    vms: dict[int, Vm] = field(default_factory=dict)
    calls: list[tuple[str, tuple, float]] = field(default_factory=list)  # name, args, time
    #: behaviour of the next VMs, consumed first; then ``default_behaviour``
    next_behaviours: list[str] = field(default_factory=list)
    default_behaviour: str = OK
    #: what oned's deploy does before the VM runs (the demo: lvmsnap's prolog on the test
    #: hypervisor, the NICs' VNM post, the CPU class): called in PROLOG; raising fails the VM
    #: (PROLOG_FAILURE)
    on_deploy: Callable[[Vm], None] | None = None
    #: what terminate does after the VM's worker stopped (the epilog): the VM is ACTIVE/EPILOG
    #: until it returns, then DONE
    on_undeploy: Callable[[Vm], None] | None = None

    def __post_init__(self) -> None:
        self._ids = itertools.count(self.first_id)
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._timers: list[threading.Timer] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    # --- serving ---
    def up(self) -> OneApi:
        server = _Server(("127.0.0.1", self.port), requestHandler=_Handler, logRequests=False,
                         allow_none=False)
        for name, method in self._methods().items():
            server.register_function(self._guarded(name, method), name)
        threading.Thread(target=server.serve_forever, daemon=True, name="one-api").start()
        self._server = server
        return self

    def down(self) -> None:
        """The API stops answering (connection refused); the cloud's VMs go on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        """Down, and every VM's worker stopped (end of a test)."""
        self.down()
        for timer in self._timers:
            timer.cancel()
        with self._lock:
            for vm in self.vms.values():
                if vm.worker:
                    self.workers.stop(vm)
                    vm.worker = False

    def _methods(self) -> dict[str, Callable]:
        return {"one.system.version": self.system_version,
                "one.template.info": self.template_info,
                "one.template.instantiate": self.template_instantiate,
                "one.vm.action": self.vm_action,
                "one.vm.info": self.vm_info,
                "one.vmpool.info": self.vmpool_info}

    def _guarded(self, name: str, method: Callable) -> Callable:
        def call(session, *args):
            with self._lock:
                self.calls.append((name, args, time.time()))
                if session != self.session:
                    return [False, f"[{name}] User couldn't be authenticated, aborting call.",
                            AUTHENTICATION]
                try:
                    return [True, method(*args), 0]
                except _Refusal as refusal:
                    return [False, f"[{name}] {refusal.message}", refusal.code, refusal.object_id]
        return call

    # --- one.* methods ---
    def system_version(self) -> str:
        return "6.10.0"

    def template_info(self, template_id: int, extended: bool = False,
                      decrypt: bool = False) -> str:
        return _template_document(template_id, self._template(template_id))

    def _template(self, template_id: int) -> dict[str, object]:
        if template_id not in self.templates:
            raise _Refusal(NO_EXISTS, f"Error getting template [{template_id}].", template_id)
        return self.templates[template_id]

    def template_instantiate(self, template_id: int, name: str, hold: bool = False,
                             extra: str = "", persistent: bool = False) -> int:
        base = self._template(template_id)
        live = sum(vm.state != DONE for vm in self.vms.values())
        if self.quota_vms is not None and live >= self.quota_vms:
            raise _Refusal(ACTION, f"User [0] : user [0] limit of {self.quota_vms} reached for "
                           "VMS quota in user [0].", -1)
        merged = dict(base)
        merged.update(_parse_extra(extra))  # oned replaces a vector (CONTEXT) given again
        system = {k: v for k, v in merged.items() if k in SYSTEM_ATTRIBUTES}
        system["TEMPLATE_ID"] = str(template_id)
        user = {k: str(v) for k, v in merged.items()
                if k not in SYSTEM_ATTRIBUTES and k != "NAME" and not isinstance(v, dict)}
        vm_id = next(self._ids)
        behaviour = self.next_behaviours.pop(0) if self.next_behaviours else \
            self.default_behaviour
        vm = Vm(vm_id, name or f"{base.get('NAME', 'vm')}-{vm_id}", system, user, behaviour)
        self.vms[vm_id] = vm
        vm.state, vm.lcm_state = ACTIVE, LCM_PROLOG
        timer = threading.Timer(self.boot_delay, self._boot, (vm,))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return vm_id

    def _boot(self, vm: Vm) -> None:
        if self.on_deploy is not None and vm.behaviour in (OK, NO_JOIN):
            try:
                self.on_deploy(vm)  # outside the lock: a prolog takes a while
            except Exception:  # noqa: BLE001 - oned marks the VM, the caller's hook logs
                with self._lock:
                    vm.lcm_state = LCM_PROLOG_FAILURE
                return
        with self._lock:
            if vm.state == DONE:
                return
            if vm.behaviour == FAIL:
                vm.lcm_state = LCM_BOOT_FAILURE
                return
            if vm.behaviour == NEVER_BOOT:
                vm.lcm_state = LCM_BOOT
                return
            vm.lcm_state = LCM_RUNNING
            if vm.behaviour == NO_JOIN:
                return
            vm.worker = True
            vm.booted = time.time()
        self.workers.start(vm)  # outside the lock: a worker may take a while to start

    def vm_action(self, action: str, vm_id: int) -> int:
        vm = self._vm(vm_id)
        if action not in ("terminate", "terminate-hard"):
            raise _Refusal(ACTION, f"Action {action} not supported by this stand-in", vm_id)
        if vm.state == DONE:
            raise _Refusal(ACTION, f"Error performing action \"{action}\": This action is not "
                           "available for state DONE", vm_id)
        if vm.worker:
            self.workers.stop(vm)
            vm.worker = False
        if self.on_undeploy is not None and vm.lcm_state != LCM_EPILOG:
            vm.lcm_state = LCM_EPILOG
            threading.Thread(target=self._undeploy, args=(vm,), daemon=True,
                             name=f"epilog-{vm.id}").start()
            return vm_id
        vm.state, vm.lcm_state, vm.etime = DONE, LCM_INIT, int(time.time())
        return vm_id

    def _undeploy(self, vm: Vm) -> None:
        try:
            self.on_undeploy(vm)
        finally:
            with self._lock:
                vm.state, vm.lcm_state, vm.etime = DONE, LCM_INIT, int(time.time())

    def _vm(self, vm_id: int) -> Vm:
        if vm_id not in self.vms:
            raise _Refusal(NO_EXISTS, f"Error getting virtual machine [{vm_id}].", vm_id)
        return self.vms[vm_id]

    def vm_info(self, vm_id: int, decrypt: bool = False) -> str:
        return vm_document(self._vm(vm_id))

    def vmpool_info(self, who: int, start: int, end: int, state: int) -> str:
        """``state`` -2: any, -1: any but DONE, else that STATE; ``start``/``end`` -1: all."""
        pool = etree.Element("VM_POOL")
        for vm in sorted(self.vms.values(), key=lambda v: v.id):
            if (state == -1 and vm.state == DONE) or (state >= 0 and vm.state != state):
                continue
            if start >= 0 and vm.id < start or end >= 0 and vm.id > end:
                continue
            pool.append(_vm_element(vm, full=False))
        return etree.tostring(pool, encoding="unicode")

    # --- for tests ---
    def live(self) -> list[Vm]:
        with self._lock:
            return [vm for vm in self.vms.values() if vm.state != DONE]

    def count(self, method: str) -> int:
        return sum(name == method for name, *_ in self.calls)


class _Refusal(Exception):
    def __init__(self, code: int, message: str, object_id: int):
        super().__init__(message)
        self.code, self.message, self.object_id = code, message, object_id


def _parse_extra(extra: str) -> dict[str, object]:
    """The extra template pyone sends for a nested dict: ``<TEMPLATE>...</TEMPLATE>`` XML."""
    if not extra.strip():
        return {}
    if not extra.lstrip().startswith("<"):
        raise _Refusal(ACTION, "this stand-in takes the extra template as XML", -1)
    root = etree.fromstring(extra.encode("utf-8"))
    return {child.tag: ({g.tag: g.text or "" for g in child} if len(child) else child.text or "")
            for child in root}


def _sub(parent, tag: str, text: object = None):
    element = etree.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def _attributes(parent, values: dict[str, object]) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _attributes(_sub(parent, key), value)
        else:
            _sub(parent, key, html.unescape(str(value)))


def vm_document(vm: Vm) -> str:
    """The whole ``<VM>`` document oned gives for ``vm`` (``one.vm.info``, a hook's
    ``$TEMPLATE``)."""
    return etree.tostring(_vm_element(vm, full=True), encoding="unicode")


def _vm_element(vm: Vm, full: bool):
    element = etree.Element("VM")
    for tag, value in (("ID", vm.id), ("UID", 0), ("GID", 0), ("UNAME", "oneadmin"),
                       ("GNAME", "oneadmin"), ("NAME", vm.name)):
        _sub(element, tag, value)
    if full:
        permissions = _sub(element, "PERMISSIONS")
        for tag in ("OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A",
                    "OTHER_U", "OTHER_M", "OTHER_A"):
            _sub(permissions, tag, 1 if tag in ("OWNER_U", "OWNER_M") else 0)
    _sub(element, "LAST_POLL", 0)
    _sub(element, "STATE", vm.state)
    _sub(element, "LCM_STATE", vm.lcm_state)
    if full:
        _sub(element, "PREV_STATE", vm.state)
        _sub(element, "PREV_LCM_STATE", vm.lcm_state)
    for tag, value in (("RESCHED", 0), ("STIME", vm.stime), ("ETIME", vm.etime),
                       ("DEPLOY_ID", f"one-{vm.id}" if vm.lcm_state == LCM_RUNNING else "")):
        _sub(element, tag, value)
    template = {k: v for k, v in vm.template.items()
                if full or k in ("CPU", "MEMORY", "VCPU")}
    if full:
        _sub(element, "MONITORING")
        _attributes(_sub(element, "TEMPLATE"), {**template, "VMID": str(vm.id)})
    else:
        _attributes(_sub(element, "TEMPLATE"), template)
        _sub(element, "MONITORING")
    _attributes(_sub(element, "USER_TEMPLATE"), vm.user_template)
    _sub(element, "HISTORY_RECORDS")
    if full:
        backups = _sub(element, "BACKUPS")
        _sub(backups, "BACKUP_CONFIG")
        _sub(backups, "BACKUP_IDS")
    return element


def _template_document(template_id: int, template: dict[str, object]) -> str:
    element = etree.Element("VMTEMPLATE")
    for tag, value in (("ID", template_id), ("UID", 0), ("GID", 0), ("UNAME", "oneadmin"),
                       ("GNAME", "oneadmin"), ("NAME", template.get("NAME", "worker"))):
        _sub(element, tag, value)
    _sub(element, "LOCK")
    permissions = _sub(element, "PERMISSIONS")
    for tag in ("OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A", "OTHER_U",
                "OTHER_M", "OTHER_A"):
        _sub(permissions, tag, 1 if tag in ("OWNER_U", "OWNER_M") else 0)
    _sub(element, "REGTIME", 0)
    _attributes(_sub(element, "TEMPLATE"), template)
    return etree.tostring(element, encoding="unicode")


class SlurmWorkers(Workers):
    """A booted VM is a real ``slurmd -N <name>`` claiming its CLOUD node of the lab's Slurm."""

    def __init__(self, slurm):
        self.slurm = slurm

    def start(self, vm: Vm) -> None:
        name = vm.context.get("VAF_NODE") or vm.name
        self.slurm.start_cloud_slurmd(name)

    def stop(self, vm: Vm) -> None:
        self.slurm.stop_slurmd(vm.context.get("VAF_NODE") or vm.name)
