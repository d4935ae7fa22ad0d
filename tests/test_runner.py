"""The one command runner: argv only, C locale, timeouts, typed errors, remote quoting."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from vaf.host.runner import (
    CommandError,
    CommandNotFound,
    CommandTimeout,
    HostUnreachable,
    Runner,
    check_argv,
    remote_command_line,
)

SUPPORT = Path(__file__).parent / "support"
FAKE_SSH = (sys.executable, str(SUPPORT / "login_shell_ssh.py"))
PRINT_ARGV = [sys.executable, "-c", "import json,sys; print(json.dumps(sys.argv[1:]))"]

HOSTILE_ARGS = [
    "plain", "with space", "'single'", '"double"', "semi;colon", "$(touch /tmp/vaf-x)",
    "`id`", "back\\slash", "new\nline", "tab\there", "*", "?", "~root", "a|b", "a&&b", ">out",
    "-n", "--", "", "ünïcödé", "$HOME", "!bang", "#hash",
]


def test_local_success_and_c_locale():
    result = Runner().run([sys.executable, "-c",
                           "import os,sys; print(os.environ['LC_ALL']); "
                           "print('warn', file=sys.stderr)"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "C\n", "warn\n")
    assert result.seconds >= 0


@pytest.mark.parametrize("argv, error, reason", [
    ([sys.executable, "-c", "import sys; sys.stderr.write('  Volume group vg not found\\n'); "
      "sys.exit(5)"], CommandError, "failed: Volume group vg not found"),
    ([sys.executable, "-c", "import sys; sys.exit(3)"], CommandError, "failed: exit code 3"),
    (["vaf-no-such-command"], CommandNotFound, "vaf-no-such-command is not installed"),
])
def test_failures_are_typed_with_one_line_reason(argv, error, reason):
    with pytest.raises(error) as caught:
        Runner().run(argv)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason


def test_check_false_returns_the_code():
    assert Runner().run(["sh", "-c", "exit 4"], check=False).returncode == 4
    assert not Runner().succeeds(["false"]) and Runner().succeeds(["true"])


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "grandchild.pid"
    script = f"sleep 30 & echo $! > {marker}; wait"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        Runner().run(["sh", "-c", script], timeout=0.5)
    assert time.monotonic() - started < 10
    assert "did not finish within 0.5 s" in caught.value.reason
    grandchild = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{grandchild}").exists() or \
        Path(f"/proc/{grandchild}/stat").read_text().split()[2] == "Z"


def test_input_and_progress_lines():
    lines = []
    result = Runner().run(["sh", "-c", "cat; printf '10%%\\r20%%\\r30%%\\n' >&2"],
                          input="payload", on_stderr_line=lines.append)
    assert result.stdout == "payload"
    assert lines == ["10%", "20%", "30%"]


def test_background_child_holding_the_pipe_does_not_block():
    started = time.monotonic()
    Runner().run(["sh", "-c", "(sleep 20 &) ; echo done"])
    assert time.monotonic() - started < 10


def test_observers_see_every_command():
    seen = []
    Runner().observed_by(lambda host, argv: seen.append((host, argv))).run(["true"])
    assert seen == [(None, ("true",))]


@pytest.mark.parametrize("bad", ["ls -l", b"ls", [], ["ls", None], ["ls", 3], ["a\0b"]])
def test_only_argv_lists(bad):
    with pytest.raises((TypeError, ValueError)):
        check_argv(bad)


def test_sudo_prefix_only_when_needed():
    remote = Runner(host="node1", ssh=("ssh",))
    assert remote.full_argv(["lvs"], sudo=True) == (
        "ssh", "--", "node1", "LC_ALL=C LANG=C sudo -n lvs")
    local = Runner(sudo_prefix=("sudo", "-n"))
    expected = ("lvs",) if os.geteuid() == 0 else ("sudo", "-n", "lvs")
    assert local.full_argv(["lvs"], sudo=True) == expected


def test_remote_line_is_quoted_for_the_login_shell(tmp_path):
    # every hostile argument reaches the remote program unchanged, and nothing runs
    runner = Runner(ssh=FAKE_SSH).on("node1")
    result = runner.run(PRINT_ARGV + HOSTILE_ARGS)
    assert json.loads(result.stdout) == HOSTILE_ARGS
    assert not Path("/tmp/vaf-x").exists()
    assert remote_command_line(["a b"]) == "LC_ALL=C LANG=C 'a b'"


def test_remote_failure_names_the_host():
    runner = Runner(ssh=FAKE_SSH).on("node7")
    with pytest.raises(CommandError) as caught:
        runner.run(["sh", "-c", "echo 'disk full' >&2; exit 1"])
    assert caught.value.reason == "sh on node7 failed: disk full"
    assert caught.value.host == "node7"


def test_unreachable_host_is_reported_as_ssh_failure():
    ssh = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", "1",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null")
    with pytest.raises(HostUnreachable) as caught:
        Runner(ssh=ssh).on("127.0.0.1").run(["true"])
    assert caught.value.reason.startswith("cannot run true on 127.0.0.1: ssh failed:")
    assert "refused" in caught.value.reason.lower()
