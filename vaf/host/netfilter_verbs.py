"""Isolation's firewall commands as root: the ``isolation-*`` verbs of ``vaf-privileged``.

The ebtables and nft backends (:mod:`vaf.host.ebtables`, :mod:`vaf.host.nft`) run as
oneadmin; each command of theirs that needs root is one fixed verb of the one privileged
entry point, so ``share/sudoers/vaf`` holds full command lines only (no wildcard, no regular
expression: the same meaning on every sudo):

* ``isolation-ebtables-list`` ``{"chain"?, "counters"?}``:
  ``EBTABLES --concurrent -t filter -L [<chain>] [--Lc]``;
* ``isolation-ebtables-delete`` ``{"chain"}``: ``EBTABLES --concurrent -t filter -X <chain>``;
* ``isolation-ebtables-restore`` ``{"rules"}``: ``EBTABLES_RESTORE --noflush``, rules on stdin;
* ``isolation-nft-apply`` ``{"script"}``: ``NFT -f -``, the script on stdin;
* ``isolation-nft-list`` ``{"table", "map"?, "json"?}``:
  ``NFT [-j] list table|map bridge <table> [<map>]``.

Checked field by field before anything runs: a chain is letters, digits, ``_`` and ``-``, not
starting with ``-`` (it is one argv word, never an option), at most 31 characters (ebtables'
limit); a table or map is letters, digits and ``_`` (nft parses its arguments as one command
line: no space, ``;`` or quote gets in), at most 64; ``rules`` and ``script`` are text of at
most :data:`TEXT_LIMIT` characters without NUL; the flags are booleans; any other field is
refused. The program paths come from the program's own root-owned conf (``EBTABLES``,
``EBTABLES_RESTORE``, ``NFT``: absolute paths, :data:`DEFAULT_COMMANDS`), never from the caller.

The report on stdout: ``{"host", "argv", "returncode", "stdout", "stderr"}`` of the command
(exit code 0 when it succeeded, 1 when it failed); a refused request gets no report, one
reason line on stderr and exit code 2. :class:`Firewall` is the backends' end: it turns the
report back into the runner's :class:`~vaf.host.runner.Result` (or
:class:`~vaf.host.runner.CommandError`), so the backends see what a direct run gave them.
stdlib only: runs on hypervisors, both as oneadmin and as root.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

from vaf.config import DriverConfig
from vaf.errors import ConfigError, DriverError, ProtocolError
from vaf.host import privileged_call
from vaf.host.runner import COMMAND_NOT_FOUND, CommandNotFound, Result, Runner, error_for

#: what ``install.sh host`` finds on Debian, Ubuntu and RHEL (merged /usr)
DEFAULT_COMMANDS = {"EBTABLES": "/usr/sbin/ebtables",
                    "EBTABLES_RESTORE": "/usr/sbin/ebtables-restore",
                    "NFT": "/usr/sbin/nft"}
#: the largest ``rules``/``script``: a sweep of thousands of vanished taps still fits
TEXT_LIMIT = 4 * 1024 * 1024
CHAIN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,30}")
NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
EBTABLES_PREFIX = ("--concurrent", "-t", "filter")  # --concurrent: libvirt takes the same lock
PERMISSION_DENIED = 126  # the shell's code for a program that cannot be executed

#: argv of the command, and its stdin (None: none)
Command = tuple[list[str], "str | None"]


# -- the request, field by field ----------------------------------------------------------------

def _fields(request: Mapping[str, object], verb: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> None:
    unexpected = sorted(set(request) - set(required) - set(optional))
    if unexpected:
        raise ProtocolError(f"{verb}: unexpected field {', '.join(map(repr, unexpected))} "
                            f"(expected {', '.join(required + optional)})")
    missing = [name for name in required if name not in request]
    if missing:
        raise ProtocolError(f"{verb}: missing field {', '.join(map(repr, missing))}")


def chain(value: object) -> str:
    if not isinstance(value, str) or not CHAIN_RE.fullmatch(value):
        raise ProtocolError(f"chain must be 1 to 31 letters, digits, '_' or '-' (not first), "
                            f"got {_shown(value)}")
    return value


def name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ProtocolError(f"{what} must be 1 to 64 letters, digits or '_', got {_shown(value)}")
    return value


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > TEXT_LIMIT:
        raise ProtocolError(f"{what} larger than {TEXT_LIMIT} characters ({len(value)})")
    if "\0" in value:
        raise ProtocolError(f"{what} contains a NUL character")
    return value


def flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false, got {_shown(value)}")
    return value


def _shown(value: object) -> str:
    return repr(value)[:80]


# -- the commands (pure: request and the conf's paths -> argv and stdin) ---------------------------

def ebtables_list(request: Mapping[str, object], commands: Mapping[str, str]) -> Command:
    _fields(request, "isolation-ebtables-list", (), ("chain", "counters"))
    argv = [commands["EBTABLES"], *EBTABLES_PREFIX, "-L"]
    if "chain" in request:
        argv.append(chain(request["chain"]))
    if flag(request.get("counters", False), "counters"):
        argv.append("--Lc")
    return argv, None


def ebtables_delete(request: Mapping[str, object], commands: Mapping[str, str]) -> Command:
    _fields(request, "isolation-ebtables-delete", ("chain",))
    return [commands["EBTABLES"], *EBTABLES_PREFIX, "-X", chain(request["chain"])], None


def ebtables_restore(request: Mapping[str, object], commands: Mapping[str, str]) -> Command:
    _fields(request, "isolation-ebtables-restore", ("rules",))
    return [commands["EBTABLES_RESTORE"], "--noflush"], text(request["rules"], "rules")


def nft_apply(request: Mapping[str, object], commands: Mapping[str, str]) -> Command:
    _fields(request, "isolation-nft-apply", ("script",))
    return [commands["NFT"], "-f", "-"], text(request["script"], "script")


def nft_list(request: Mapping[str, object], commands: Mapping[str, str]) -> Command:
    _fields(request, "isolation-nft-list", ("table",), ("map", "json"))
    argv = [commands["NFT"]]
    if flag(request.get("json", False), "json"):
        argv.append("-j")
    table = name(request["table"], "table")
    if "map" in request:
        return [*argv, "list", "map", "bridge", table, name(request["map"], "map")], None
    return [*argv, "list", "table", "bridge", table], None


BUILDERS: dict[str, Callable[[Mapping[str, object], Mapping[str, str]], Command]] = {
    "isolation-ebtables-list": ebtables_list,
    "isolation-ebtables-delete": ebtables_delete,
    "isolation-ebtables-restore": ebtables_restore,
    "isolation-nft-apply": nft_apply,
    "isolation-nft-list": nft_list,
}


def commands_of(conf: DriverConfig) -> dict[str, str]:
    """The program paths, from vaf-privileged's own conf."""
    commands = {key: conf.str(key, default) for key, default in DEFAULT_COMMANDS.items()}
    for key, path in commands.items():
        if not path.startswith("/"):
            raise ConfigError(f"{key} in {conf.source} must be an absolute path, got {path!r}")
    return commands


# -- root's end -----------------------------------------------------------------------------------

def _serve(build: Callable[[Mapping[str, object], Mapping[str, str]], Command]):
    def verb(request: Mapping[str, object], conf: DriverConfig) -> tuple[dict, int]:
        argv, stdin = build(request, commands_of(conf))  # refused: nothing runs
        report = run(argv, stdin)
        return report, 0 if report["returncode"] == 0 else 1

    return verb


def run(argv: list[str], stdin: str | None) -> dict:
    """Run the command (already root: no sudo); what it left, as the report's fields."""
    try:
        result = Runner().run(argv, input=stdin, check=False)
    except OSError as err:  # not executable (the runner itself reports a missing program)
        return _report(argv, PERMISSION_DENIED, "", f"{argv[0]}: {err.strerror}\n")
    except CommandNotFound:
        return _report(argv, COMMAND_NOT_FOUND, "", f"{argv[0]}: command not found\n")
    return _report(argv, result.returncode, result.stdout, result.stderr)


def _report(argv: list[str], returncode: int, stdout: str, stderr: str) -> dict:
    return {"argv": argv, "returncode": returncode, "stdout": stdout, "stderr": stderr}


#: the verbs vaf-privileged serves for isolation: (request, its conf) -> (report, exit code)
VERBS = {verb: _serve(build) for verb, build in BUILDERS.items()}


# -- oneadmin's end -------------------------------------------------------------------------------

class Firewall:
    """Isolation's commands that need root, each one verb of ``program`` where ``runner``
    points (``sudo -n`` unless already root, as the runner decides). Each call returns the
    command's :class:`Result`; with ``check``, a failed command raises its
    :class:`~vaf.host.runner.CommandError`, as ``runner.run`` would have. A plain class, as
    :class:`vaf.config.DriverConfig`: vaf-privileged imports this module on every call."""

    __slots__ = ("runner", "program")

    def __init__(self, runner: Runner, program: str = privileged_call.DEFAULT_PROGRAM):
        self.runner = runner
        self.program = program

    def __repr__(self) -> str:
        return f"Firewall({self.runner!r}, {self.program!r})"

    def ebtables_list(self, chain: str | None = None, counters: bool = False,
                      check: bool = True) -> Result:
        request: dict[str, object] = {} if chain is None else {"chain": chain}
        if counters:
            request["counters"] = True
        return self._run("isolation-ebtables-list", request, check)

    def ebtables_delete(self, chain: str, check: bool = True) -> Result:
        return self._run("isolation-ebtables-delete", {"chain": chain}, check)

    def ebtables_restore(self, rules: str) -> Result:
        return self._run("isolation-ebtables-restore", {"rules": rules}, True)

    def nft_apply(self, script: str) -> Result:
        return self._run("isolation-nft-apply", {"script": script}, True)

    def nft_list(self, table: str, map_name: str | None = None, as_json: bool = False,
                 check: bool = True) -> Result:
        request: dict[str, object] = {"table": table}
        if map_name is not None:
            request["map"] = map_name
        if as_json:
            request["json"] = True
        return self._run("isolation-nft-list", request, check)

    def _run(self, verb: str, request: dict, check: bool) -> Result:
        started = time.monotonic()
        report = privileged_call.call(self.runner, self.program, verb, request)
        result = result_of(report, self.runner.host, time.monotonic() - started)
        if result is None:
            raise DriverError(f"{self.program} {verb} printed a report without the command's "
                              "argv, returncode, stdout and stderr")
        if check and result.returncode != 0:
            raise error_for(result)
        return result


def result_of(report: Mapping[str, object], host: str | None, seconds: float) -> Result | None:
    """The command's :class:`Result` from a report, or None if the report lacks it."""
    argv, code = report.get("argv"), report.get("returncode")
    out, err = report.get("stdout"), report.get("stderr")
    if (not isinstance(argv, list) or not argv or not all(isinstance(w, str) for w in argv)
            or not isinstance(code, int) or isinstance(code, bool)
            or not isinstance(out, str) or not isinstance(err, str)):
        return None
    return Result(tuple(argv), host, code, out, err, seconds)
