"""OpenNebula's XML-RPC API through pyone (the official bindings): the elastic daemon's cloud.

Only what a worker pool needs: instantiate a template as a named worker with its join
context, terminate, and list the VMs this pool owns. Ownership is written into each VM
(``VAF_ELASTIC=<owner>`` and ``VAF_NODE=<node name>`` in the template, which OpenNebula keeps
in the VM's user template), so the pool can be rebuilt from OpenNebula alone.

Credentials come as OpenNebula's own tools take them: the file named by ``ONE_AUTH`` (else
``~/.one/one_auth``) holds ``user:password`` on its first line. pyone is imported when a client
is made, so this module costs nothing where it is not used.
"""

from __future__ import annotations

import os
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass

from vaf.errors import VafError

OWNER_TAG = "VAF_ELASTIC"
NODE_TAG = "VAF_NODE"

# VM STATE numbers (OpenNebula's VirtualMachine::VmState)
_PENDING_STATES = {0, 1, 2, 10}  # INIT, PENDING, HOLD, CLONING
_ACTIVE = 3
_DONE = 6
_FAILED_STATES = {4, 5, 7, 8, 9, 11}  # STOPPED, SUSPENDED, FAILED, POWEROFF, UNDEPLOYED, ...
# LCM_STATE numbers of an ACTIVE VM
_LCM_RUNNING = 3
_LCM_SHUTDOWN = {11, 12, 15, 16, 17, 18, 19, 20, 21, 22, 23}  # EPILOG*, SHUTDOWN*, CLEANUP*
_LCM_FAILURE = {14, 36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50}

#: VM pool filter: the session user's own VMs; state -1: every state except DONE
_MINE = -3
_NOT_DONE = -1


class CloudUnavailable(VafError):
    """OpenNebula did not answer (down, unreachable, timed out): try again later."""


class CloudRefused(VafError):
    """OpenNebula answered no (quota, authentication, missing template): says why."""


@dataclass(frozen=True)
class CloudVm:
    id: int
    name: str  # the node it was started for (VAF_NODE), '' when untagged
    state: str  # pending, booting, running, failed or ending (vaf.elastic.engine's words)
    since: float  # STIME


def vm_state(state: int, lcm_state: int) -> str:
    if state in _PENDING_STATES:
        return "pending"
    if state == _DONE:
        return "ending"
    if state in _FAILED_STATES:
        return "failed"
    if lcm_state in _LCM_FAILURE:
        return "failed"
    if lcm_state in _LCM_SHUTDOWN:
        return "ending"
    return "running" if lcm_state == _LCM_RUNNING else "booting"


def read_session(path: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``user:password`` from ``path``, else ``$ONE_AUTH``, else ``~/.one/one_auth``."""
    env = os.environ if environ is None else environ
    path = path or env.get("ONE_AUTH") or os.path.expanduser("~/.one/one_auth")
    try:
        with open(path, encoding="utf-8") as handle:
            session = handle.readline().strip()
    except OSError as err:
        raise CloudRefused(f"cannot read OpenNebula credentials {path}: {err.strerror}") from None
    if ":" not in session:
        raise CloudRefused(f"{path}: expected user:password on the first line")
    return session


class Cloud:
    """One pool of workers: one template, one owner tag."""

    def __init__(self, endpoint: str, session: str, owner: str, timeout: float = 10.0):
        import pyone  # the official bindings; only the daemon needs them

        self._pyone = pyone
        self.endpoint = endpoint
        self.owner = owner
        self.server = pyone.OneServer(endpoint, session=session, timeout=timeout)
        self._contexts: dict[int, dict[str, str]] = {}

    def _call(self, what: str, method, *args):
        try:
            return method(*args)
        except self._pyone.OneException as err:
            raise CloudRefused(f"OpenNebula refused to {what}: {err}") from None
        except (OSError, xmlrpc.client.ProtocolError, ConnectionError) as err:
            raise CloudUnavailable(f"OpenNebula at {self.endpoint} did not answer ({what}): "
                                   f"{type(err).__name__}") from None
        except Exception as err:  # requests' exceptions, without importing requests here
            if type(err).__module__.startswith(("requests", "urllib3")):
                raise CloudUnavailable(f"OpenNebula at {self.endpoint} did not answer "
                                       f"({what}): {type(err).__name__}") from None
            raise

    def version(self) -> str:
        return str(self._call("tell its version", self.server.system.version))

    def instantiate(self, template_id: int, name: str, context: Mapping[str, str]) -> int:
        """Start ``name`` from the template; ``context`` joins the template's CONTEXT."""
        # oned replaces a vector given at instantiation instead of merging it: send the
        # template's own CONTEXT with ours added.
        base = self._template_context(template_id)
        extra = {"TEMPLATE": {OWNER_TAG: self.owner, NODE_TAG: name,
                              "CONTEXT": {**base, **context, NODE_TAG: name}}}
        vm_id = self._call(f"instantiate template {template_id} as {name}",
                           self.server.template.instantiate, template_id, name, False, extra,
                           False)
        return int(vm_id)

    def _template_context(self, template_id: int) -> dict[str, str]:
        if template_id not in self._contexts:
            template = self._call(f"read template {template_id}", self.server.template.info,
                                  template_id, False, False)
            context = (template.TEMPLATE or {}).get("CONTEXT") or {}
            self._contexts[template_id] = {str(k): str(v) for k, v in context.items()} \
                if isinstance(context, Mapping) else {}
        return self._contexts[template_id]

    def terminate(self, vm_id: int) -> None:
        """terminate-hard: a worker has nothing to save, and a hung guest must not stay.

        A VM that no longer exists is not an error: it is what we wanted.
        """
        def action() -> None:
            try:
                self.server.vm.action("terminate-hard", vm_id)
            except self._pyone.OneNoExistsException:
                pass

        self._call(f"terminate VM {vm_id}", action)

    def owned_vms(self) -> list[CloudVm]:
        """Our VMs (any state but DONE). The pool document is read with lxml rather than
        pyone's generated bindings: same request and transport, a tenth of the time, which
        matters at a thousand workers."""
        def listing() -> str:
            answer = self.server._do_request(
                "one.vmpool.info", self.server._cast_parms((_MINE, -1, -1, _NOT_DONE)))
            if not answer[0]:
                raise self._pyone.OneException(answer[1])
            return answer[1]

        return parse_pool(self._call("list VMs", listing), self.owner)


def parse_pool(document: str, owner: str) -> list[CloudVm]:
    """The VMs of a ``VM_POOL`` document whose user template says ``VAF_ELASTIC=<owner>``."""
    from lxml import etree

    vms = []
    for vm in etree.fromstring(document.encode("utf-8")).iterfind("VM"):
        fields = {child.tag: child for child in vm}
        user = {child.tag: child.text for child in fields["USER_TEMPLATE"]} \
            if "USER_TEMPLATE" in fields else {}
        if user.get(OWNER_TAG) != owner:
            continue
        vms.append(CloudVm(int(fields["ID"].text), user.get(NODE_TAG) or fields["NAME"].text,
                           vm_state(int(fields["STATE"].text), int(fields["LCM_STATE"].text)),
                           float(fields["STIME"].text or 0)))
    return vms
