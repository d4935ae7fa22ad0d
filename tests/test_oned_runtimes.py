"""The stand-in's two runtimes: what 6.10.x and 7.x make of the same script result.

Facts modelled (OpenNebula's src/mad/ruby/{DriverExecHelper,CommandManager}.rb and
src/tm_mad/one_tm.rb of release-6.10.5 and release-7.0.0): 6.10 logs no stderr line on success
and makes the whole stderr (newlines as spaces) the failure reason after dumping it into the VM
log; 7.x turns tagged lines into LOG lines and only untagged ones into the reason. Both read
stderr in the MAD's locale (US-ASCII with LANG unset), where one non-ASCII byte makes Ruby's
regex matching raise. A pipe still held by a background child is dropped after 0.1 s: its value
is nil on 6.10 and '' on 7.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_oned_harness import FAILURE_RUN, SUCCESS_ARGV, Tree, echo_env, reference_conversation

from vaf.lab.oned import HarnessError, run_transfer_file, runtime, write_version_file

LINE = "CLONE probe fe:/a node1:/b 7 1"


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def transfer(tree: Tree, body: str) -> list[str]:
    tree.script("probe", "clone", "#!/bin/sh\n" + body)
    tree.prolog.write_text(LINE + "\n")
    return run_transfer_file(tree.prolog, remotes=tree.remotes, drivers="probe", action_id=7,
                             var_dir=tree.var)


def command(tree: Tree) -> str:
    return f"{tree.remotes}/tm/probe/clone fe:/a node1:/b 7 1"


# --- 6.10: no LOG line on success, the whole stderr as the reason -----------------------------

def test_610_success_run_logs_nothing(tree: Tree) -> None:
    with runtime("6.10"):
        lines = reference_conversation(tree, echo_env())
    missing = "TRANSFER FAILURE 8 Transfer file '/nonexistent/transfer.0.prolog' does not exist"
    assert lines == ["INIT SUCCESS - -", missing, "TRANSFER SUCCESS 7 -"]
    assert tree.argv_lines() == SUCCESS_ARGV


def test_610_failure_reason_is_the_whole_stderr(tree: Tree) -> None:
    with runtime("6.10"):
        lines = reference_conversation(tree, echo_env(ECHO_FAIL="mkswap"))
    dump = [line.replace("<remotes>", str(tree.remotes)) for line in FAILURE_RUN
            if line.startswith("LOG I 7 ") or line.startswith(("LOG D 7 7", "LOG E 7"))]
    assert lines[2:-1] == dump  # the failure dump only: no tagged pass on 6.10
    assert lines[-1] == ("TRANSFER FAILURE 7 INFO: mkswap ran with 4 args DEBUG: 7 debug line "
                         "for vm 7 ERROR: mkswap: something broke Human readable reason line 1 "
                         "reason line 2")


def test_version_file_names_the_release(tmp_path: Path) -> None:
    assert write_version_file(tmp_path, "6.10") == "6.10.5"
    assert (tmp_path / "VERSION").read_text() == "6.10.5\n"
    with runtime("7.0"):
        assert write_version_file(tmp_path) == "7.0.0"


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(HarnessError, match="unknown runtime"), runtime("5.12"):
        pass


# --- a background child holding stderr ----------------------------------------------------------

BACKGROUND = "sleep 3 &\necho 'INFO: started' >&2\n"


@pytest.mark.parametrize(("version", "exit_code", "expected"), [
    ("7.0", 0, ["TRANSFER SUCCESS 7 -"]),  # the LOG line is lost with the pipe
    ("7.0", 1, ["LOG I 7 Command execution failed (exit code: 1): {cmd}",
                "TRANSFER FAILURE 7 -"]),  # the reason is lost with the pipe
    ("6.10", 0, ["TRANSFER SUCCESS 7 -"]),
    ("6.10", 1, ["LOG I 7 Command execution failed (exit code: 1): {cmd}",
                 "LOG I 7 Internal error undefined method `strip' for nil:NilClass",
                 "TRANSFER FAILURE 7 Internal error undefined method `strip' for nil:NilClass"]),
])
def test_background_child_holding_stderr(tree: Tree, version, exit_code, expected) -> None:
    with runtime(version):
        lines = transfer(tree, BACKGROUND + f"exit {exit_code}\n")
    assert lines == [line.format(cmd=command(tree)) for line in expected]


# --- non-ASCII bytes on stderr ------------------------------------------------------------------

NON_ASCII = "echo 'INFO: copying' >&2\nprintf 'INFO: caf\\303\\251 image\\n' >&2\n"


def test_non_ascii_breaks_a_successful_action_on_7x(tree: Tree) -> None:
    with runtime("7.0"):
        lines = transfer(tree, NON_ASCII)
    # the lines before the bad one were sent; the rescue in action_transfer replies FAILURE
    assert lines == ["LOG I -1 copying", "TRANSFER FAILURE 7 invalid byte sequence in US-ASCII"]


def test_non_ascii_is_read_under_a_utf8_locale(tree: Tree) -> None:
    with runtime("7.0", lang="C.UTF-8"):
        lines = transfer(tree, NON_ASCII)
    assert lines == ["LOG I -1 copying", "LOG I -1 café image", "TRANSFER SUCCESS 7 -"]


@pytest.mark.parametrize("version", ["7.0", "6.10"])
def test_non_ascii_in_a_failure_replaces_the_reason(tree: Tree, version) -> None:
    with runtime(version):
        lines = transfer(tree, NON_ASCII + "echo 'disk full' >&2\nexit 1\n")
    internal = "Internal error invalid byte sequence in US-ASCII"
    assert lines[:3] == [f"LOG I 7 Command execution failed (exit code: 1): {command(tree)}",
                         "LOG I 7 copying", f"LOG I 7 {internal}"]
    assert lines[-1] == f"TRANSFER FAILURE 7 {internal}"


def test_non_ascii_on_610_success_goes_unnoticed(tree: Tree) -> None:
    with runtime("6.10"):
        assert transfer(tree, NON_ASCII) == ["TRANSFER SUCCESS 7 -"]
