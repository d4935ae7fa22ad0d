"""Driver stderr in the exact shape oned's MAD reads (protocol §2)."""

import io
import re

import pytest

from vaf.errors import DriverError, ProtocolError
from vaf.host.runner import CommandError
from vaf.one.log import DriverLog, format_tagged, run_main

# oned's tagged-line rule (CommandManager.rb)
TAGGED = re.compile(r"^(ERROR|INFO|WARN|DEBUG):\s+(\d+)?\s*(.*)$")


def oned_view(stderr: str):
    """What oned makes of a driver's stderr: LOG records (tag, id, text) and the reason."""
    logs, reason = [], ""
    for line in stderr.splitlines():
        line = line.strip()
        match = TAGGED.match(line)
        if match:
            logs.append((match.group(1), int(match.group(2) or -1), match.group(3).strip()))
        else:
            reason += line
    return logs, reason


@pytest.mark.parametrize("tag, vmid, message, expected", [
    ("INFO", None, "cache filled", ["INFO: lvmsnap/clone: cache filled"]),
    ("INFO", 7, "1024 MB written", ["INFO: 7 lvmsnap/clone: 1024 MB written"]),
    ("ERROR", 7, "two\nlines", ["ERROR: 7 lvmsnap/clone: two", "ERROR: 7 lvmsnap/clone: lines"]),
    ("DEBUG", 0, "", ["DEBUG: 0 lvmsnap/clone:"]),
])
def test_format_tagged(tag, vmid, message, expected):
    assert format_tagged(tag, "lvmsnap/clone", message, vmid) == expected


def test_numbers_never_become_vm_ids():
    # "INFO: 1024 MB written" would be logged in VM 1024's log: our origin prefix prevents it
    out = io.StringIO()
    DriverLog("lvmsnap/clone", stream=out).info("1024 MB written")
    logs, reason = oned_view(out.getvalue())
    assert logs == [("INFO", -1, "lvmsnap/clone: 1024 MB written")] and reason == ""


def test_vm_id_routes_to_the_vm_log():
    out = io.StringIO()
    log = DriverLog("lvmsnap/clone", vmid=7, stream=out)
    log.warn("slow fill")
    assert oned_view(out.getvalue())[0] == [("WARN", 7, "lvmsnap/clone: slow fill")]


def _fail_with(error):
    def action(log):
        log.info("starting")
        raise error
    return action


@pytest.mark.parametrize("error, code, reason", [
    (ProtocolError("clone expects 4 arguments"), 2, "clone expects 4 arguments"),
    (DriverError("volume group vg-one-100 is full:\nneed 2048 MB"), 1,
     "volume group vg-one-100 is full: need 2048 MB"),
    (CommandError(["sudo", "-n", "lvcreate", "-L", "1G", "vg"], "node1", 5, "",
                  "  Volume group \"vg\" has insufficient free space (2 extents): 256 required.\n"),
     1, 'lvcreate on node1 failed: Volume group "vg" has insufficient free space '
        '(2 extents): 256 required.'),
    (ValueError("boom"), 1, "lvmsnap/clone: internal error: ValueError: boom"),
])
def test_run_main_failure_gives_one_reason_line(error, code, reason):
    out = io.StringIO()
    rc = run_main(_fail_with(error), DriverLog("lvmsnap/clone", vmid=7, stream=out))
    logs, got_reason = oned_view(out.getvalue())
    assert rc == code
    assert got_reason == reason
    assert logs[0] == ("INFO", 7, "lvmsnap/clone: starting")


def test_command_error_details_are_tagged():
    out = io.StringIO()
    err = CommandError(["lvs", "x"], "node1", 5, "", "line one\nline two\n")
    run_main(_fail_with(err), DriverLog("lvmsnap/mv", vmid=3, stream=out))
    logs, reason = oned_view(out.getvalue())
    assert ("ERROR", 3, "lvmsnap/mv: command on node1: lvs x (exit code 5)") in logs
    assert ("ERROR", 3, "lvmsnap/mv: stderr: line two") in logs
    assert reason == "lvs on node1 failed: line two"


def test_traceback_is_tagged_not_glued_into_the_reason():
    out = io.StringIO()
    run_main(_fail_with(KeyError("k")), DriverLog("x/y", stream=out))
    logs, reason = oned_view(out.getvalue())
    assert reason == "x/y: internal error: KeyError: 'k'"
    assert any("Traceback" in text for tag, _, text in logs if tag == "DEBUG")


def test_success_writes_no_reason():
    out = io.StringIO()
    assert run_main(lambda log: log.info("done"), DriverLog("x/y", stream=out)) == 0
    assert oned_view(out.getvalue())[1] == ""
