"""Logging for daemons: journald when systemd runs us, else syslog, else stderr.

Under systemd (``JOURNAL_STREAM`` set) a line on stderr prefixed with ``<N>`` (the syslog
priority) is stored by journald with that priority, so no extra library is needed. Outside
systemd the local syslog socket is used when it exists; a foreground run (``--foreground``,
tests) writes plain timestamped lines to stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

SYSLOG_SOCKET = "/dev/log"

#: logging level -> syslog priority, as journald reads the ``<N>`` prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>message``: journald keeps the priority, adds time and unit itself."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def choose_target(environ: dict[str, str] | None = None, foreground: bool = False) -> str:
    """``journal``, ``syslog`` or ``stderr``: where this process's log lines should go."""
    env = os.environ if environ is None else environ
    if foreground:
        return "stderr"
    if env.get("JOURNAL_STREAM"):
        return "journal"
    return "syslog" if os.path.exists(SYSLOG_SOCKET) else "stderr"


def setup_logging(name: str, level: int = logging.INFO, foreground: bool = False,
                  environ: dict[str, str] | None = None) -> logging.Logger:
    """Configure the root logger once for process ``name`` and return the ``name`` logger."""
    target = choose_target(environ, foreground)
    handler: logging.Handler
    if target == "journal":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    elif target == "syslog":
        handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{name}[{os.getpid()}]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(name)
