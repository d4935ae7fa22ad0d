"""A faithful stand-in for oned's Ruby driver runtime, for driver tests.

OpenNebula's runtime (one_tm.rb, the datastore MAD, the VMM's TM and VNM steps, the hook
execution manager) is not installable here, so this module reproduces what it does with our
scripts: how it finds and starts them, and how exit codes and stderr become reply lines.

Contract: the driver protocol summarised in docs/lab.md (MAD replies, stderr rules). Details the
document leaves open follow the Ruby sources it cites (src/mad/ruby/{OpenNebulaDriver,
ActionManager,DriverExecHelper,CommandManager,ssh_stream}.rb, src/tm_mad/one_tm.rb,
src/datastore_mad/one_datastore.rb, src/vnm_mad/one_vnm.rb, src/hem/onehem-server.rb).
Where the real runtime would crash (a Ruby exception whose text depends on the Ruby version)
or hang, the harness raises HarnessError instead of inventing a reply: such a case is a
driver bug to fix, not a result to assert on.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import selectors
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "SYSTEM_DS_TYPES",
    "HarnessError",
    "LogLine",
    "MonitorFailure",
    "Reply",
    "ScriptRun",
    "TmMad",
    "decode_monitor_reply",
    "parse_message",
    "parse_reply",
    "run_ds_monitor",
    "run_hook",
    "run_tm_command",
    "run_transfer_file",
    "run_vnm_action",
    "RUNTIMES",
    "current_runtime",
    "runtime",
    "shell_escape",
    "vm_stdin",
    "write_version_file",
]

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"

# defaultrc, exported by madcommon.sh into every MAD (and so into every script it runs).
_DEFAULTRC = {"PRIORITY": "19", "ONE_MAD_DEBUG": ""}
# one_datastore.rb's default when DATASTORE_MAD has no -s option.
SYSTEM_DS_TYPES = ("shared", "ssh", "ceph")

#: the driver runtimes modelled: what one_tm.rb & co. of these releases do with a script's result
RUNTIMES = ("7.0", "6.10")
#: what each runtime installs as <remotes>/VERSION (the release the tests stand for)
_VERSION_FILE = {"7.0": "7.0.0", "6.10": "6.10.5"}
_selected = {"runtime": os.environ.get("VAF_ONED_RUNTIME", "7.0"), "lang": None}

# CommandManager#capture3_timeout: after the process exits each still-open pipe reader gets
# join(0.1), stdout first, then stderr; a reader still blocked is killed and its value is nil.
_GRACE = 0.1
_TICK = 0.01

_DUMP_SEVERITY = {"ERROR": "E", "DEBUG": "D", "INFO": "I"}
_TAG_SEVERITY = {**_DUMP_SEVERITY, "WARN": "W"}
# DriverExecHelper#log (the failure dump): the line is matched before it is stripped.
_DUMP_TAG = re.compile(r"(ERROR|DEBUG|INFO):(.*)$")
# DriverExecHelper#get_info_from_execution; Ruby's \s and \d are ASCII-only.
_TAGGED = re.compile(r"(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$", re.ASCII)
_COMMENT = re.compile(r"\s*#", re.ASCII)
# bytes the locale's codec could not read, kept by surrogateescape: Ruby's "broken" string parts
_BROKEN = re.compile("[\udc80-\udcff]")
_BLANK = re.compile(r"\s*$", re.ASCII)
_RUBY_WS = " \t\n\v\f\r\0"  # what Ruby's String#strip removes (ASCII whitespace and NUL)
_AWK_WS = " \t\n\v\f\r"  # what Ruby's split(' ') splits on
# Shellwords.escape leaves these alone and backslash-escapes every other character.
_SHELL_UNSAFE = re.compile(r"[^A-Za-z0-9_\-.,:+/@\n]")
# Process.spawn hands a command string to /bin/sh -c if it contains one of these.
_SHELL_META = frozenset("*?{}[]<>()~&|\\$;'`\"\n#")
_TO_I = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+(?:_\d+)*)", re.ASCII)


class HarnessError(Exception):
    """The harness could not reproduce a runtime result (safety timeout, crash, hang, bad input)."""


class _RubyError(Exception):
    """A StandardError the Ruby runtime raises while reading a result; str() is its message."""


def current_runtime() -> str:
    """The runtime the harness models now: "7.0" (default) or "6.10"."""
    return _selected["runtime"]


@contextmanager
def runtime(version: str, lang: str | None = None):
    """Model the ``version`` runtime (``"7.0"`` or ``"6.10"``) inside the block.

    ``lang`` is the MAD's locale (``LANG`` of oned's service): None, as under systemd by default,
    makes Ruby read every script's stderr as US-ASCII, so a single non-ASCII byte breaks the
    regex matching of the result; ``"C.UTF-8"`` reads it as UTF-8.
    """
    if version not in RUNTIMES:
        raise HarnessError(f"unknown runtime {version!r} (known: {', '.join(RUNTIMES)})")
    saved = dict(_selected)
    _selected.update(runtime=version, lang=lang)
    try:
        yield version
    finally:
        _selected.update(saved)


def write_version_file(remotes: str | os.PathLike, version: str | None = None) -> str:
    """Write <remotes>/VERSION as OpenNebula installs it; returns the release written."""
    release = _VERSION_FILE[version or current_runtime()]
    with open(os.path.join(os.fspath(remotes), "VERSION"), "w", encoding="ascii") as handle:
        handle.write(release + "\n")
    return release


def _ruby_encoding() -> str:
    """Encoding.default_external of the MAD: its locale's charset, US-ASCII when unset or C."""
    lang = (_selected["lang"] or "").lower()
    return "UTF-8" if "utf-8" in lang or "utf8" in lang else "US-ASCII"


def _ruby_match(pattern: re.Pattern, line: str) -> re.Match | None:
    """Regexp#match on a line as Ruby holds it: a line with an invalid byte raises."""
    if _BROKEN.search(line):
        raise _RubyError(f"invalid byte sequence in {_ruby_encoding()}")
    return pattern.match(line)


class _Killed(Exception):
    """The Ruby thread running the action was killed (DRIVER_CANCEL, EOF on the MAD's stdin)."""


class _SpawnError(Exception):
    """Process.spawn raised Errno::*; Ruby formats it as '<strerror> - <program>'."""

    def __init__(self, strerror: str, program: str) -> None:
        super().__init__(f"{strerror} - {program}")


# ---------------------------------------------------------------------------------------------
# Ruby string behaviour the runtime relies on
# ---------------------------------------------------------------------------------------------


def _ruby_strip(text: str) -> str:
    return text.strip(_RUBY_WS)


def _each_line(text: str) -> list[str]:
    """String#each_line: split after every "\\n" only (never on \\r or Unicode separators)."""
    if not text:
        return []
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _ruby_to_i(text: str) -> int:
    """String#to_i, used by the MAD loop for the action id of DRIVER_CANCEL bookkeeping."""
    match = _TO_I.match(text)
    return int(match.group(1).replace("_", "")) if match else 0


def _ruby_integer(digits: str | None) -> int:
    """Kernel#Integer on the id after a tag: a leading 0 means octal, a bad number means -1."""
    if digits is None:
        return -1
    try:
        return int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)
    except ValueError:
        return -1


def _ruby_join(first: str, *parts: str) -> str:
    """File.join: one separator between parts, keeping a part's own leading slashes."""
    result = first
    for part in parts:
        if part.startswith("/"):
            result = result.rstrip("/") + part
        elif not result.endswith("/"):
            result = f"{result}/{part}"
        else:
            result += part
    return result


def _awk_split(line: str) -> list[str]:
    """Ruby's line.split(' '), which the contract pins to Python's str.split().

    The two differ only on non-ASCII whitespace (NBSP, U+2000...) and \\x1c-\\x1f, which
    Python splits on and Ruby does not; such input is refused rather than mis-split.
    """
    odd = sorted({char for char in line if char.isspace() and char not in _AWK_WS})
    if odd:
        raise HarnessError(f"{line!r} holds whitespace Ruby does not split on: {odd!r}")
    return line.split()


def _regex_split(line: str) -> list[str]:
    """str.split(/\\s+/) as the MAD loop does: a leading "" is kept, trailing ones dropped."""
    words = re.split(r"\s+", line, flags=re.ASCII)
    while words and words[-1] == "":
        words.pop()
    return words


def shell_escape(word: str) -> str:
    """Ruby's Shellwords.escape (a backslash before each unsafe character; shlex.quote differs)."""
    if word == "":
        return "''"
    if "\0" in word:
        raise HarnessError("Shellwords.escape raises on a NUL character")
    return _SHELL_UNSAFE.sub(lambda match: "\\" + match.group(0), word).replace("\n", "'\n'")


def _ruby_uses_shell(command: str) -> bool:
    """Process.spawn(string) runs /bin/sh -c only if the string needs a shell.

    Mirrors rb_exec_fillarg: a meta character anywhere, or '=' in the first word before any
    '/'. (Its check for a first word naming a shell builtin never applies here: our first word
    is always a path containing '/'.)
    """
    started = first_done = False
    for char in command:
        if char in " \t":
            first_done = first_done or started
        else:
            started = True
        if char in _SHELL_META:
            return True
        if not first_done and char == "=":
            return True
        if not first_done and char == "/":
            first_done = True
    return False


def _spawn_argv(command: str) -> tuple[list[str], str | None]:
    """(argv, executable) the way Ruby starts a command string.

    Without meta characters Ruby splits on spaces and tabs and execs the words itself; with
    them it runs `sh -c <string>`. The two differ in ways a test can see: dash forks rather
    than execs, so a script killed by a signal yields exit code 128+N plus a "Killed" line.
    """
    if _ruby_uses_shell(command):
        return ["sh", "-c", command], "/bin/sh"
    return [word for word in re.split(r"[ \t]+", command) if word], None


def _message(action: str, result: str, ident: object, info: object) -> str:
    """DriverExecHelper#send_message."""
    return f"{action} {result} {ident} {info}"


def _b64(data: str | bytes) -> str:
    """Base64.strict_encode64 (what the runtime puts on stdin and in replies)."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def vm_stdin(vm_xml: str) -> bytes:
    """The stdin the VMM gives premigrate/postmigrate/failmigrate: base64 VM XML, no newline."""
    return _b64(vm_xml).encode("ascii")


# ---------------------------------------------------------------------------------------------
# Running one process the way CommandManager does
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    cwd: str
    env: dict[str, str]
    deadline: float  # monotonic time of the outer safety timeout
    nice: bool = True
    cancel: threading.Event | None = None
    on_spawn: Callable[[subprocess.Popen], None] | None = None
    timeout: float | None = None  # a real runtime timeout (hooks' TIMEOUT): SIGTERM the group


@dataclass
class _Raw:
    code: int
    out: bytes
    err: bytes
    out_lost: bool
    err_lost: bool
    timed_out: bool


@dataclass
class _Exec:
    """What GenericCommand#run leaves behind; None = the Ruby value is nil."""

    code: int
    stdout: bytes | None
    stderr: str | None


def _lower_priority() -> None:
    # Runs in the child between fork and exec: the MAD itself runs under `nice -n $PRIORITY`.
    os.nice(19)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _popen(argv: list[str], executable: str | None, ctx: _Ctx) -> subprocess.Popen:
    proc = subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ctx.cwd,
        env=ctx.env,
        process_group=0,  # Open3.popen3(..., :pgroup => true)
        preexec_fn=_lower_priority if ctx.nice else None,
    )
    if ctx.on_spawn is not None:
        ctx.on_spawn(proc)
    return proc


def _spawn(argv: list[str], executable: str | None, ctx: _Ctx) -> subprocess.Popen:
    try:
        return _popen(argv, executable, ctx)
    except OSError as err:
        if executable is not None:
            raise HarnessError(f"cannot start /bin/sh: {err}") from err
        if err.errno != errno.ENOEXEC:
            raise _SpawnError(err.strerror or str(err), argv[0]) from err
    # Ruby's proc_exec_cmd retries a file without a #! line as `sh <file> <args>`.
    try:
        return _popen(["sh", *argv], "/bin/sh", ctx)
    except OSError as err:
        raise _SpawnError(err.strerror or str(err), argv[0]) from err


class _Collector:
    """Ruby's capture3_timeout: feed stdin and close it, read both pipes, wait for the exit."""

    def __init__(self, proc: subprocess.Popen, stdin: bytes, ctx: _Ctx) -> None:
        self._proc, self._ctx = proc, ctx
        self._sel = selectors.DefaultSelector()
        self._bufs = {"out": bytearray(), "err": bytearray()}
        self._state = {"out": "open", "err": "open"}  # open | eof | lost
        self._pending = memoryview(stdin)
        self._started = time.monotonic()
        self._exit_at: float | None = None
        self._out_settled_at: float | None = None
        self._term_sent = False
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            os.set_blocking(stream.fileno(), False)
            self._sel.register(stream, selectors.EVENT_READ, name)
        if self._pending:
            os.set_blocking(proc.stdin.fileno(), False)
            self._sel.register(proc.stdin, selectors.EVENT_WRITE, "in")
        else:
            proc.stdin.close()  # Ruby writes '' and closes: the script sees EOF at once

    def run(self) -> _Raw:
        try:
            while not self._settled():
                self._check_cancel()
                self._tick(time.monotonic())
                if not self._settled():
                    self._pump()
        finally:
            self._close_all()
        return _Raw(
            code=self._proc.returncode,
            out=bytes(self._bufs["out"]),
            err=bytes(self._bufs["err"]),
            out_lost=self._state["out"] == "lost",
            err_lost=self._state["err"] == "lost",
            timed_out=self._term_sent,
        )

    def _settled(self) -> bool:
        return self._exit_at is not None and "open" not in self._state.values()

    def _check_cancel(self) -> None:
        if self._ctx.cancel is None or not self._ctx.cancel.is_set():
            return
        # A killed Ruby thread runs popen3's ensure: close the pipes, wait for the child.
        self._close_all()
        with suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=max(0.0, self._ctx.deadline - time.monotonic()))
        raise _Killed

    def _tick(self, now: float) -> None:
        if self._exit_at is None:
            if self._proc.poll() is None:
                self._enforce_limits(now)
                return
            self._exit_at = now
            self._close_stdin()
            if self._state["out"] != "open":
                self._out_settled_at = now
        if self._state["out"] == "open" and now >= self._exit_at + _GRACE:
            self._drop("out", "lost")
        if self._out_settled_at is None and self._state["out"] != "open":
            self._out_settled_at = now
        settled = self._out_settled_at
        if settled is not None and self._state["err"] == "open" and now >= settled + _GRACE:
            self._drop("err", "lost")

    def _enforce_limits(self, now: float) -> None:
        if now >= self._ctx.deadline:
            _kill_group(self._proc, signal.SIGKILL)
            self._proc.wait()
            raise HarnessError(f"safety timeout: {self._proc.args!r} was still running")
        limit = self._ctx.timeout
        if limit is not None and not self._term_sent and now - self._started >= limit:
            _kill_group(self._proc, signal.SIGTERM)  # the terminator thread's Process.kill
            self._term_sent = True

    def _pump(self) -> None:
        for key, _events in self._sel.select(_TICK):
            if key.data == "in":
                self._feed()
            else:
                self._read(key.data, key.fileobj)

    def _read(self, name: str, stream) -> None:
        try:
            chunk = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return
        if chunk:
            self._bufs[name] += chunk
        else:
            self._drop(name, "eof")

    def _feed(self) -> None:
        try:
            written = os.write(self._proc.stdin.fileno(), self._pending[:65536])
        except BlockingIOError:
            return
        except BrokenPipeError:  # Ruby rescues EPIPE: the script did not read its stdin
            self._close_stdin()
            return
        self._pending = self._pending[written:]
        if not self._pending:
            self._close_stdin()

    def _close_stdin(self) -> None:
        stdin = self._proc.stdin
        if stdin.closed:
            return
        with suppress(KeyError):
            self._sel.unregister(stdin)
        with suppress(OSError):
            stdin.close()

    def _drop(self, name: str, state: str) -> None:
        stream = self._proc.stdout if name == "out" else self._proc.stderr
        with suppress(KeyError):
            self._sel.unregister(stream)
        stream.close()
        self._state[name] = state

    def _close_all(self) -> None:
        if self._sel.get_map() is None:
            return  # already closed (cancel path, then the finally clause)
        for name in ("out", "err"):
            if self._state[name] == "open":
                self._drop(name, "lost")
        self._close_stdin()
        self._sel.close()


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # Ruby's regex match raises ArgumentError on a string with invalid bytes.
        raise HarnessError(f"{what} is not valid UTF-8; the Ruby runtime would crash") from err


def _read_stream(data: bytes) -> str:
    """A pipe read by Ruby in the MAD's locale: undecodable bytes kept as broken parts."""
    codec = "utf-8" if _ruby_encoding() == "UTF-8" else "ascii"
    return data.decode(codec, "surrogateescape")


def _lost_value(runtime_version: str, empty):
    """A pipe reader killed after the grace time: nil on 6.10, ``value || ''`` on 7.x."""
    return None if runtime_version == "6.10" else empty


def _generic_run(command: str, ctx: _Ctx, stdin: bytes, log: Callable[[str], None] | None) -> _Exec:
    """GenericCommand#run for LocalCommand: start, collect, and on failure dump to the log."""
    if ctx.cancel is not None and ctx.cancel.is_set():
        raise _Killed  # a killed Ruby thread starts nothing more
    try:
        argv, executable = _spawn_argv(command)
        raw = _Collector(_spawn(argv, executable, ctx), stdin, ctx).run()
    except _SpawnError as err:
        return _internal_error(f"Internal error {err}", log)
    if raw.timed_out:
        return _internal_error(f"Timeout executing {command}", log)
    code = raw.code if raw.code >= 0 else 255  # status.exited? is false after a signal
    version = current_runtime()
    stdout = _lost_value(version, b"") if raw.out_lost else raw.out
    stderr = _lost_value(version, "") if raw.err_lost else _read_stream(raw.err)
    if code != 0 and log is not None:
        try:
            log(f"Command execution failed (exit code: {code}): {command}")
            if stderr is None:  # DriverExecHelper#log does message.strip
                raise _RubyError("undefined method `strip' for nil:NilClass")
            log(stderr)
        except _RubyError as err:  # run's rescue: the message replaces stderr, code 255
            return _internal_error(f"Internal error {err}", log)
    return _Exec(code, stdout, stderr)


def _internal_error(message: str, log: Callable[[str], None] | None) -> _Exec:
    # GenericCommand#run's rescue: log the message, make it the stderr, code 255, stdout nil.
    if log is not None:
        log(message)
    return _Exec(255, None, message)


# ---------------------------------------------------------------------------------------------
# DriverExecHelper: stderr to LOG lines and a reason
# ---------------------------------------------------------------------------------------------


def _log_lines(number: object, message: str, all_lines: bool = True) -> Iterator[str]:
    """DriverExecHelper#log: the failure dump (tag text kept whole, WARN and the rest as I).

    A generator, because Ruby sends each line as it goes: when a later line raises (an invalid
    byte), the lines before it have reached oned.
    """
    for line in _each_line(_ruby_strip(message)):
        match = _ruby_match(_DUMP_TAG, line)
        if match:
            severity, text = _DUMP_SEVERITY[match.group(1)], match.group(2)
        elif all_lines:
            severity, text = "I", line
        else:
            continue
        yield _message("LOG", severity, number, _ruby_strip(text))


def _info_from_execution(ex: _Exec, emit: Callable[[str], None],
                         version: str | None = None) -> tuple[str, bytes]:
    """get_info_from_execution of the selected runtime; LOG lines go to ``emit`` as they come.

    Returns (result, info): info is stdout on success and the reason on failure, "-" when
    empty. 7.x turns tagged stderr lines into LOG lines and joins the untagged ones into the
    reason; 6.10 logs nothing on success and makes the whole stderr, newlines turned into
    spaces, the reason (CommandManager#get_error_message). Raises _RubyError where Ruby would.
    """
    if (version or current_runtime()) == "6.10":
        if ex.code == 0:
            return SUCCESS, ex.stdout or b"-"  # stdout nil (a lost pipe) also gives "-"
        stderr = ex.stderr or ""
        return FAILURE, (_ruby_strip(stderr.replace("\n", " ")) or "-").encode(
            "utf-8", "surrogateescape")
    untagged = []
    for raw in _each_line(ex.stderr or ""):
        line = _ruby_strip(raw)
        match = _ruby_match(_TAGGED, line)
        if match is None:
            untagged.append(line)
            continue
        severity = _TAG_SEVERITY[match.group(1)]
        ident = _ruby_integer(match.group(2))
        emit(_message("LOG", severity, ident, _ruby_strip(match.group(3))))
    if ex.code == 0:
        return SUCCESS, ex.stdout or b"-"
    reason = _ruby_strip("".join(untagged).replace("\n", " ")) or "-"
    return FAILURE, reason.encode("utf-8", "surrogateescape")


def _crash(err: _RubyError, where: str) -> HarnessError:
    """A Ruby exception no rescue of ``where`` catches: the action gets no reply at all."""
    return HarnessError(f"{where} raises {err} (no reply reaches oned): write ASCII only to "
                        "stderr")


# ---------------------------------------------------------------------------------------------
# Transfer Manager (one_tm.rb)
# ---------------------------------------------------------------------------------------------


def _abs(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _checked_dir(path: str | os.PathLike) -> str:
    directory = _abs(path)
    if not os.path.isdir(directory):
        raise HarnessError(f"var dir {directory} does not exist (the MAD's `cd` would fail)")
    return directory


def _mad_env(env: dict[str, str] | None, cwd: str) -> dict[str, str]:
    """The MAD's environment: the inherited one, then defaultrc; the wrapper's cd sets PWD."""
    merged = dict(os.environ if env is None else env)
    merged.update(_DEFAULTRC)
    merged["PWD"] = cwd
    return merged


def _name_list(names: str | Iterable[str] | None, default: Sequence[str]) -> list[str]:
    """A -d / -s option value: 'a,b' is split on commas and stripped, as getoptlong code does."""
    if names is None:
        return list(default)
    if isinstance(names, str):
        items = names.split(",")
        while items and items[-1] == "":  # Ruby's split drops trailing empty fields
            items.pop()
        return [item.strip() for item in items]
    return list(names)


def _tm_types(scripts: str, drivers: str | Iterable[str] | None) -> list[str]:
    """@types: the -d list, or every (non-hidden) directory under remotes/tm when it is absent."""
    if drivers is not None:
        return _name_list(drivers, ())
    try:
        entries = sorted(os.listdir(scripts))
    except FileNotFoundError:
        return []
    return [
        name
        for name in entries
        if not name.startswith(".") and os.path.isdir(os.path.join(scripts, name))
    ]


class _TransferManager:
    """TransferManagerDriver#action_transfer and #do_transfer_action for one action."""

    def __init__(self, remotes: str, types: list[str], ctx: _Ctx, emit: Callable[[str], None]):
        self._scripts = _ruby_join(remotes, "tm/")  # @local_scripts_path
        self._types = types
        self._ctx = ctx
        self._emit = emit

    def action_transfer(self, ident: str, script_file: str) -> None:
        commands = self._parse_script(script_file)
        if commands is None:
            message = f"Transfer file '{script_file}' does not exist"
            self._emit(_message("TRANSFER", FAILURE, ident, message))
            return
        try:
            for words in commands:
                result, info = self.do_transfer_action(ident, words)
                if result == FAILURE:
                    self._emit(_message("TRANSFER", FAILURE, ident, info))
                    return
        except _RubyError as err:
            if current_runtime() == "6.10":  # no rescue around action_transfer in 6.10
                raise _crash(err, "one_tm.rb 6.10") from None
            self._emit(_message("TRANSFER", FAILURE, ident, str(err)))  # 7.x's rescue
            return
        self._emit(_message("TRANSFER", SUCCESS, ident, "-"))

    def do_transfer_action(
        self, ident: str, words: list[str], stdin: bytes = b""
    ) -> tuple[str, str]:
        if len(words) < 2:
            raise HarnessError(f"transfer line {words!r}: one_tm.rb raises NoMethodError on it")
        action, driver = words[0].lower(), words[1]
        args = " ".join(shell_escape(word) for word in words[2:])
        if driver not in self._types:
            return FAILURE, f"Transfer Driver '{driver}' not available"
        path, error = self._script_path(driver, action)
        if error:
            return FAILURE, error
        ex = _generic_run(f"{path} {args}", self._ctx, stdin, self._logger(ident))
        result, info = _info_from_execution(ex, self._emit)
        return result, info.decode("utf-8", "surrogateescape")

    def _script_path(self, driver: str, action: str) -> tuple[str, str | None]:
        path = _ruby_join(self._scripts, driver, action)
        if os.path.exists(path):  # File.exist?: true for directories too
            return path, None
        match = re.match(r"(.*)\.(.*)", action)  # a .<TM_MAD_SYSTEM> suffix: drop the last part
        if match is None:
            return path, f"Driver path '{path}' does not exists"
        short = _ruby_join(self._scripts, driver, match.group(1))
        if not os.path.exists(short):
            return path, f"Driver path '{path}' nor '{short}' exists"
        return short, None

    def _logger(self, ident: str) -> Callable[[str], None]:
        def log(message: str) -> None:
            for line in _log_lines(ident, message):
                self._emit(line)

        return log

    def _parse_script(self, script_file: str) -> list[list[str]] | None:
        path = os.path.join(self._ctx.cwd, script_file)  # relative to the MAD's cwd
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as handle:
                text = _decode(handle.read(), f"transfer file {script_file}")
        except OSError as err:
            raise HarnessError(f"File.read({script_file!r}) raises in one_tm.rb: {err}") from err
        return [
            _awk_split(line)
            for line in _each_line(text)
            if not _COMMENT.match(line) and not _BLANK.match(line)
        ]


def _tm_context(var_dir, env, safety_timeout: float) -> _Ctx:
    cwd = _checked_dir(var_dir)
    return _Ctx(cwd=cwd, env=_mad_env(env, cwd), deadline=time.monotonic() + safety_timeout)


def _manager(remotes, drivers, ctx: _Ctx, emit: Callable[[str], None]) -> _TransferManager:
    remotes = _abs(remotes)
    return _TransferManager(remotes, _tm_types(_ruby_join(remotes, "tm/"), drivers), ctx, emit)


def run_transfer_file(
    path: str | os.PathLike,
    *,
    remotes: str | os.PathLike,
    drivers: str | Iterable[str] | None,
    action_id: int | str,
    var_dir: str | os.PathLike,
    env: dict[str, str] | None = None,
    safety_timeout: float = 600.0,
) -> list[str]:
    """Reply lines of one_tm.rb for `TRANSFER <action_id> <path>`: LOG lines, then the reply.

    drivers is the -d list ("a,b" or names; None = every dir under remotes/tm). env is the
    environment the MAD inherits (default: this process's); PRIORITY=19, ONE_MAD_DEBUG= and
    PWD=<var_dir> are added as the wrapper does. Scripts run niced by 19, in their own process
    group, in var_dir, with empty closed stdin and no timeout; safety_timeout only guards the
    test and raises HarnessError.
    """
    out: list[str] = []
    manager = _manager(remotes, drivers, _tm_context(var_dir, env, safety_timeout), out.append)
    manager.action_transfer(str(action_id), os.fspath(path))
    return out


def run_tm_command(
    line: str,
    *,
    remotes: str | os.PathLike,
    drivers: str | Iterable[str] | None = None,
    action_id: int | str,
    var_dir: str | os.PathLike,
    stdin: bytes | str = b"",
    env: dict[str, str] | None = None,
    safety_timeout: float = 600.0,
) -> list[str]:
    """One TM command run by the VMM (do_transfer_action), e.g. "PRE" + the MIGRATE line.

    The VMM allows every driver dir (drivers=None). stdin: base64 VM XML without newline for
    pre/post/failmigrate (see vm_stdin), empty for context and the rest. The VMM does not
    send a TRANSFER reply for its steps; the last line here is a synthetic
    `TRANSFER SUCCESS <id> -` / `TRANSFER FAILURE <id> <reason>` carrying the step result.
    """
    out: list[str] = []
    manager = _manager(remotes, drivers, _tm_context(var_dir, env, safety_timeout), out.append)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    try:
        result, info = manager.do_transfer_action(str(action_id), _awk_split(line), data)
    except _RubyError as err:
        raise _crash(err, "the VMM's TM step") from None
    out.append(_message("TRANSFER", result, action_id, info if result == FAILURE else "-"))
    return out


# ---------------------------------------------------------------------------------------------
# The whole MAD conversation (OpenNebulaDriver loop + ActionManager)
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Action:
    id: int  # the to_i id ActionManager keys running actions by
    name: str
    args: list[str]  # the words after the action name, id word included
    killed: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)


class TmMad:
    """The one_tm.rb process: read loop, ActionManager queue and threads, TRANSFER actions.

    Feed protocol lines with send() (or converse()), read stdout with lines(). Faithful parts:
    malformed/unknown/wrong-arity lines are ignored, replies for different ids interleave,
    FINALIZE lets queued and running actions finish, DRIVER_CANCEL kills the action's thread
    (its script keeps running with closed pipes, no reply follows), EOF (eof()) stops all
    output at once. ActionManager's counters are mirrored too, including the double decrement
    after cancelling a running action, which can keep FINALIZE from ever exiting.
    """

    _ARITY = {"INIT": 0, "TRANSFER": 2}

    def __init__(
        self,
        *,
        remotes: str | os.PathLike,
        drivers: str | Iterable[str] | None = None,
        var_dir: str | os.PathLike,
        env: dict[str, str] | None = None,
        threads: int = 15,
        safety_timeout: float = 600.0,
    ) -> None:
        self._remotes = _abs(remotes)
        self._cwd = _checked_dir(var_dir)
        self._env = _mad_env(env, self._cwd)
        self._types = _tm_types(_ruby_join(self._remotes, "tm/"), drivers)
        self._safety = safety_timeout
        self._concurrency = threads
        self.stderr: list[str] = []  # what the MAD writes to its stderr (2>/dev/null in oned)
        # ActionManager state, guarded by _cond (@threads_mutex / @threads_cond).
        self._cond = threading.Condition()
        self._queue: list[_Action] = []
        self._running: dict[int, _Action] = {}
        self._num_running = 0
        self._finalize = False
        self._dead = False
        # Output state, guarded by _out (@send_mutex); lock order: _cond, then _out.
        self._out = threading.Condition()
        self._lines: list[str] = []
        self._exited = False
        self._busy: set[_Action] = set()
        self._errors: list[BaseException] = []
        self._procs: list[subprocess.Popen] = []
        self._listener = threading.Thread(target=self._listen, name="tm-mad", daemon=True)
        self._listener.start()

    # -- public API ---------------------------------------------------------------------------

    def send(self, line: str) -> None:
        """Write one line to the MAD's stdin (OpenNebulaDriver#loop)."""
        self._raise_errors()
        if "\n" in line.rstrip("\n"):
            raise ValueError("send() takes one protocol line")
        if self.exited:
            raise HarnessError("the MAD has exited")
        words = _regex_split(line)
        if not words:
            return
        if words[0] == "":
            self.stderr.append(f"Malformed message: {line!r}")
            return
        name, args = words[0].upper(), words[1:]
        action_id = _ruby_to_i(args[0]) if args else 0
        if name == "DRIVER_CANCEL":
            self._cancel(action_id)
            cancelled = f"Driver command for {action_id} cancelled"
            self._emit(None, list(_log_lines(action_id, cancelled)))
        else:
            self._trigger(name, action_id, args)

    def lines(self) -> list[str]:
        """Everything the MAD wrote to stdout so far."""
        self._raise_errors()
        with self._out:
            return list(self._lines)

    @property
    def exited(self) -> bool:
        with self._out:
            return self._exited

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 60.0) -> None:
        """Block until predicate(stdout lines) holds."""
        self._wait(lambda: predicate(self._lines), timeout, "the expected output")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no action is queued or running (cancelled ones excepted)."""
        self._wait(lambda: not self._busy, timeout, "the running actions to end")

    def finalize(self, timeout: float = 60.0) -> list[str]:
        """Send FINALIZE and wait for the MAD to exit; returns its stdout."""
        self.send("FINALIZE")
        self._wait(self._finalized, timeout, "the MAD to exit after FINALIZE")
        return self.lines()

    def _finalized(self) -> bool:
        if self._num_running < 0 and not self._exited:  # an int read needs no lock
            raise HarnessError(
                "one_tm.rb never exits after this FINALIZE: cancelling a running action "
                "decrements ActionManager's @num_running twice (cancel_action and the killed "
                "thread's ensure), so it never gets back to 0"
            )
        return self._exited

    def eof(self) -> list[str]:
        """Close the MAD's stdin: one_tm.rb calls exit!(-1) and no further line is written."""
        with self._cond:
            self._dead = True
            victims = [*self._running.values(), *self._queue]
            self._cond.notify_all()
        with self._out:
            self._exited = True
            self._out.notify_all()
        for action in victims:  # the process is gone: its end of every pipe closes
            action.cancel.set()
        return self.lines()

    def converse(self, lines: Iterable[str], timeout: float = 60.0) -> list[str]:
        """Play lines as oned does: after INIT wait for its reply; send FINALIZE only when idle
        (oned sends it at shutdown, after the replies), then wait for the exit."""
        for line in lines:
            name = line.split()[0].upper() if line.split() else ""
            if name == "FINALIZE":
                self.wait_idle(timeout)
                self.finalize(timeout)
                continue
            self.send(line)
            if name == "INIT":
                self.wait_for(lambda out: any(x.startswith("INIT ") for x in out), timeout)
        return self.lines()

    def close(self) -> None:
        """Stop the MAD and kill every process group it started that is still alive."""
        if not self.exited:
            self.eof()
        for proc in self._procs:
            if proc.poll() is None:
                _kill_group(proc, signal.SIGKILL)

    def __enter__(self) -> TmMad:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- ActionManager ------------------------------------------------------------------------

    def _trigger(self, name: str, action_id: int, args: list[str]) -> None:
        with self._cond:
            if self._finalize:
                return
            if name == "FINALIZE":
                self._finalize = True
                if self._num_running == 0:
                    self._cond.notify()
                return
            if self._ARITY.get(name) != len(args):
                return  # unknown action or wrong number of arguments: silently ignored
            action = _Action(action_id, name, args)
            self._queue.append(action)
            with self._out:
                self._busy.add(action)
            if self._num_running < self._concurrency:
                self._cond.notify()

    def _cancel(self, action_id: int) -> None:
        with self._cond:
            action = self._running.get(action_id)
            if action is not None:
                self._kill(action)
                self._num_running -= 1
                del self._running[action_id]
                self._cond.notify()
                return
            queued = next((a for a in self._queue if a.id == action_id), None)
            if queued is not None:
                self._queue.remove(queued)
                self._kill(queued)

    def _kill(self, action: _Action) -> None:
        with self._out:
            action.killed = True
            self._busy.discard(action)
            self._out.notify_all()
        action.cancel.set()

    def _listen(self) -> None:
        with self._cond:
            while True:
                while self._concurrency - self._num_running == 0 or not self._queue:
                    self._cond.wait()
                    if self._dead:
                        return
                    if self._finalize and self._num_running == 0:
                        self._mark_exited()
                        return
                self._start(self._queue.pop(0))

    def _mark_exited(self) -> None:
        with self._out:
            self._exited = True
            self._out.notify_all()

    def _start(self, action: _Action) -> None:
        self._num_running += 1
        self._running[action.id] = action
        threading.Thread(target=self._work, args=(action,), daemon=True).start()

    def _work(self, action: _Action) -> None:
        try:
            self._perform(action)
        except _Killed:
            pass
        except HarnessError as err:
            self._record(err)
        except Exception as err:  # a harness bug must fail the test, not vanish in a thread
            self._record(HarnessError(f"harness error in {action.name}: {err!r}"))
        finally:
            with self._cond:  # the thread's ensure block in ActionManager#run_action
                self._num_running -= 1
                self._running.pop(action.id, None)
                self._cond.notify()
            with self._out:
                self._busy.discard(action)
                self._out.notify_all()

    def _perform(self, action: _Action) -> None:
        if action.name == "INIT":
            self._emit(action, ["INIT SUCCESS - -"])
            return
        ident, script_file = action.args
        ctx = _Ctx(
            cwd=self._cwd,
            env=self._env,
            deadline=time.monotonic() + self._safety,
            cancel=action.cancel,
            on_spawn=self._procs.append,
        )

        def emit(line: str) -> None:
            self._emit(action, [line])

        _TransferManager(self._remotes, self._types, ctx, emit).action_transfer(ident, script_file)

    # -- output -------------------------------------------------------------------------------

    def _emit(self, action: _Action | None, lines: list[str]) -> None:
        with self._out:
            if self._exited or (action is not None and action.killed):
                return  # a dead process or a killed thread writes nothing more
            self._lines.extend(lines)
            self._out.notify_all()

    def _record(self, err: BaseException) -> None:
        with self._out:
            self._errors.append(err)
            self._out.notify_all()

    def _raise_errors(self) -> None:
        with self._out:
            if self._errors:
                raise self._errors[0]

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._out:
            while not ready():
                if self._errors:
                    raise self._errors[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessError(f"timed out after {timeout}s waiting for {what}")
                self._out.wait(remaining)
        self._raise_errors()


# ---------------------------------------------------------------------------------------------
# System datastore monitor (one_datastore.rb)
# ---------------------------------------------------------------------------------------------


def _system_tm_mad(payload_xml: str) -> str:
    """DatastoreDriver#get_ds_type: the TM_MAD of a TYPE 1 (system) datastore."""
    try:
        root = ET.fromstring(payload_xml)
    except ET.ParseError as err:
        raise HarnessError(f"payload is not XML (REXML would raise): {err}") from err
    if root.tag != "DS_DRIVER_ACTION_DATA" or root.findtext("DATASTORE/TYPE") != "1":
        raise HarnessError("not a system datastore payload; only system-DS monitor is modelled")
    tm_mad = root.findtext("DATASTORE/TM_MAD")
    if not tm_mad:
        raise HarnessError("system datastore payload without TM_MAD")
    return tm_mad


def run_ds_monitor(
    ds_id: int | str,
    payload_xml: str,
    *,
    remotes: str | os.PathLike,
    tm_mad: str | None = None,
    allowed_system: str | Iterable[str] | None = None,
    var_dir: str | os.PathLike,
    env: dict[str, str] | None = None,
    safety_timeout: float = 600.0,
) -> list[str]:
    """Reply lines of the datastore MAD for `MONITOR <ds_id> <base64 payload>` (section 12.4).

    Runs `<remotes>/tm/<TM_MAD>/monitor <ds_id>` with the base64 payload on stdin. The TM_MAD
    comes from the payload (tm_mad, if given, must agree). allowed_system is the -s list
    (None = the built-in shared,ssh,ceph). The reply info is base64 of stdout on success and,
    as one_datastore.rb does it, base64 of the reason on failure too.
    """
    ident = str(ds_id)
    system_tm = _system_tm_mad(payload_xml)
    if tm_mad is not None and tm_mad != system_tm:
        raise HarnessError(f"tm_mad={tm_mad!r} but the payload's TM_MAD is {system_tm!r}")
    if system_tm not in _name_list(allowed_system, SYSTEM_DS_TYPES):
        reason = f"System datastore driver '{system_tm}' not available"
        return [_message("MONITOR", FAILURE, ident, reason)]
    out: list[str] = []
    command = f"{_ruby_join(_abs(remotes), 'tm/', system_tm, 'monitor')} {ident}"
    ctx = _tm_context(var_dir, env, safety_timeout)

    def log(message: str) -> None:
        out.extend(_log_lines(ident, message))

    ex = _generic_run(command, ctx, _b64(payload_xml).encode(), log)
    try:
        result, info = _info_from_execution(ex, out.append)
    except _RubyError as err:
        raise _crash(err, "one_datastore.rb") from None
    out.append(_message("MONITOR", result, ident, _b64(info)))
    return out


class MonitorFailure(ValueError):
    """decode_monitor_reply got a MONITOR FAILURE; .reason holds the decoded text."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"monitor failed: {reason}")
        self.reason = reason


def decode_monitor_reply(line: str) -> dict[str, str | list[str]]:
    """`MONITOR SUCCESS <id> <base64>` → {"USED_MB": "100", ...}.

    Simple OpenNebula template parsing: one KEY=VALUE per line, surrounding double quotes
    dropped; a key given more than once (VM=[...] records) maps to the list of raw values.
    Raises MonitorFailure for a FAILURE reply.
    """
    action, result, _ident, info = parse_message(line)
    if action != "MONITOR":
        raise ValueError(f"not a MONITOR reply: {line!r}")
    if result != SUCCESS:
        raise MonitorFailure(_maybe_b64(info))
    values: dict[str, str | list[str]] = {}
    for text in base64.b64decode(info, validate=True).decode().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$", text)
        if not match:
            continue
        key, value = match.group(1), match.group(2)
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key in values:
            previous = values[key]
            values[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            values[key] = value
    return values


def _maybe_b64(info: str) -> str:
    # Script failures are base64; "System datastore driver ... not available" is plain text.
    try:
        return base64.b64decode(info, validate=True).decode()
    except ValueError:
        return info


# ---------------------------------------------------------------------------------------------
# VNM actions (through the VMM's ssh stream) and state hooks (onehem-server)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptRun:
    """Outcome of a VNM action or a hook run."""

    exit_code: int
    result: str  # SUCCESS / FAILURE
    reason: str  # the failure reason the runtime reports, "-" if none (always "-" on success)
    logs: list[str]  # LOG lines in the order the runtime writes them
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.result == SUCCESS


def _login_dir(env: dict[str, str], cwd: str | os.PathLike | None) -> str:
    # Host-side actions run in an ssh session, which starts in the user's home directory.
    return _abs(cwd) if cwd is not None else env.get("HOME") or "/"


def _vm_id(vm_xml: str) -> str:
    try:
        ident = ET.fromstring(vm_xml).findtext("ID")
    except ET.ParseError as err:
        raise HarnessError(f"vm_xml is not XML: {err}") from err
    if not ident:
        raise HarnessError("vm_xml has no <ID>; pass action_id")
    return ident


def _host_ctx(env, cwd, safety_timeout: float, timeout: float | None = None) -> _Ctx:
    base = dict(os.environ if env is None else env)
    workdir = _login_dir(base, cwd)
    return _Ctx(
        cwd=workdir,
        env={**base, "PWD": workdir},
        deadline=time.monotonic() + safety_timeout,
        nice=False,
        timeout=timeout,
    )


def run_vnm_action(
    action: str,
    *,
    remotes: str | os.PathLike,
    vn_mad: str,
    vm_xml: str,
    args: Sequence[str] = (),
    action_id: int | str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    safety_timeout: float = 600.0,
) -> ScriptRun:
    """One VNM action as the VMM runs it: `<remotes>/vnm/<vn_mad>/<action> 'arg'...` on the host.

    The VMM sends it through its ssh stream as `cat << 'EOT' | <cmd>` (one_vnm.rb), so the
    script's stdin is the base64 VM XML plus a newline, and SshStreamCommand differs from the
    TM path: it logs every stderr line even on success, followed by an `ExitCode: N` line that
    also ends up glued to the failure reason; the failure line says "Command execution fail";
    a signal gives bash's 128+N. Log ids are the VM id (from vm_xml unless action_id given).
    """
    ident = str(action_id) if action_id is not None else _vm_id(vm_xml)
    path = _ruby_join(_abs(remotes), "vnm", vn_mad, action)  # stands for /var/tmp/one/vnm/...
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError(f"{path} is not an executable file (the VMM would try onehost sync)")
    if any("'" in arg for arg in args):
        raise HarnessError("the VMM wraps parameters in '...' without escaping: no quotes")
    quoted = " ".join("'" + arg + "'" for arg in args)  # get_parameters
    command = f"{path}  {quoted}"  # action_command_line adds ' ' before " <params>"
    ctx = _host_ctx(env, cwd, safety_timeout)
    try:
        proc = _spawn([path, *args], None, ctx)
    except _SpawnError as err:
        raise HarnessError(f"the host shell could not run {path}: {err}") from err
    raw = _Collector(proc, (_b64(vm_xml) + "\n").encode(), ctx).run()
    code = raw.code if raw.code >= 0 else 128 - raw.code
    stderr = _read_stream(raw.err)
    if stderr and not stderr.endswith("\n"):
        raise HarnessError(
            "stderr does not end with a newline: the ssh stream's end marker then does not "
            "start a line and the VMM action waits forever"
        )
    stream_err = f"{stderr}ExitCode: {code}"  # the marker line the stream leaves behind
    logs: list[str] = []
    try:
        if code != 0:
            failed = f"Command execution fail (exit code: {code}): cat << 'EOT' | {command}"
            logs += _log_lines(ident, failed)
        logs += _log_lines(ident, stream_err)
        result, info = _info_from_execution(_Exec(code, raw.out, stream_err), logs.append)
    except _RubyError as err:
        raise _crash(err, "the VMM's network step") from None
    return _script_run(code, result, info, logs, raw.out, stderr)


def _script_run(code: int, result: str, info: bytes, logs: list[str], out: bytes, err: str):
    reason = info.decode("utf-8", "surrogateescape") if result == FAILURE else "-"
    return ScriptRun(code, result, reason, logs, out, err)


def run_hook(
    command: str,
    *,
    remotes: str | os.PathLike,
    template_xml: str,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
    safety_timeout: float = 600.0,
) -> ScriptRun:
    """A state hook with ARGUMENTS="$TEMPLATE <extra_args...>" (section 9.1).

    COMMAND is relative to <remotes>/hooks unless absolute; $TEMPLATE is the base64 `<VM>`
    XML. The hook manager runs it like LocalCommand (or `ssh -n host <cmd>` for REMOTE=YES):
    no nice, empty stdin, a signal counts as 255, timeout = the hook's TIMEOUT (SIGTERM to the
    group, then "Timeout executing <cmd>"). It records exit code, stdout and stderr rather than
    LOG lines; logs and reason here apply the same stderr rules, for assertions.
    """
    for arg in extra_args:
        if not arg or _awk_split(arg) != [arg]:
            raise HarnessError(f"hook argument {arg!r}: ARGUMENTS is split on whitespace")
    path = command if command.startswith("/") else f"{_ruby_join(_abs(remotes), 'hooks')}/{command}"
    full = " ".join([path, _b64(template_xml), *extra_args])
    ex = _generic_run(full, _host_ctx(env, cwd, safety_timeout, timeout), b"", None)
    # The hook manager treats a nil stream as empty (EXECUTION_RESULT#to_xml).
    ex = _Exec(ex.code, ex.stdout or b"", ex.stderr or "")
    # The hook manager keeps the raw result (any bytes); parse a readable copy for assertions.
    readable = _Exec(ex.code, ex.stdout, _BROKEN.sub("?", ex.stderr))
    lines: list[str] = []
    result, info = _info_from_execution(readable, lines.append, version="7.0")
    return _script_run(ex.code, result, info, lines, ex.stdout, ex.stderr)


# ---------------------------------------------------------------------------------------------
# Reading replies in tests
# ---------------------------------------------------------------------------------------------


class LogLine(NamedTuple):
    severity: str  # E, I, W or D
    id: str  # the VM id, -1 (oned.log) or a number taken from the message
    text: str


class Reply(NamedTuple):
    result: str  # SUCCESS / FAILURE
    reason: str  # the info field: "-" on TRANSFER success
    logs: list[LogLine]


def parse_message(line: str) -> tuple[str, str, str, str]:
    """`ACTION RESULT ID INFO` → its four fields (INFO may hold spaces or be empty)."""
    parts = line.split(" ", 3)
    if len(parts) != 4:
        raise ValueError(f"not a driver message: {line!r}")
    return parts[0], parts[1], parts[2], parts[3]


def parse_reply(lines: Sequence[str]) -> Reply:
    """The lines of one action (LOG lines, then its reply) → (result, reason, logs)."""
    if not lines:
        raise ValueError("no lines")
    *log_lines, last = lines
    logs = []
    for line in log_lines:
        action, severity, ident, text = parse_message(line)
        if action != "LOG":
            raise ValueError(f"expected a LOG line before the reply: {line!r}")
        logs.append(LogLine(severity, ident, text))
    action, result, _ident, info = parse_message(last)
    if action == "LOG":
        raise ValueError(f"the last line is not a reply: {last!r}")
    return Reply(result, info, logs)
