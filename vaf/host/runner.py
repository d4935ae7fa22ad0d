"""The one runner for every external command vaf executes.

* Commands are argv lists, never shell strings. Locally they are executed directly; on a
  remote host they go through ssh, and the remote command line is built with
  :func:`shlex.join` so the remote login shell sees exactly the same words.
* ``LC_ALL=C`` everywhere, so the output we parse and the errors we report are stable.
* Optional privilege escalation with ``sudo -n`` (never prompts; fails fast without a rule).
* Timeouts kill the whole process group (``dd`` under ``sudo`` under ``ssh`` included).
* Failures raise :class:`CommandError` (or a subclass) carrying the argv, the host, the exit
  code and the captured stderr, with a one-line ``reason`` fit for OpenNebula's VM log.
* Observers see every command before it runs: tests and ``--dry-run`` modes use them.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Optional

from vaf.errors import VafError, one_line

DEFAULT_SSH = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4")
DEFAULT_SUDO = ("sudo", "-n")
C_LOCALE = {"LC_ALL": "C", "LANG": "C"}
SSH_CONNECTION_FAILED = 255
COMMAND_NOT_FOUND = 127
PIPE_GRACE_SECONDS = 2.0


# Plain classes, no dataclasses: this module runs on every host-side call, and importing
# dataclasses (which pulls in inspect) costs a noticeable share of a clone on a slow host.
class Result(namedtuple("Result", "argv host returncode stdout stderr seconds")):
    """What a finished command left: argv (without sudo/ssh), exit code, output, duration."""

    __slots__ = ()

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


class CommandError(VafError):
    """An external command failed; ``reason`` names it, ``details`` carry its stderr."""

    def __init__(self, argv: Sequence[str], host: str | None, returncode: int | None,
                 stdout: str = "", stderr: str = "", message: str | None = None):
        self.argv = tuple(argv)
        self.host = host
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.message = message
        super().__init__(self.reason)

    @property
    def where(self) -> str:
        return f" on {self.host}" if self.host else ""

    @property
    def program(self) -> str:
        # Skip the sudo prefix so the reason names the command that really failed.
        argv = list(self.argv)
        while argv and argv[0] in ("sudo", "-n", "--", "env") or (argv and "=" in argv[0]):
            argv.pop(0)
        return os.path.basename(argv[0]) if argv else "command"

    @property
    def reason(self) -> str:
        if self.message:
            return one_line(self.message)
        detail = last_meaningful_line(self.stderr) or f"exit code {self.returncode}"
        return one_line(f"{self.program}{self.where} failed: {detail}")

    def details(self) -> list[str]:
        lines = [f"command{self.where}: {shlex.join(self.argv)} (exit code {self.returncode})"]
        lines += [f"stderr: {line}" for line in self.stderr.splitlines() if line.strip()]
        return lines


class CommandNotFound(CommandError):
    @property
    def reason(self) -> str:
        return one_line(f"{self.program} is not installed{self.where} (command not found)")


class CommandTimeout(CommandError):
    def __init__(self, argv: Sequence[str], host: str | None, timeout: float,
                 stdout: str = "", stderr: str = ""):
        self.timeout = timeout
        super().__init__(argv, host, None, stdout, stderr)

    @property
    def reason(self) -> str:
        return one_line(f"{self.program}{self.where} did not finish within {self.timeout:g} s")


class CommandCancelled(CommandError):
    """The caller's ``cancel`` event was set: the command's process group was killed."""

    @property
    def reason(self) -> str:
        return one_line(f"{self.program}{self.where} was stopped: the action was cancelled")


class HostUnreachable(CommandError):
    @property
    def reason(self) -> str:
        detail = last_meaningful_line(self.stderr) or "ssh exit code 255"
        return one_line(f"cannot run {self.program} on {self.host}: ssh failed: {detail}")


# Lines that never say why a command failed: lvm's descriptor-leak warnings, the generic
# trailer it prints after the real cause ("Volume group "x" not found"), help pointers and
# usage blocks that follow the cause (lvcreate, mkfs.xfs), dd's record counts.
_NOISE = ("File descriptor", "WARNING: Running as", "Cannot process volume group", "Run `",
          "Usage:", "usage:")
_NOISE_RE = re.compile(r"^\d+\+\d+ records (in|out)$|^\d+ bytes .* copied")
_CAUSE_RE = re.compile(r"error|fail|invalid|cannot|can't|not |must|insufficient|denied|"
                       r"no space|too (small|large)|refus|larger than|smaller than",
                       re.IGNORECASE)


def _meaningful(text: str) -> list[str]:
    lines = []
    for raw in text.replace("\r", "\n").splitlines():
        line = raw.strip()
        if not line or raw[:1] == "\t" or line.startswith(_NOISE + ("/*", "[")) \
                or _NOISE_RE.match(line):
            continue  # tab-indented, /* */ and [option] lines belong to usage blocks
        lines.append(line)
    return lines


def last_meaningful_line(text: str) -> str:
    """What a command's stderr says about why it failed, in one line.

    The lines that name a cause (error, invalid, must, cannot, ...) win over the last line,
    which is often a help pointer or a usage block; two causes are joined with "; ".
    """
    lines = _meaningful(text)
    if not lines:
        stripped = [line.strip() for line in text.splitlines() if line.strip()]
        return stripped[-1] if stripped else ""
    causes = [line for line in lines if _CAUSE_RE.search(line)]
    chosen = list(dict.fromkeys(causes))[:2] or lines[-1:]
    return "; ".join(chosen)


def error_for(result: Result) -> CommandError:
    """The error of a failed command: ssh's own failure, a missing program, or its exit."""
    args = (result.argv, result.host, result.returncode, result.stdout, result.stderr)
    if result.host is not None and result.returncode == SSH_CONNECTION_FAILED:
        return HostUnreachable(*args)
    if result.returncode == COMMAND_NOT_FOUND and "not found" in result.stderr:
        return CommandNotFound(*args)
    return CommandError(*args)


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """Refuse anything that is not a non-empty list of strings without NUL bytes."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("a command must be a non-empty argv list, not a string")
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {type(arg).__name__}: {arg!r}")
        if "\0" in arg:
            raise ValueError(f"argv item contains a NUL byte: {arg!r}")
    return tuple(argv)


def remote_command_line(argv: Sequence[str]) -> str:
    """The string ssh hands to the remote login shell: C locale, then the quoted argv."""
    assignments = " ".join(f"{k}={v}" for k, v in C_LOCALE.items())
    return f"{assignments} {shlex.join(argv)}"


# Optional, not ``str | None``: a module-level alias is evaluated at import, and the host side
# must import on Python 3.9
Observer = Callable[[Optional[str], tuple[str, ...]], None]  # noqa: UP007, UP045
LineSink = Callable[[str], None]


class Runner:
    """Runs argv lists locally (``host=None``) or on ``host`` through ssh. Immutable."""

    __slots__ = ("host", "ssh", "sudo_prefix", "timeout", "observers")

    def __init__(self, host: str | None = None, ssh: Sequence[str] = DEFAULT_SSH,
                 sudo_prefix: Sequence[str] = DEFAULT_SUDO, timeout: float | None = None,
                 observers: Sequence[Observer] = ()):
        for name, value in (("host", host), ("ssh", tuple(ssh)),
                            ("sudo_prefix", tuple(sudo_prefix)), ("timeout", timeout),
                            ("observers", tuple(observers))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"Runner is immutable: use on() or observed_by() ({name})")

    def __repr__(self) -> str:
        return f"Runner(host={self.host!r}, ssh={self.ssh!r}, sudo_prefix={self.sudo_prefix!r})"

    def _copy(self, **changes) -> Runner:
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Runner(**fields)

    def on(self, host: str | None) -> Runner:
        """The same runner, aimed at ``host`` (``None`` = this machine)."""
        return self._copy(host=host)

    def observed_by(self, observer: Observer) -> Runner:
        return self._copy(observers=self.observers + (observer,))

    def full_argv(self, argv: Sequence[str], sudo: bool = False) -> tuple[str, ...]:
        """The argv actually executed on this machine (ssh wrapper included)."""
        command = check_argv(argv)
        if sudo and not (self.host is None and os.geteuid() == 0):
            command = tuple(self.sudo_prefix) + command
        if self.host is None:
            return command
        return tuple(self.ssh) + ("--", self.host, remote_command_line(command))

    def run(self, argv: Sequence[str], *, sudo: bool = False, timeout: float | None = None,
            input: str | bytes | None = None, check: bool = True,
            on_stderr_line: LineSink | None = None, hold_stdin: bool = False,
            cancel: threading.Event | None = None) -> Result:
        """Run ``argv``; raise a :class:`CommandError` on failure when ``check`` is true.

        ``hold_stdin``: after ``input``, keep the command's stdin open until it exits, so it
        sees EOF only if we die (the privileged host half stops and undoes its work then).
        ``cancel``: once set, the command's process group is killed (:class:`CommandCancelled`).
        """
        command = check_argv(argv)
        for observer in self.observers:
            observer(self.host, command)
        full = self.full_argv(command, sudo)
        limit = timeout if timeout is not None else self.timeout
        started = time.monotonic()
        try:
            code, out, err = _execute(full, input, limit, on_stderr_line, hold_stdin, cancel)
        except FileNotFoundError:
            raise CommandNotFound(command, self.host, COMMAND_NOT_FOUND) from None
        except _Timeout as expired:
            if expired.cancelled:
                raise CommandCancelled(command, self.host, None, expired.stdout,
                                       expired.stderr) from None
            raise CommandTimeout(command, self.host, limit or 0, expired.stdout,
                                 expired.stderr) from None
        result = Result(command, self.host, code, out, err, time.monotonic() - started)
        if check and code != 0:
            raise error_for(result)
        return result

    def hand_over(self, argv: Sequence[str]) -> None:
        """Become ``argv`` (exec, never returns): for an interactive program such as ``ssh``.

        The terminal and the user's locale are the program's; there is no output to read, so
        no ``LC_ALL=C`` and no capture. Observers still see the command.
        """
        command = check_argv(argv)
        for observer in self.observers:
            observer(self.host, command)
        try:
            os.execvp(command[0], list(command))
        except FileNotFoundError:
            raise CommandNotFound(command, self.host, COMMAND_NOT_FOUND) from None

    def output(self, argv: Sequence[str], **kwargs) -> str:
        """Run and return stdout (stripped of the final newline)."""
        return self.run(argv, **kwargs).stdout.rstrip("\n")

    def succeeds(self, argv: Sequence[str], **kwargs) -> bool:
        """Run without raising on a non-zero exit; True when it exited 0."""
        return self.run(argv, check=False, **kwargs).returncode == 0


class _Timeout(Exception):
    def __init__(self, stdout: str, stderr: str, cancelled: bool = False):
        super().__init__("timeout")
        self.stdout = stdout
        self.stderr = stderr
        self.cancelled = cancelled


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(C_LOCALE)
    return env


def _execute(argv: Sequence[str], input: str | bytes | None, timeout: float | None,
             on_stderr_line: LineSink | None, hold_stdin: bool = False,
             cancel: threading.Event | None = None) -> tuple[int, str, str]:
    """Execute with captured output; kill the process group on timeout."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.Popen(  # argv list, no shell
        list(argv), stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(),
        start_new_session=True)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out_chunks, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err_chunks, on_stderr_line),
                              daemon=True)]
    for pump in pumps:
        pump.start()
    _feed(proc, data, close=not hold_stdin)
    try:
        stopped = _wait(proc, timeout, cancel)
    finally:
        if hold_stdin and proc.stdin is not None:
            _close_stdin(proc)
    if stopped:
        _kill_group(proc)
        _join(pumps, PIPE_GRACE_SECONDS)
        raise _Timeout(_decode(b"".join(out_chunks)), _decode(b"".join(err_chunks)),
                       cancelled=stopped == "cancelled")
    # A daemonised grandchild (an ssh ControlPersist master, say) may keep our pipes open
    # forever: like oned, give the readers a short grace period once the command has exited.
    _join(pumps, PIPE_GRACE_SECONDS)
    return (_exit_code(proc.returncode), _decode(b"".join(out_chunks)),
            _decode(b"".join(err_chunks)))


def _wait(proc: subprocess.Popen, timeout: float | None,
          cancel: threading.Event | None) -> str:
    """Wait for the exit: "" when it exited, else "timeout" or "cancelled"."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 0.2 if cancel is not None else None
        if deadline is not None:
            left = deadline - time.monotonic()
            step = left if step is None else min(step, left)
        try:
            proc.wait(timeout=None if step is None else max(step, 0))
            return ""
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                return "cancelled"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"


def _feed(proc: subprocess.Popen, data: bytes | None, close: bool = True) -> None:
    if data is None:
        return
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # the command exited without reading its input; its exit code tells the rest
    finally:
        if close:
            _close_stdin(proc)


def _close_stdin(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def _join(threads: list[threading.Thread], grace: float) -> None:
    deadline = time.monotonic() + grace
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _pump(stream, chunks: list[bytes], sink: LineSink | None) -> None:
    """Collect a pipe; hand complete lines (split on CR or LF: dd progress) to ``sink``."""
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        chunks.append(chunk)
        if sink is None:
            continue
        pending += chunk.replace(b"\r", b"\n")
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                sink(_decode(line).strip())
    if sink is not None and pending.strip():
        sink(_decode(pending).strip())


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_code(code: int) -> int:
    # A command killed by a signal is reported like oned does: 255.
    return code if code >= 0 else 255


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
