"""The one way a front-end driver acts on a hypervisor: ``host-command`` over the runner's ssh.

Every driver that must act on a hypervisor makes one call per action::

    python3 -S <remotes>/vaf/host-command <provider>-<action> '<json request>'

(:mod:`vaf.one.host_command` serves it there). The host side writes tagged lines and, on
failure, one reason line, exactly like a driver; :func:`call` relays the tagged lines through the
driver's log as they come (so progress shows up live on 7.x, and goes where 6.10 wants it,
see :mod:`vaf.one.log`) and turns a failure into one clear reason:

* the host's own reason line, relayed as is (its exit code kept: 1 or 2);
* ssh could not connect: the runner's :class:`~vaf.host.runner.HostUnreachable` reason;
* the host command died (killed, connection lost after it started): said so, not "ssh failed";
* no host-command there, or an older one without this command: said so, with the fix
  (``onehost sync -f``);
* anything else without a reason line: the command's own stderr.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence

from vaf.errors import DriverError, VafError, one_line
from vaf.host.runner import CommandError, HostUnreachable, Result, Runner
from vaf.one.log import DriverLog, active, ascii_text

#: the entry point inside a remotes tree (``onehost sync`` copies it to every host)
HOST_COMMAND = ("vaf", "host-command")
#: -S: no site packages (the host side is stdlib only), which saves startup on every call
DEFAULT_PYTHON = ("python3", "-S")
#: what python3 says when the script it should run does not exist
NOT_THERE = "can't open file"
_TAGGED_RE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+")


class HostFailure(VafError):
    """The host-side command failed: its reason line, relayed as is."""

    def __init__(self, reason: str, extra: list[str], returncode: int | None):
        super().__init__(reason)
        self._extra = extra
        self.exit_code = returncode if returncode in (1, 2) else 1

    def details(self) -> list[str]:
        return self._extra


class Relay:
    """Pass the host's tagged lines on at once (to ``stream``, else through ``log``, the
    running action's log by default); keep the untagged ones."""

    def __init__(self, stream=None, log: DriverLog | None = None):
        self.stream = stream
        self.log = log if log is not None or stream is not None else active()
        self.untagged: list[str] = []
        self.tagged = 0

    def line(self, text: str) -> None:
        if not _TAGGED_RE.match(text):
            self.untagged.append(text)
            return
        self.tagged += 1
        if self.log is not None:
            self.log.relay(text)
            return
        out = self.stream or sys.stderr
        out.write(ascii_text(text) + "\n")
        out.flush()

    def failure(self, err: CommandError, what: str) -> VafError:
        if isinstance(err, HostUnreachable) and self.tagged and not self.untagged:
            # ssh also exits 255 when the remote command dies by a signal
            return DriverError(f"{what} on {err.host} ended abnormally (killed, or the "
                               "connection was lost)")
        if isinstance(err, HostUnreachable) or not self.untagged:
            return err
        where = err.host or "localhost"
        if not self.tagged and any(NOT_THERE in line for line in self.untagged):
            # python3 found no host-command: the remotes tree there is missing or not vaf's
            return DriverError(f"{what}: vaf's host-command is missing on {where} "
                               "(run onehost sync -f)")
        reason = one_line(self.untagged[-1])
        if reason.startswith("unknown host command"):
            reason += f" on {where} (its remotes tree is older than the front-end's: " \
                      "run onehost sync -f)"
        # The host wrote one reason line; anything before it (an ssh warning) is context.
        return HostFailure(reason,
                           [f"from {where}: {line}"
                            for line in self.untagged[:-1]], err.returncode)


def host_command_argv(remotes: str, command: str, params: Mapping[str, object],
                      python: Sequence[str] = DEFAULT_PYTHON) -> list[str]:
    """The argv run on the host (the runner quotes it for ssh: nothing reaches a shell)."""
    script = "/".join((remotes.rstrip("/"),) + HOST_COMMAND)
    return [*python, script, command, json.dumps(params, separators=(",", ":"))]


def call(runner: Runner, command: str, params: Mapping[str, object], *, remotes: str,
         python: Sequence[str] = DEFAULT_PYTHON, input: bytes | None = None,
         stream=None, log: DriverLog | None = None) -> Result:
    """Run ``host-command <command>`` where ``runner`` points (its host, or here).

    ``remotes`` is the remotes tree on that machine; ``command`` is ``<provider>-<action>``.
    The host's tagged lines go to ``stream`` if given, else through ``log`` (default: the
    log of the action running in this process).
    """
    relay = Relay(stream, log)
    argv = host_command_argv(remotes, command, params, python)
    try:
        return runner.run(argv, input=input, on_stderr_line=relay.line)
    except CommandError as err:
        raise relay.failure(err, command.replace("-", " ", 1)) from None
