"""The runner over real ssh to the test hypervisor, as drivers use it (oneadmin + sudo -n)."""

import json

import pytest

from vaf.host.runner import CommandError, CommandNotFound, Runner
from vaf.one.log import DriverLog, run_main

pytestmark = pytest.mark.testbed

HOSTILE = ["a b", "'q'", '"d"', "x;touch /tmp/vaf-pwned", "$(id)", "`id`", "new\nline", "*",
           "", "-n", "ünï"]


@pytest.fixture(scope="module")
def remote(testbed):
    return Runner(ssh=("ssh", "-F", testbed.ssh_config)).on(testbed.host)


def test_arguments_reach_the_remote_program_unchanged(remote, testbed):
    out = remote.output(["python3", "-c", "import json,sys; print(json.dumps(sys.argv[1:]))",
                         *HOSTILE])
    assert json.loads(out) == HOSTILE
    assert testbed.ssh(["test", "-e", "/tmp/vaf-pwned"], check=False).returncode != 0


def test_remote_runs_as_oneadmin_with_sudo_and_c_locale(remote):
    assert remote.output(["id", "-un"]) == "oneadmin"
    assert remote.output(["id", "-un"], sudo=True) == "root"
    assert remote.output(["sh", "-c", "echo $LC_ALL"], sudo=True) == "C"


def test_failing_remote_lvm_command_gives_one_clear_reason(remote, capsys):
    def action(log):
        remote.run(["vgs", "vaf-no-such-vg"], sudo=True)

    code = run_main(action, DriverLog("lvmsnap/monitor", vmid=5))
    stderr = capsys.readouterr().err.splitlines()
    untagged = [line for line in stderr if not line.startswith(("ERROR:", "INFO:", "DEBUG:"))]
    assert code == 1
    assert untagged == ['vgs on testhv failed: Volume group "vaf-no-such-vg" not found']
    assert any(line.startswith("ERROR: 5 lvmsnap/monitor: command on testhv: vgs vaf-no-such-vg")
               for line in stderr)


def test_missing_remote_program_is_named(remote):
    with pytest.raises(CommandNotFound, match="vaf-nope is not installed on testhv"):
        remote.run(["vaf-nope"])


def test_remote_timeout(remote):
    with pytest.raises(CommandError, match="sleep on testhv did not finish within 1 s"):
        remote.run(["sleep", "30"], timeout=1)
