"""CPU priority of KVM VMs: the template's class after deploy, squeeze/release by the admin.

Two entry points run on the hypervisor after a VM starts, both idempotent (install one or both):

* ``remotes/vnm/<VN_MAD>/post.d/vaf-cpu-priority``: the VNM extension step, run by stock
  network drivers after deploy, restore and live migration, argv ``<deploy_id> <host>``,
  stdin the base64 VM XML (synchronous; only for VMs with a NIC of that VN_MAD);
* ``remotes/hooks/cpu-priority/vaf-cpu-priority``: a RUNNING state hook (``REMOTE=YES``,
  ``ARGUMENTS=$TEMPLATE``, see ``share/hooks/cpu-priority.hook``): every VM, any network.

Both read the class from the VM template attribute (``CPU_PRIORITY`` by default) and have the
one privileged entry point apply it (``sudo -n /usr/lib/vaf/vaf-privileged cpu-apply``, the
request on stdin: :mod:`vaf.drivers.cpu_host`). The classes live in
``<remotes>/etc/vaf/cpu-priority.conf``; the admin command (:mod:`vaf.drivers.cpu_cli`) reads
the same file on the front-end. Stdlib only at import time: this runs on hypervisors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from vaf.config import DriverConfig, load_config
from vaf.drivers import cpu_host
from vaf.drivers.cpu_host import DEFAULT_PRIVILEGED, run_privileged
from vaf.errors import ConfigError, DriverError
from vaf.host.cpu import Priority
from vaf.host.runner import DEFAULT_SSH, DEFAULT_SUDO, Runner
from vaf.one.dispatch import Invocation
from vaf.one.log import DriverLog
from vaf.one.xml import VM, decode_payload

CONF = os.path.join("etc", "vaf", "cpu-priority.conf")

#: classes when the conf file names none: nice of every thread, weight vs. the original
DEFAULT_CLASSES = {
    "interactive": "nice=-5 weight=400%",
    "normal": "nice=0 weight=100%",
    "batch": "nice=19 weight=10%",
}


def parse_class(label: str, text: str, where: str) -> Priority:
    """``"nice=19 weight=10%"`` → a :class:`Priority` (weight optional: nice only)."""
    values = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep or key not in ("nice", "weight") or key in values:
            raise ConfigError(f"{where}: expected 'nice=N [weight=P%|weight=SHARES]', "
                              f"got {text!r}")
        values[key] = value
    if "nice" not in values or not _is_int(values["nice"]):
        raise ConfigError(f"{where}: nice must be an integer, got {text!r}")
    return Priority(label, int(values["nice"]), values.get("weight", ""))


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1


@dataclass(frozen=True)
class Settings:
    attribute: str
    classes: Mapping[str, Priority]
    squeeze_class: str
    privileged: str  # the privileged entry point on hypervisors
    python: str
    sudo: tuple[str, ...]
    ssh: tuple[str, ...]
    host_remotes: str  # the remotes tree on hypervisors (for the admin command)
    onevm: tuple[str, ...]
    parallel: int

    @classmethod
    def from_config(cls, config: DriverConfig) -> Settings:
        names = [n.lower() for n in config.list("CLASSES", tuple(DEFAULT_CLASSES))]
        classes = {}
        for name in names:
            key = f"CLASS_{name.upper()}"
            text = config.str(key, DEFAULT_CLASSES.get(name, ""))
            if not text:
                raise ConfigError(f"{key} in {config.source} is missing: class {name!r} is "
                                  f"listed in CLASSES")
            classes[name] = parse_class(name, text, f"{key} in {config.source}")
        squeeze = config.str("SQUEEZE_CLASS", "batch").lower()
        if squeeze not in classes:
            raise ConfigError(f"SQUEEZE_CLASS in {config.source} must be one of "
                              f"{', '.join(classes)}, got {squeeze!r}")
        return cls(attribute=config.str("ATTRIBUTE", "CPU_PRIORITY"),
                   classes=MappingProxyType(classes), squeeze_class=squeeze,
                   privileged=config.str("PRIVILEGED", DEFAULT_PRIVILEGED),
                   python=config.str("PYTHON", "python3"),
                   sudo=config.argv("SUDO", DEFAULT_SUDO), ssh=config.argv("SSH", DEFAULT_SSH),
                   host_remotes=config.str("HOST_REMOTES", "/var/tmp/one"),
                   onevm=config.argv("ONEVM", ("onevm",)),
                   parallel=config.int("PARALLEL", 16, minimum=1, maximum=256))

    @classmethod
    def load(cls, path: str, environ: Mapping[str, str] | None = None) -> Settings:
        return cls.from_config(load_config(path, environ))

    @property
    def runner(self) -> Runner:
        return Runner(ssh=self.ssh, sudo_prefix=self.sudo)

    def priority(self, label: str, where: str) -> Priority:
        found = self.classes.get(label.strip().lower())
        if found is None:
            raise DriverError(f"{where} must be one of {', '.join(self.classes)}, "
                              f"got {label!r}")
        return found

    def host_params(self, request: Mapping[str, object]) -> dict:
        """Parameters of ``host-command cpu-<verb>`` for ``request``."""
        return cpu_host.host_params(self.privileged, self.sudo, request)


def apply_request(priority: Priority, layer: str, vmids: Sequence[int]) -> dict:
    """The privileged program's ``cpu-apply`` request."""
    return {"layer": layer, "label": priority.label, "nice": priority.nice,
            "weight": priority.weight, "vmids": list(vmids)}


def describe(vm: dict) -> str:
    """One line for a VM's result: what is in force now, or why nothing was done."""
    status = vm["status"]
    if status == "error":
        return f"failed: {vm['reason']}"
    if status == "gone":
        text = "skipped: not running on this host"
    elif vm.get("class"):
        text = f"{status}: class {vm['class']}"
    else:
        text = f"{status}: original priority"
    if "threads" in vm:
        text += f", nice {vm['nice']} on {vm['threads']} threads"
    if vm.get("thread_nice"):
        text += ", threads by nice " + " ".join(f"{n}:{c}" for n, c in vm["thread_nice"].items())
    weight = vm.get("weight")
    if weight:
        text += f", {os.path.basename(weight['file'])} {weight['value']}"
    if "autogroup_nice" in vm:
        text += f", autogroup nice {vm['autogroup_nice']}"
    notes = [n for n in vm.get("notes", []) if not n.startswith("domain ")]
    return text + "".join(f" ({note})" for note in notes)


# --- the after-deploy step ------------------------------------------------------------------

def settings_for(inv: Invocation) -> Settings:
    return Settings.load(os.path.join(inv.remotes, CONF), inv.environ)


def apply_template_class(vm: VM, inv: Invocation, log: DriverLog) -> int:
    """Give a VM that just started the class its template names (no attribute: nothing)."""
    log.vmid = vm.vm_id
    settings = settings_for(inv)
    label = vm.attribute(settings.attribute)
    if not label:
        return 0
    priority = settings.priority(label, f"{settings.attribute} of VM {vm.vm_id}")
    results = run_privileged(settings.privileged, settings.sudo, "apply",
                             apply_request(priority, "deploy", [vm.vm_id]))
    for outcome in results:
        if outcome["status"] == "error":
            raise DriverError(f"CPU priority {priority.label} for VM {vm.vm_id}: "
                              f"{outcome['reason']}")
        log.info(f"CPU priority {describe(outcome)}")
    return 0


def post(inv: Invocation, log: DriverLog) -> int:
    """VNM ``post.d`` program: argv ``<deploy_id> <host>``, stdin the base64 VM XML."""
    vm = VM.from_payload(inv.read_stdin("VM payload"))
    return apply_template_class(vm, inv, log)


def hook(inv: Invocation, log: DriverLog) -> int:
    """RUNNING state hook: ``$TEMPLATE`` as the argument, or on stdin (``ARGUMENTS_STDIN``)."""
    if inv.args:
        payload: str | bytes = inv.args[0]
    else:
        payload = inv.read_stdin("hook template")
    vm = VM.from_element(decode_payload(payload, "hook template ($TEMPLATE)"))
    return apply_template_class(vm, inv, log)


HOOK = "vaf-cpu-priority"

ACTIONS = {
    "post": post,  # remotes/vnm/<VN_MAD>/post.d/vaf-cpu-priority
    HOOK: hook,  # remotes/hooks/cpu-priority/vaf-cpu-priority
}
