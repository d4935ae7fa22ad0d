"""CPU priority on the hypervisor: ``host-command cpu-apply|cpu-release|cpu-status``.

The admin command (:mod:`vaf.drivers.cpu_cli`) reaches every host through
:mod:`vaf.one.remote`; the after-deploy step (:mod:`vaf.drivers.cpu`) already runs on the host
and calls :func:`run_privileged` directly. Either way the work is done as root by the one
privileged entry point, ``sudo -n /usr/lib/vaf/vaf-privileged cpu-<verb>``, with the request on
stdin (:mod:`vaf.host.cpu_verbs` checks it); this module runs as oneadmin and prints that
program's JSON report on stdout. stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

from vaf.errors import DriverError, ProtocolError
from vaf.host import privileged_call
from vaf.host.runner import Runner
from vaf.one.log import DriverLog

DEFAULT_PRIVILEGED = privileged_call.DEFAULT_PROGRAM
VERBS = ("apply", "release", "status")


def report_of(stdout: str) -> list[dict] | None:
    """The per-VM results in the JSON report of ``vaf-privileged cpu-<verb>`` (or of
    ``host-command cpu-<verb>``, which relays it), or None."""
    return _vms(privileged_call.report_of(stdout))


def _vms(report: dict | None) -> list[dict] | None:
    vms = report.get("vms") if report is not None else None
    return vms if isinstance(vms, list) else None


def run_privileged(privileged: str, sudo: Sequence[str], verb: str,
                   request: Mapping[str, object]) -> list[dict]:
    """``sudo -n <privileged> cpu-<verb>`` here, the request on stdin; the per-VM results."""
    vms = _vms(privileged_call.call(Runner(sudo_prefix=sudo), privileged, f"cpu-{verb}",
                                    request))
    if vms is None:
        raise DriverError(f"{privileged} cpu-{verb} printed no per-VM results")
    return vms


def host_params(privileged: str, sudo: Sequence[str], request: Mapping[str, object]) -> dict:
    """The JSON parameters of ``host-command cpu-<verb>`` (checked by :func:`_params`)."""
    return {"privileged": privileged, "sudo": list(sudo), "request": dict(request)}


def _params(params: Mapping[str, object]) -> tuple[str, tuple[str, ...], dict]:
    privileged, sudo, request = params.get("privileged"), params.get("sudo"), params.get("request")
    if (not isinstance(privileged, str) or not privileged.startswith("/")
            or not isinstance(sudo, list) or not all(isinstance(w, str) for w in sudo)
            or not isinstance(request, dict)):
        raise ProtocolError("cpu host command: expected privileged (absolute path), sudo "
                            "(list of strings) and request (object)")
    return privileged, tuple(sudo), request


def _command(verb: str):
    def command(params: Mapping[str, object], log: DriverLog) -> int:
        privileged, sudo, request = _params(params)
        results = run_privileged(privileged, sudo, verb, request)
        json.dump({"vms": results}, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 0

    command.__name__ = verb
    return command


COMMANDS = {verb: _command(verb) for verb in VERBS}
