"""CPU priority on the hypervisor: ``host-command cpu-apply|cpu-release|cpu-status``.

The admin command (:mod:`vaf.drivers.cpu_cli`) reaches every host through
:mod:`vaf.one.remote`; the after-deploy step (:mod:`vaf.drivers.cpu`) already runs on the host
and calls :func:`run_privileged` directly. Either way the work is done as root by the one
privileged entry point, ``sudo -n /usr/lib/vaf/vaf-privileged cpu-<verb>``, with the request on
stdin (:mod:`vaf.host.privileged` checks it); this module runs as oneadmin and prints that
program's JSON report on stdout. stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

from vaf.errors import DriverError, ProtocolError
from vaf.host.runner import Result, Runner
from vaf.one.log import DriverLog

DEFAULT_PRIVILEGED = "/usr/lib/vaf/vaf-privileged"
VERBS = ("apply", "release", "status")


def report_of(stdout: str) -> list[dict] | None:
    """The per-VM results in the privileged program's JSON output, or None."""
    try:
        return json.loads(stdout)["vms"]
    except (ValueError, KeyError, TypeError):
        return None


def host_results(result: Result, what: str = "vaf-privileged") -> list[dict]:
    """The per-VM results printed; a :class:`DriverError` with the last stderr line if none."""
    report = report_of(result.stdout)
    if report is None:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        where = f" on {result.host}" if result.host else ""
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        raise DriverError(f"{what}{where} failed: {detail}")
    return report


def run_privileged(privileged: str, sudo: Sequence[str], verb: str,
                   request: Mapping[str, object]) -> list[dict]:
    """``sudo -n <privileged> cpu-<verb>`` here, the request on stdin; the per-VM results."""
    result = Runner(sudo_prefix=sudo).run([privileged, f"cpu-{verb}"], sudo=True, check=False,
                                          input=json.dumps(request))
    return host_results(result)


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
