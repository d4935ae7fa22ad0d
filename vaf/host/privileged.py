"""What ``vaf-privileged`` does as root: fixed verbs, one JSON request on stdin, checked here.

The program (``share/privileged/vaf-privileged``, installed root-owned outside the remotes
tree) is the only vaf code a sudoers rule lets run as root (``share/sudoers/vaf``). Its
contract:

* ``argv``: exactly one verb of :data:`VERBS`; nothing else (so each sudoers rule names the
  full command line, without wildcards);
* stdin: one JSON object, validated field by field by the verb's module
  (:mod:`vaf.host.cpu_verbs`, :mod:`vaf.host.netfilter_verbs`);
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
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from vaf.config import DriverConfig, load_config
from vaf.errors import ProtocolError, VafError
from vaf.host import netfilter_verbs

#: the largest request: an isolation script of the largest size, quoted as JSON
STDIN_LIMIT = 2 * netfilter_verbs.TEXT_LIMIT

#: CPU priority's verbs (:mod:`vaf.host.cpu_verbs`, imported only when one runs: each call is
#: one process, and the firewall verbs run several times per VM deploy)
CPU_VERBS = ("cpu-apply", "cpu-release", "cpu-status")


def _cpu(verb: str):
    def serve(request: Mapping[str, object], conf: DriverConfig) -> tuple[dict, int]:
        from vaf.host import cpu_verbs

        return cpu_verbs.VERBS[verb](request, conf)

    return serve


#: verb -> (request, the program's conf) -> (report, exit code)
VERBS: dict[str, Callable[[Mapping[str, object], DriverConfig], tuple[dict, int]]] = {
    **{verb: _cpu(verb) for verb in CPU_VERBS},
    **netfilter_verbs.VERBS,
}


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
    json.dump({"host": os.uname().nodename, **report}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return code
