"""Logging the way oned reads a driver's stderr, on 7.x and on 6.10.

7.x: the MAD turns every stderr line that matches ``^(ERROR|INFO|WARN|DEBUG):\\s+(\\d+)?\\s*(.*)$``
into a ``LOG`` message, with the number after the tag as the VM id (no number: oned.log).
Every *other* line is glued, without a separator, into the failure reason. So a driver writes
tagged lines for everything and, on failure, exactly one untagged line: the reason.

6.10 reads no tagged line: on success stderr is dropped, on failure all of it (newlines as
spaces) is the reason. There a driver writes nothing but the reason to stderr and sends its
details where the admin reads them (a *channel*, chosen by :func:`channel_for`):

* front-end actions (TM, datastore monitor): appended to the VM's log file in oned's own line
  format, as they happen (oned opens that file for every line it writes, in append mode, so
  the two writers' lines never mix); lines without a VM, or a VM log that is not a file
  (oned.conf ``LOG/SYSTEM`` syslog or std): to syslog, labelled as oned labels them;
* VNM actions and their ``<action>.d`` programs (run on the host through the VMM's ssh stream,
  which logs every stderr line into the VM log, tag stripped, the rest of the line kept as the
  text): kept until the action ends, then written to stderr without the VM id on success and
  to the host's syslog on failure.

Only ASCII reaches stderr: the MAD reads it in its locale (US-ASCII when LANG is unset), where
one non-ASCII byte breaks the whole reply; anything else is written as ``\\xe9``/``\\u2026``.

Messages always start with the driver's origin (``lvmsnap/clone: ...``) after the optional
VM id, so a message that begins with a number can never be mistaken for a VM id.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Callable

from vaf.errors import VafError, one_line

TYPE_CHECKING = False  # host commands import this module on every call: no typing
if TYPE_CHECKING:
    from vaf.one.runtime import OnedRuntime

TAGS = ("ERROR", "WARN", "INFO", "DEBUG")
#: the MAD's tagged-line rule (7.x get_info_from_execution)
TAGGED_RE = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")
#: oned's severity letters (Log::error_names) and their DEBUG_LEVEL rank
_LETTER = {"ERROR": "E", "WARN": "W", "INFO": "I", "DEBUG": "D"}
_RANK = {"ERROR": 0, "WARN": 1, "INFO": 2, "DEBUG": 3}
#: syslog priorities (facility daemon, as oned's SysLog) per tag
_SYSLOG_PRIORITY = {"ERROR": 3, "WARN": 4, "INFO": 6, "DEBUG": 7}
_DAEMON = 3
SYSLOG_TAG = "vaf"
SYSLOG_TIMEOUT = 2.0


def ascii_text(text: str) -> str:
    """``text`` with every non-ASCII character escaped (undecodable bytes as ``\\xNN``)."""
    if text.isascii():
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x80:
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte kept by surrogateescape (os.fsdecode)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def format_tagged(tag: str, origin: str, message: str, vmid: int | None = None) -> list[str]:
    """Build the tagged stderr lines for one message (one per line of ``message``)."""
    if tag not in TAGS:
        raise ValueError(f"unknown log tag {tag!r}")
    prefix = f"{tag}: {vmid} " if vmid is not None else f"{tag}: "
    return [prefix + text for text in message_lines(origin, message)]


def message_lines(origin: str, message: str) -> list[str]:
    """The text of each line of ``message`` as oned logs it: ``<origin>: <line>``, ASCII."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()] or [""]
    return [ascii_text(f"{origin}: {line}".rstrip()) for line in lines]


# --- channels: where the lines of one action go ---------------------------------------------

class Channel:
    """7.x (and hooks, host commands): every line to stderr as it comes."""

    def __init__(self, stream: Callable[[], io.TextIOBase]):
        self._stream = stream

    def stderr(self, text: str) -> None:
        out = self._stream()
        out.write(text + "\n")
        out.flush()

    def line(self, tag: str, vmid: int | None, text: str) -> None:
        self.stderr(f"{tag}: {vmid} {text}" if vmid is not None else f"{tag}: {text}")

    def close(self, ok: bool) -> None:
        """The action ended (``ok``: without a failure); called once, before any reason."""


class SyslogWriter:
    """RFC 3164 datagrams to the local syslog socket; a missing socket loses the line."""

    def __init__(self, path: str, label: str):
        self.path = path
        self.label = label

    def write(self, tag: str, vmid: int | None, text: str) -> None:
        stamp = time.strftime("%b %d %H:%M:%S")
        if stamp[4] == "0":
            stamp = stamp[:4] + " " + stamp[5:]  # syslog pads the day with a space
        where = f"[VM {vmid}]" if vmid is not None else ""
        message = (f"<{_DAEMON * 8 + _SYSLOG_PRIORITY[tag]}>{stamp} {SYSLOG_TAG}[{os.getpid()}]: "
                   f"{where}{self.label}[{_LETTER[tag]}]: {text}")
        import socket  # only 6.10 failures on hosts get here

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # a syslog daemon that stopped reading must not hang the driver (a datagram
                # socket blocks once its queue is full)
                sock.settimeout(SYSLOG_TIMEOUT)
                sock.sendto(message.encode("ascii", "replace"), self.path)
        except OSError:
            pass  # no syslog here: stderr would glue the line into the reason, so drop it


class VmLogChannel(Channel):
    """6.10 front-end: details into the VM's log file (or syslog), stderr for the reason only."""

    def __init__(self, stream, runtime: OnedRuntime, module: str = "TrM"):
        super().__init__(stream)
        self.runtime = runtime
        self.label = f"[Z{runtime.zone_id}][{module}]"
        self.syslog = SyslogWriter(runtime.syslog_socket, self.label)

    def line(self, tag: str, vmid: int | None, text: str) -> None:
        if _RANK[tag] > self.runtime.debug_level:
            return  # oned would not have logged it either
        path = self.runtime.vm_log_path(vmid) if vmid is not None else None
        if path is None or not self._append(path, tag, text):
            self.syslog.write(tag, vmid, text)

    def _append(self, path: str, tag: str, text: str) -> bool:
        # FileLog::log's line: ctime, zone, module, severity; one write in append mode.
        record = f"{time.ctime()} {self.label}[{_LETTER[tag]}]: {text}\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            os.write(fd, record.encode("ascii", "replace"))
        except OSError:
            return False
        finally:
            os.close(fd)
        return True


class DeferredChannel(Channel):
    """6.10 VNM: lines held until the end; stderr on success (the stream logs them), syslog
    on failure (stderr would glue them into the reason)."""

    def __init__(self, stream, runtime: OnedRuntime, label: str):
        super().__init__(stream)
        self.syslog = SyslogWriter(runtime.syslog_socket, f"[{label}]")
        self._held: list[tuple[str, int | None, str]] = []

    def line(self, tag: str, vmid: int | None, text: str) -> None:
        self._held.append((tag, vmid, text))

    def close(self, ok: bool) -> None:
        held, self._held = self._held, []
        for tag, vmid, text in held:
            if ok:
                # The stream logs each line with the VM's id and keeps the text after the tag
                # whole: a VM id written here would show up as part of the message.
                super().line(tag, None, text)
            else:
                self.syslog.write(tag, vmid, text)


def channel_for(kind: str, runtime: OnedRuntime, stream, label: str = "") -> Channel:
    """Where a driver of ``kind`` (tm, datastore, vnm, hooks...) writes under ``runtime``."""
    if not runtime.legacy:
        return Channel(stream)
    if kind in ("tm", "datastore"):
        return VmLogChannel(stream, runtime)
    if kind == "vnm":
        return DeferredChannel(stream, runtime, label or kind)
    return Channel(stream)  # hooks: the hook manager keeps the raw output on every release


# --- the log of one action ---------------------------------------------------------------------

class DriverLog:
    """Tagged logging for one driver action; ``vmid`` routes lines into that VM's log."""

    def __init__(self, origin: str, vmid: int | None = None, stream: io.TextIOBase | None = None):
        self.origin = origin
        self.vmid = vmid
        self._stream = stream
        self._channel = Channel(lambda: self.stream)
        self._closed = False

    @property
    def stream(self) -> io.TextIOBase:
        # Resolved at write time so pytest's capsys and redirected stderr both work.
        return self._stream if self._stream is not None else sys.stderr

    def use(self, kind: str, runtime: OnedRuntime) -> None:
        """Write the way ``runtime`` reads a driver of ``kind`` (before the first line)."""
        self._channel = channel_for(kind, runtime, lambda: self.stream, self.origin)

    def _write(self, tag: str, message: str) -> None:
        if tag not in TAGS:
            raise ValueError(f"unknown log tag {tag!r}")
        for text in message_lines(self.origin, message):
            self._channel.line(tag, self.vmid, text)

    def info(self, message: str) -> None:
        self._write("INFO", message)

    def warn(self, message: str) -> None:
        self._write("WARN", message)

    def error(self, message: str) -> None:
        self._write("ERROR", message)

    def debug(self, message: str) -> None:
        self._write("DEBUG", message)

    def relay(self, line: str) -> None:
        """A tagged line another vaf process wrote (a host command): log it as if it were ours."""
        match = TAGGED_RE.match(line.strip())
        if match is None or not isinstance(self._channel, (VmLogChannel, DeferredChannel)):
            self._channel.stderr(ascii_text(line))  # 7.x: exactly the host's line
            return
        tag, number, text = match.groups()
        self._channel.line(tag, int(number) if number else None, ascii_text(text.strip()))

    def close(self, ok: bool = True) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close(ok)

    def reason(self, message: str) -> None:
        """Write the single untagged line that becomes the failure reason."""
        self.close(ok=False)
        self._channel.stderr(ascii_text(one_line(message)))


_active: list[DriverLog] = []


def active() -> DriverLog | None:
    """The log of the action :func:`run_main` is running in this process, if any."""
    return _active[-1] if _active else None


def run_main(action: Callable[[DriverLog], int | None], log: DriverLog) -> int:
    """Run ``action(log)`` and turn any failure into oned's format; return the exit code.

    - success: the action's return value (``None`` means 0);
    - a :class:`VafError`: its details as ERROR lines, then its one-line reason, its exit code;
    - anything else: the traceback as DEBUG lines (never untagged: it would be glued into the
      reason) and a reason naming the internal error, exit code 1.
    """
    _active.append(log)
    try:
        code = action(log) or 0
    except VafError as err:
        for line in err.details():
            log.error(line)
        log.reason(err.reason)
        return err.exit_code
    except KeyboardInterrupt:
        log.reason(f"{log.origin}: interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence of a driver process
        import traceback  # only on this path: hosts import this module on every call

        for line in traceback.format_exc().splitlines():
            log.debug(line)
        log.reason(f"{log.origin}: internal error: {type(err).__name__}: {err}")
        return 1
    finally:
        _active.remove(log)
    log.close(ok=code == 0)
    return code
