"""What ``vaf-privileged`` does as root: fixed verbs, one JSON request on stdin, checked here.

The program (``share/privileged/vaf-privileged``, installed root-owned outside the remotes
tree) is the only vaf code a sudoers rule lets run as root (``share/sudoers/vaf``). Its
contract:

* ``argv``: exactly one verb of :data:`VERBS`; nothing else (so each sudoers rule names the
  full command line, without wildcards);
* stdin: one JSON object, validated field by field (:func:`vmids`, :func:`priority`; the
  isolation verbs in :mod:`vaf.host.netfilter_verbs`);
* paths (state and pid directories, /proc, the firewall programs) come from its own
  root-owned conf, never from the caller;
* stdout: one JSON object, the verb's report with the ``host`` it ran on: CPU priority's
  ``{"host": ..., "vms": [<one result per VM>]}``, exit 0, or 1 if a VM failed (the others
  are still done and reported); isolation's ``{"host", "argv", "returncode", "stdout",
  "stderr"}`` of the one command it ran, exit 0, or 1 if that command failed;
* bad input: one reason line on stderr, exit 2, no report, nothing done.

oneadmin's end of the call is :mod:`vaf.host.privileged_call`. stdlib only: runs on
hypervisors, with the host's /usr/bin/python3.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

from vaf.config import DriverConfig, load_config
from vaf.errors import ProtocolError, VafError
from vaf.host import cpu, netfilter_verbs

#: the largest request: an isolation script of the largest size, quoted as JSON
STDIN_LIMIT = 2 * netfilter_verbs.TEXT_LIMIT
MAX_VMS = 10000


def vmids(request: Mapping[str, object], allow_empty: bool = False) -> list[int]:
    ids = request.get("vmids")
    if (not isinstance(ids, list) or (not ids and not allow_empty) or len(ids) > MAX_VMS
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in ids)):
        raise ProtocolError("vmids must be a list of non-negative VM ids")
    return ids


def priority(request: Mapping[str, object]) -> tuple[cpu.Priority, str]:
    label, nice, weight = request.get("label"), request.get("nice"), request.get("weight", "")
    layer = request.get("layer")
    if layer not in cpu.LAYERS:
        raise ProtocolError(f"layer must be one of {', '.join(cpu.LAYERS)}")
    if not isinstance(label, str) or not label.isidentifier():
        raise ProtocolError("label must be a class name")
    if not isinstance(nice, int) or isinstance(nice, bool) or not isinstance(weight, str):
        raise ProtocolError("nice must be an integer and weight a string")
    return cpu.Priority(label, nice, weight), layer


def _each(ids: Sequence[int], operation: Callable[[int], dict]) -> list[dict]:
    results = []
    for vmid in ids:
        try:
            results.append(operation(vmid))
        except OSError as err:  # permission denied, cgroup removed under us, ...
            where = f": {err.filename}" if err.filename else ""
            results.append({"vmid": vmid, "status": "error", "reason": f"{err.strerror}{where}"})
        except VafError as err:  # a corrupt state file: this VM only
            results.append({"vmid": vmid, "status": "error", "reason": err.reason})
    return results


def cpu_apply(request: Mapping[str, object], host: cpu.Host) -> list[dict]:
    wanted, layer = priority(request)  # validated once, before touching any VM
    return _each(vmids(request), lambda vmid: cpu.apply(vmid, wanted, layer, host))


def cpu_release(request: Mapping[str, object], host: cpu.Host) -> list[dict]:
    return _each(vmids(request), lambda vmid: cpu.release(vmid, host))


def cpu_status(request: Mapping[str, object], host: cpu.Host) -> list[dict]:
    ids = vmids(request, allow_empty=True) or cpu.known_vmids(host)
    return _each(ids, lambda vmid: cpu.status(vmid, host))


def _per_vm(verb: Callable[[Mapping[str, object], cpu.Host], list[dict]]):
    """A CPU verb: the per-VM results as the report, exit 1 if a VM failed."""
    def serve(request: Mapping[str, object], conf: DriverConfig) -> tuple[dict, int]:
        results = verb(request, host_of(conf))
        return {"vms": results}, 1 if any(r["status"] == "error" for r in results) else 0

    return serve


#: verb -> (request, the program's conf) -> (report, exit code)
VERBS: dict[str, Callable[[Mapping[str, object], DriverConfig], tuple[dict, int]]] = {
    "cpu-apply": _per_vm(cpu_apply),
    "cpu-release": _per_vm(cpu_release),
    "cpu-status": _per_vm(cpu_status),
    **netfilter_verbs.VERBS,
}


def host_of(conf: DriverConfig) -> cpu.Host:
    """The paths to act on, from the program's own conf (the environment is ignored)."""
    defaults = cpu.Host()
    return cpu.Host(state_dir=conf.str("STATE_DIR", defaults.state_dir),
                    pid_dir=conf.str("PID_DIR", defaults.pid_dir),
                    proc=conf.str("PROC", defaults.proc))


def read_request(stream) -> dict:
    data = stream.read(STDIN_LIMIT + 1)
    if len(data) > STDIN_LIMIT:
        raise ProtocolError(f"request larger than {STDIN_LIMIT} bytes")
    try:
        request = json.loads(data or "{}")
    except ValueError as err:
        raise ProtocolError(f"request is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise ProtocolError("request must be a JSON object")
    return request


def main(argv: Sequence[str], conf_path: str, stdin=None) -> int:
    try:
        if len(argv) != 1 or argv[0] not in VERBS:
            raise ProtocolError(f"usage: vaf-privileged {'|'.join(VERBS)} < request.json")
        request = read_request(stdin or sys.stdin)
        report, code = VERBS[argv[0]](request, load_config(conf_path, environ={}))
    except VafError as err:
        print(err.reason, file=sys.stderr)
        return 2
    json.dump({"host": socket.gethostname(), **report}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return code
