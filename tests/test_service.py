"""Daemon logging targets and the sd_notify datagram, as systemd would receive it."""

from __future__ import annotations

import logging
import socket

import pytest

from vaf.service.logs import JournalFormatter, choose_target
from vaf.service.systemd import notify


@pytest.mark.parametrize(("environ", "foreground", "target"), [
    ({"JOURNAL_STREAM": "8:1234"}, False, "journal"),
    ({"JOURNAL_STREAM": "8:1234"}, True, "stderr"),
])
def test_log_target(environ, foreground, target):
    assert choose_target(environ, foreground) == target


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
])
def test_journal_lines_carry_the_syslog_priority(level, prefix):
    record = logging.LogRecord("vaf-elastic", level, __file__, 1, "grew by %d", (3,), None)
    line = JournalFormatter("%(name)s: %(message)s").format(record)
    assert line == f"{prefix}vaf-elastic: grew by 3"


def test_notify_sends_one_datagram(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1\nSTATUS=watching 0 jobs", {"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1\nSTATUS=watching 0 jobs"


def test_notify_outside_systemd_is_a_no_op():
    assert notify("READY=1", {}) is False
