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
import select
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from vaf.errors import DriverError, VafError, one_line
from vaf.host.privileged_call import DEFAULT_PROGRAM, refused_by_sudo, sudo_refusal
from vaf.host.runner import CommandCancelled, CommandError, HostUnreachable, Result, Runner
from vaf.one.log import DriverLog, active, ascii_text

#: the entry point inside a remotes tree (``onehost sync`` copies it to every host)
HOST_COMMAND = ("vaf", "host-command")
#: -S: no site packages (the host side is stdlib only), which saves startup on every call
DEFAULT_PYTHON = ("python3", "-S")
#: what python3 says when the script it should run does not exist
NOT_THERE = "can't open file"
_TAGGED_RE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+")
#: the root-owned entry point of host halves that need root (``share/sudoers/vaf``)
DEFAULT_PRIVILEGED = ("sudo", "-n", DEFAULT_PROGRAM)
#: what ssh itself says when it could not connect or log in (anything else on a 255 exit:
#: the remote command died by a signal, and ssh prints nothing of its own)
_SSH_OWN = ("ssh:", "Connection ", "Permission denied", "Host key", "kex_exchange",
            "Could not resolve", "Bad owner", "no such identity", "banner exchange")


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
        if isinstance(err, CommandCancelled):
            return DriverError(f"{what} on {err.host or 'localhost'} was cancelled (oned "
                               "stopped waiting); the host undoes what it made")
        if isinstance(err, HostUnreachable) and not any(
                line.startswith(_SSH_OWN) for line in self.untagged):
            # ssh exits 255 with nothing of its own when the remote command dies by a signal
            return DriverError(f"{what} on {err.host} was killed before it finished (by a "
                               "signal: an admin, the OOM killer, a reboot)")
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


def privileged_failure(relay: Relay, err: CommandError, what: str) -> VafError:
    """A failed privileged call: sudo's refusals and a missing helper name the fix."""
    if not relay.tagged and refused_by_sudo(relay.untagged):
        return sudo_refusal(what, err.host or "localhost", relay.untagged[-1])
    return relay.failure(err, what)


class _OnedWatch:
    """Notices that oned stopped listening (DRIVER_CANCEL, a MAD restart: our stderr pipe
    loses its reader) or asked us to stop (SIGTERM), and sets ``cancel``."""

    def __init__(self, cancel: threading.Event, fd: int = 2):
        self.cancel = cancel
        self.fd = fd
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="oned-watch", daemon=True)
        self.previous = None

    def __enter__(self) -> _OnedWatch:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: self.cancel.set())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _watch(self) -> None:
        poller = select.poll()
        try:
            poller.register(self.fd, 0)  # 0: only POLLERR / POLLHUP / POLLNVAL are reported
        except (OSError, ValueError):
            return
        while not self.done.is_set():
            if poller.poll(300):
                self.cancel.set()
                return


def call_privileged(runner: Runner, command: str, params: Mapping[str, object], *,
                    program: Sequence[str] = DEFAULT_PRIVILEGED, payload: bytes = b"",
                    stream=None) -> Result:
    """Run ``<program> <command>`` where ``runner`` points, the request on its stdin.

    stdin: the JSON line, ``payload`` (announced as ``payload_bytes``), then nothing until
    the call ends: the host half takes EOF as "the front-end is gone" and undoes its work.
    If oned cancels this action (our stderr loses its reader) or SIGTERMs us, the ssh is
    killed, which gives the host that EOF.
    """
    body = dict(params)
    body["payload_bytes"] = len(payload)
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n" + payload
    relay = Relay(stream)
    cancel = threading.Event()
    try:
        with _OnedWatch(cancel):
            return runner.run([*program, command], input=data, hold_stdin=True, cancel=cancel,
                              on_stderr_line=relay.line)
    except CommandError as err:
        raise privileged_failure(relay, err, command.replace("-", " ", 1)) from None
