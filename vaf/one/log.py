"""Logging the way oned reads a driver's stderr.

oned's MAD turns every stderr line that matches ``^(ERROR|INFO|WARN|DEBUG):\\s+(\\d+)?\\s*(.*)$``
into a ``LOG`` message, with the number after the tag as the VM id (no number: oned.log).
Every *other* line is glued, without a separator, into the failure reason. So a driver must
write tagged lines for everything and, on failure, exactly one untagged line: the reason.

Messages always start with the driver's origin (``lvmsnap/clone: ...``) after the optional
VM id, so a message that begins with a number can never be mistaken for a VM id.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

from vaf.errors import VafError, one_line

TAGS = ("ERROR", "WARN", "INFO", "DEBUG")


def format_tagged(tag: str, origin: str, message: str, vmid: int | None = None) -> list[str]:
    """Build the tagged stderr lines for one message (one per line of ``message``)."""
    if tag not in TAGS:
        raise ValueError(f"unknown log tag {tag!r}")
    prefix = f"{tag}: {vmid} " if vmid is not None else f"{tag}: "
    lines = [line.strip() for line in str(message).splitlines() if line.strip()] or [""]
    return [f"{prefix}{origin}: {line}".rstrip() for line in lines]


class DriverLog:
    """Tagged logging for one driver action; ``vmid`` routes lines into that VM's log."""

    def __init__(self, origin: str, vmid: int | None = None, stream: io.TextIOBase | None = None):
        self.origin = origin
        self.vmid = vmid
        self._stream = stream

    @property
    def stream(self) -> io.TextIOBase:
        # Resolved at write time so pytest's capsys and redirected stderr both work.
        return self._stream if self._stream is not None else sys.stderr

    def _write(self, tag: str, message: str) -> None:
        for line in format_tagged(tag, self.origin, message, self.vmid):
            self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, message: str) -> None:
        self._write("INFO", message)

    def warn(self, message: str) -> None:
        self._write("WARN", message)

    def error(self, message: str) -> None:
        self._write("ERROR", message)

    def debug(self, message: str) -> None:
        self._write("DEBUG", message)

    def reason(self, message: str) -> None:
        """Write the single untagged line that becomes the failure reason."""
        self.stream.write(one_line(message) + "\n")
        self.stream.flush()


def run_main(action: Callable[[DriverLog], int | None], log: DriverLog) -> int:
    """Run ``action(log)`` and turn any failure into oned's format; return the exit code.

    - success: the action's return value (``None`` means 0);
    - a :class:`VafError`: its details as ERROR lines, then its one-line reason, its exit code;
    - anything else: the traceback as DEBUG lines (never untagged: it would be glued into the
      reason) and a reason naming the internal error, exit code 1.
    """
    try:
        return action(log) or 0
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
