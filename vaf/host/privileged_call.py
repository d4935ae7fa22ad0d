"""oneadmin's end of the one privileged entry point: ``sudo -n /usr/lib/vaf/vaf-privileged <verb>``.

The verbs of :mod:`vaf.host.privileged` (CPU priority, isolation's firewall commands) take one
JSON object on stdin and answer with one JSON object on stdout, their report; a request the
program refuses gets no report, one reason line on stderr and exit code 2. :func:`call` is
the one way to run such a verb (``sudo -n`` unless this process is root already, as the
runner does); a missing install and sudo's refusals name the fix. lvmsnap's verbs speak the
streamed protocol of :func:`vaf.one.remote.call_privileged` and share :func:`sudo_refusal`.
stdlib only: runs on hypervisors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from vaf.errors import DriverError, one_line
from vaf.host.runner import CommandNotFound, Result, Runner

DEFAULT_PROGRAM = "/usr/lib/vaf/vaf-privileged"
#: what sudo (or the shell) says when the program is not installed or no rule lets it run
SUDO_REFUSED = ("sudo: a password is required", "sudo: a terminal is required",
                "is not allowed to execute", "sudo: sorry", "command not found",
                "No such file or directory", "is not in the sudoers file")


def refused_by_sudo(lines: Iterable[str]) -> bool:
    return any(marker in line for line in lines for marker in SUDO_REFUSED)


def sudo_refusal(what: str, where: str, line: str, program: str = DEFAULT_PROGRAM) -> DriverError:
    """The reason when sudo would not run the program: the host lacks ``install.sh host``."""
    return DriverError(f"{what}: sudo cannot run {program} on {where} ({one_line(line)}): "
                       f"run install.sh host on {where}")


def report_of(stdout: str) -> dict | None:
    """The program's report (a JSON object on stdout), or None."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def call(runner: Runner, program: str, verb: str, request: Mapping[str, object]) -> dict:
    """Run ``[sudo -n] <program> <verb>`` where ``runner`` points, ``request`` on stdin; its
    report. No report: a :class:`DriverError` with the program's (or sudo's) reason."""
    try:
        result = runner.run([program, verb], sudo=True, check=False, input=json.dumps(request))
    except CommandNotFound:  # root here, so no sudo to say it
        where = runner.host or os.uname().nodename
        raise DriverError(f"{os.path.basename(program)} {verb}: {program} is missing on "
                          f"{where}: run install.sh host on {where}") from None
    report = report_of(result.stdout)
    if report is None:
        raise failure(result, program, verb)
    return report


def failure(result: Result, program: str, verb: str) -> DriverError:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    where = result.host or os.uname().nodename
    what = f"{os.path.basename(program)} {verb}"
    if refused_by_sudo(lines):
        return sudo_refusal(what, where, lines[-1], program)
    detail = lines[-1] if lines else f"exit code {result.returncode}"
    return DriverError(f"{what} on {where} failed: {one_line(detail)}")
