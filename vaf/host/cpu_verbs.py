"""CPU priority's verbs of ``vaf-privileged``: ``cpu-apply``, ``cpu-release``, ``cpu-status``.

Request: ``{"vmids": [...]}`` (``cpu-apply`` also ``layer``, ``label``, ``nice``, ``weight``),
validated field by field (:func:`vmids`, :func:`priority`) before any VM is touched; the
state and pid directories come from the program's own conf (:func:`host_of`). Report:
``{"vms": [<one result per VM>]}``, exit code 1 if a VM failed (the others are still done
and reported). Imported by :mod:`vaf.host.privileged` only when one of these verbs runs.
stdlib only: runs on hypervisors, as root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from vaf.config import DriverConfig
from vaf.errors import ProtocolError, VafError
from vaf.host import cpu

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


def host_of(conf: DriverConfig) -> cpu.Host:
    """The paths to act on, from the program's own conf (the environment is ignored)."""
    defaults = cpu.Host()
    return cpu.Host(state_dir=conf.str("STATE_DIR", defaults.state_dir),
                    pid_dir=conf.str("PID_DIR", defaults.pid_dir),
                    proc=conf.str("PROC", defaults.proc))


def _per_vm(verb: Callable[[Mapping[str, object], cpu.Host], list[dict]]):
    """The per-VM results as the report, exit 1 if a VM failed."""
    def serve(request: Mapping[str, object], conf: DriverConfig) -> tuple[dict, int]:
        results = verb(request, host_of(conf))
        return {"vms": results}, 1 if any(r["status"] == "error" for r in results) else 0

    return serve


#: verb -> (request, the program's conf) -> (report, exit code)
VERBS = {"cpu-apply": _per_vm(cpu_apply), "cpu-release": _per_vm(cpu_release),
         "cpu-status": _per_vm(cpu_status)}
