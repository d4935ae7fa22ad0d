"""The oned driver-runtime harness against the reference of opennebula-protocol.md section 12.

The `echo` driver of section 12.3 (one Python script linked under every action name) checks
the reference conversation verbatim; small `probe` sh scripts check one rule each.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest

from vaf.lab.oned import (
    HarnessError,
    LogLine,
    MonitorFailure,
    TmMad,
    decode_monitor_reply,
    parse_reply,
    run_ds_monitor,
    run_hook,
    run_tm_command,
    run_transfer_file,
    run_vnm_action,
    shell_escape,
    vm_stdin,
)

ACTIONS = (
    "activate clone context cpds delete failmigrate ln mkimage mkswap monitor mv mvds "
    "postbackup postbackup_live postmigrate prebackup prebackup_live premigrate resize "
    "restore snap_create snap_create_live snap_delete snap_revert"
).split()

PROLOG = (
    "CLONE echo fe.example:/var/lib/one/datastores/1/8f3a1c0d2b4e "
    "node1:/var/lib/one/datastores/100/7/disk.0 7 1\n"
    "LN echo fe.example:/var/lib/one/datastores/1/aa11bb22 "
    "node1:/var/lib/one/datastores/100/7/disk.1 7 1\n"
    "MKSWAP echo 1024 node1:/var/lib/one/datastores/100/7/disk.2 7 100\n"
    "MKIMAGE echo 2048 xfs node1:/var/lib/one/datastores/100/7/disk.3 7 100\n"
    "CLONE.ssh echo fe.example:/var/lib/one/datastores/1/weird\\ name "
    "node1:/var/lib/one/datastores/100/7/disk.4 7 1\n"
)

# Section 12.3, verbatim.
SUCCESS_RUN = [
    "INIT SUCCESS - -",
    "TRANSFER FAILURE 8 Transfer file '/nonexistent/transfer.0.prolog' does not exist",
    "LOG I -1 clone ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG I -1 ln ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG I -1 mkswap ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG I -1 mkimage ran with 5 args",
    "LOG D 7 debug line for vm 7",
    "LOG I -1 clone ran with 5 args",
    "LOG D 7 debug line for vm 7",
    "TRANSFER SUCCESS 7 -",
]
SUCCESS_ARGV = [
    "clone [fe.example:/var/lib/one/datastores/1/8f3a1c0d2b4e] "
    "[node1:/var/lib/one/datastores/100/7/disk.0] [7] [1]",
    "ln [fe.example:/var/lib/one/datastores/1/aa11bb22] "
    "[node1:/var/lib/one/datastores/100/7/disk.1] [7] [1]",
    "mkswap [1024] [node1:/var/lib/one/datastores/100/7/disk.2] [7] [100]",
    "mkimage [2048] [xfs] [node1:/var/lib/one/datastores/100/7/disk.3] [7] [100]",
    "clone [fe.example:/var/lib/one/datastores/1/weird\\] [name] "
    "[node1:/var/lib/one/datastores/100/7/disk.4] [7] [1]",
]
FAILURE_RUN = [
    "INIT SUCCESS - -",
    "TRANSFER FAILURE 8 Transfer file '/nonexistent/transfer.0.prolog' does not exist",
    "LOG I -1 clone ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG I -1 ln ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG I 7 Command execution failed (exit code: 1): <remotes>/tm/echo/mkswap 1024 "
    "node1:/var/lib/one/datastores/100/7/disk.2 7 100",
    "LOG I 7 mkswap ran with 4 args",
    "LOG D 7 7 debug line for vm 7",
    "LOG E 7 mkswap: something broke",
    "LOG I 7 Human readable reason line 1",
    "LOG I 7 reason line 2",
    "LOG I -1 mkswap ran with 4 args",
    "LOG D 7 debug line for vm 7",
    "LOG E -1 mkswap: something broke",
    "TRANSFER FAILURE 7 Human readable reason line 1reason line 2",
]
MIGRATE = "MIGRATE echo node1 node2 /var/lib/one/datastores/100/7 7 100"
CONTEXT = (
    "CONTEXT echo /var/lib/one/vms/7/context.sh /var/lib/one/datastores/1/abc:'init.sh' "
    "node2:/var/lib/one/datastores/100/7/disk.5 7 100"
)
PAYLOAD = (
    "<DS_DRIVER_ACTION_DATA><DATASTORE><ID>100</ID><TYPE>1</TYPE><DS_MAD>-</DS_MAD>"
    "<TM_MAD>echo</TM_MAD><TEMPLATE></TEMPLATE></DATASTORE><DATASTORE_LOCATION>"
    "/var/lib/one/datastores</DATASTORE_LOCATION><MONITOR_VM_DISKS>0</MONITOR_VM_DISKS>"
    "</DS_DRIVER_ACTION_DATA>"
)

# The echo driver: logs every call as one JSON line, then behaves as section 12.3 says.
ECHO = """\
#!{python}
import json, os, sys
action = os.path.basename(sys.argv[0])
args = sys.argv[1:]
data = sys.stdin.buffer.read()
record = dict(
    action=action, args=args, stdin=data.decode(), nice=os.getpriority(os.PRIO_PROCESS, 0),
    pid=os.getpid(), pgid=os.getpgrp(), cwd=os.getcwd(),
    env={{k: os.environ.get(k) for k in ("PRIORITY", "ONE_MAD_DEBUG", "PWD")}},
)
with open({log!r}, "a") as handle:
    handle.write(json.dumps(record) + "\\n")
if action == "monitor":
    sys.stdout.write("USED_MB=100\\nFREE_MB=900\\nTOTAL_MB=1000\\n")
    sys.exit(0)
sys.stderr.write(f"INFO: {{action}} ran with {{len(args)}} args\\n")
sys.stderr.write("DEBUG: 7 debug line for vm 7\\n")
print(f"{{action}}: stdout is ignored")
if action == os.environ.get("ECHO_FAIL"):
    sys.stderr.write(f"ERROR: {{action}}: something broke\\n")
    sys.stderr.write("Human readable reason line 1\\nreason line 2\\n")
    sys.exit(1)
"""


class Tree:
    """A remotes tree with the echo driver, a var dir and the echo call log."""

    def __init__(self, root: Path) -> None:
        self.remotes = root / "remotes"
        self.var = root / "var"
        self.calls = root / "calls.jsonl"
        echo_dir = self.remotes / "tm" / "echo"
        echo_dir.mkdir(parents=True)
        (self.var / "vms" / "7").mkdir(parents=True)
        impl = root / "echo.py"
        impl.write_text(ECHO.format(python=sys.executable, log=str(self.calls)))
        impl.chmod(0o755)
        for action in ACTIONS:  # one executable linked under every action name
            (echo_dir / action).symlink_to(impl)
        self.prolog = self.var / "vms" / "7" / "transfer.0.prolog"
        self.prolog.write_text(PROLOG)

    def records(self) -> list[dict]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    def argv_lines(self) -> list[str]:
        return [argv_line(record) for record in self.records()]

    def script(self, driver: str, action: str, body: str, mode: int = 0o755) -> Path:
        path = self.remotes / "tm" / driver / action
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        path.chmod(mode)
        return path


def argv_line(record: dict) -> str:
    return " ".join([record["action"], *(f"[{arg}]" for arg in record["args"])])


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def echo_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def reference_conversation(tree: Tree, env: dict[str, str]) -> list[str]:
    with TmMad(remotes=tree.remotes, drivers="echo,lvmsnap", var_dir=tree.var, env=env) as mad:
        return mad.converse(
            [
                "INIT",
                f"TRANSFER  7 {tree.prolog}",
                "TRANSFER  8 /nonexistent/transfer.0.prolog",
                "FINALIZE",
            ]
        )


# ---------------------------------------------------------------------------------------------
# Section 12.3 and 12.4, verbatim
# ---------------------------------------------------------------------------------------------


def test_reference_success_run(tree: Tree) -> None:
    assert reference_conversation(tree, echo_env()) == SUCCESS_RUN
    assert tree.argv_lines() == SUCCESS_ARGV
    assert [record["stdin"] for record in tree.records()] == [""] * 5


def test_reference_failure_run(tree: Tree) -> None:
    expected = [line.replace("<remotes>", str(tree.remotes)) for line in FAILURE_RUN]
    assert reference_conversation(tree, echo_env(ECHO_FAIL="mkswap")) == expected
    # The failing line aborts the file: mkimage and the last clone never ran.
    assert tree.argv_lines() == SUCCESS_ARGV[:3]


def test_reference_vmm_calls(tree: Tree) -> None:
    stdin = vm_stdin("<VM><ID>7</ID></VM>")
    common = dict(remotes=tree.remotes, action_id=7, var_dir=tree.var, env=echo_env())
    for prefix in ("PRE", "POST", "FAIL"):
        reply = run_tm_command(prefix + MIGRATE, stdin=stdin, **common)
        action = prefix.lower() + "migrate"
        assert reply == [
            f"LOG I -1 {action} ran with 5 args",
            "LOG D 7 debug line for vm 7",
            "TRANSFER SUCCESS 7 -",
        ]
    assert run_tm_command(CONTEXT, **common)[-1] == "TRANSFER SUCCESS 7 -"
    calls = [f"{argv_line(r)} stdin_bytes={len(r['stdin'])}" for r in tree.records()]
    migrate_argv = "[node1] [node2] [/var/lib/one/datastores/100/7] [7] [100] stdin_bytes=28"
    assert calls == [
        f"premigrate {migrate_argv}",
        f"postmigrate {migrate_argv}",
        f"failmigrate {migrate_argv}",
        "context [/var/lib/one/vms/7/context.sh] [/var/lib/one/datastores/1/abc:'init.sh'] "
        "[node2:/var/lib/one/datastores/100/7/disk.5] [7] [100] stdin_bytes=0",
    ]
    assert tree.records()[0]["stdin"] == base64.b64encode(b"<VM><ID>7</ID></VM>").decode()


def test_reference_monitor(tree: Tree) -> None:
    reply = run_ds_monitor(
        100, PAYLOAD, remotes=tree.remotes, tm_mad="echo", allowed_system="echo", var_dir=tree.var
    )
    assert reply == ["MONITOR SUCCESS 100 VVNFRF9NQj0xMDAKRlJFRV9NQj05MDAKVE9UQUxfTUI9MTAwMAo="]
    assert decode_monitor_reply(reply[0]) == {
        "USED_MB": "100",
        "FREE_MB": "900",
        "TOTAL_MB": "1000",
    }
    (record,) = tree.records()
    assert record["args"] == ["100"]
    assert record["stdin"] == base64.b64encode(PAYLOAD.encode()).decode()


def test_monitor_needs_the_system_ds_list(tree: Tree) -> None:
    reply = run_ds_monitor(100, PAYLOAD, remotes=tree.remotes, var_dir=tree.var)
    assert reply == ["MONITOR FAILURE 100 System datastore driver 'echo' not available"]
    assert tree.records() == []


def test_monitor_failure_reason_is_base64(tree: Tree) -> None:
    tree.script(
        "probe",
        "monitor",
        "#!/bin/sh\necho 'ERROR: vg-one-100 missing' >&2\necho 'cannot read VG' >&2\nexit 1\n",
    )
    payload = PAYLOAD.replace("<TM_MAD>echo</TM_MAD>", "<TM_MAD>probe</TM_MAD>")
    reply = run_ds_monitor(
        100, payload, remotes=tree.remotes, allowed_system=["probe"], var_dir=tree.var
    )
    assert reply == [
        f"LOG I 100 Command execution failed (exit code: 1): {tree.remotes}/tm/probe/monitor 100",
        "LOG E 100 vg-one-100 missing",
        "LOG I 100 cannot read VG",
        "LOG E -1 vg-one-100 missing",
        "MONITOR FAILURE 100 " + base64.b64encode(b"cannot read VG").decode(),
    ]
    with pytest.raises(MonitorFailure) as failure:
        decode_monitor_reply(reply[-1])
    assert failure.value.reason == "cannot read VG"


# ---------------------------------------------------------------------------------------------
# One rule per case (sections 2, 3 and 12.1)
# ---------------------------------------------------------------------------------------------

LINE = "CLONE probe fe:/a node1:/b 7 1"
CMD = "{remotes}/tm/probe/clone fe:/a node1:/b 7 1"
DIES = "echo 'INFO: starting' >&2\necho 'about to die' >&2\nkill -KILL $$\n"
DASH = os.path.realpath("/bin/sh").endswith("dash")

CASES = [
    pytest.param(
        "", "CLONE ghost fe:/a node1:/b 7 1", "echo,probe,ghost",
        ["TRANSFER FAILURE 7 Driver path '{remotes}/tm/ghost/clone' does not exists"],
        id="missing-driver-dir",
    ),
    pytest.param(
        "", "CLONE.ssh ghost fe:/a node1:/b 7 1", "echo,probe,ghost",
        ["TRANSFER FAILURE 7 Driver path '{remotes}/tm/ghost/clone.ssh' nor "
         "'{remotes}/tm/ghost/clone' exists"],
        id="nor-exists",
    ),
    pytest.param(
        "", "SNAP_CREATE probe fe:/a 0 7 1", "probe",
        ["TRANSFER FAILURE 7 Driver path '{remotes}/tm/probe/snap_create' does not exists"],
        id="missing-action",
    ),
    pytest.param(
        "echo 'INFO: should not run' >&2\n", LINE, "echo",
        ["TRANSFER FAILURE 7 Transfer Driver 'probe' not available"],
        id="driver-not-allowed",
    ),
    pytest.param(
        "echo 'INFO: ran' >&2\n", "CLONE ghost a b 7 1\n" + LINE, "probe,ghost",
        ["TRANSFER FAILURE 7 Driver path '{remotes}/tm/ghost/clone' does not exists"],
        id="first-failing-line-aborts",
    ),
    pytest.param(
        DIES, LINE, "probe",
        ["LOG I 7 Command execution failed (exit code: 255): " + CMD,
         "LOG I 7 starting", "LOG I 7 about to die", "LOG I -1 starting",
         "TRANSFER FAILURE 7 about to die"],
        id="sigkill-is-255",
    ),
    pytest.param(
        # A quote makes Ruby hand the command to sh -c; dash forks, reports 137 and "Killed".
        DIES, "CLONE probe fe:/a'b node1:/b 7 1", "probe",
        ["LOG I 7 Command execution failed (exit code: 137): "
         "{remotes}/tm/probe/clone fe:/a\\'b node1:/b 7 1",
         "LOG I 7 starting", "LOG I 7 about to die", "LOG I 7 Killed", "LOG I -1 starting",
         "TRANSFER FAILURE 7 about to dieKilled"],
        id="sigkill-under-sh",
        marks=pytest.mark.skipif(not DASH, reason="/bin/sh is not dash"),
    ),
    pytest.param(
        "echo 'INFO: 1024 MB written' >&2\n", LINE, "probe",
        ["LOG I 1024 MB written", "TRANSFER SUCCESS 7 -"],
        id="number-after-tag-is-the-id",
    ),
    pytest.param(
        "echo 'ERROR:no space' >&2\nexit 1\n", LINE, "probe",
        ["LOG I 7 Command execution failed (exit code: 1): " + CMD,
         "LOG E 7 no space", "TRANSFER FAILURE 7 ERROR:no space"],
        id="no-space-after-colon-is-untagged",
    ),
    pytest.param(
        "echo 'WARN: thin pool 95% full' >&2\necho 'lvcreate failed' >&2\nexit 5\n", LINE,
        "probe",
        ["LOG I 7 Command execution failed (exit code: 5): " + CMD,
         "LOG I 7 WARN: thin pool 95% full", "LOG I 7 lvcreate failed",
         "LOG W -1 thin pool 95% full", "TRANSFER FAILURE 7 lvcreate failed"],
        id="warn-in-dump-is-info",
    ),
    pytest.param(
        "printf 'disk full\\n\\nlvcreate failed\\n' >&2\nexit 2\n", LINE, "probe",
        ["LOG I 7 Command execution failed (exit code: 2): " + CMD,
         "LOG I 7 disk full", "LOG I 7 ", "LOG I 7 lvcreate failed",
         "TRANSFER FAILURE 7 disk fulllvcreate failed"],
        id="untagged-lines-glued",
    ),
    pytest.param(
        "echo 'INFO: cloned' >&2\necho 'stdout is ignored'\n",
        "# prolog of VM 7\n\n   # indented comment\n \t \n" + LINE + "\n   \n", "probe",
        ["LOG I -1 cloned", "TRANSFER SUCCESS 7 -"],
        id="comments-and-blank-lines-skipped",
    ),
    pytest.param(
        "echo 'INFO: no #! line, run by sh' >&2\n", LINE, "probe",
        ["LOG I -1 no #! line, run by sh", "TRANSFER SUCCESS 7 -"],
        id="no-shebang-runs-under-sh",
    ),
    pytest.param(
        None, LINE, "probe",
        ["LOG I 7 Internal error Permission denied - {remotes}/tm/probe/clone",
         "TRANSFER FAILURE 7 Internal error Permission denied - {remotes}/tm/probe/clone"],
        id="not-executable",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("script", "transfer", "drivers", "expected"), CASES)
def test_transfer_rules(
    tree: Tree, script: str | None, transfer: str, drivers: str, expected: list[str]
) -> None:
    if script is None:  # a script without execute permission
        tree.script("probe", "clone", "#!/bin/sh\necho 'INFO: ran' >&2\n", mode=0o644)
    elif script:
        shebang = "" if "no #! line" in script else "#!/bin/sh\n"
        tree.script("probe", "clone", shebang + script)
    transfer_file = tree.var / "vms" / "7" / "transfer.1.prolog"
    transfer_file.write_text(transfer)
    reply = run_transfer_file(
        transfer_file, remotes=tree.remotes, drivers=drivers, action_id=7, var_dir=tree.var
    )
    assert reply == [line.format(remotes=tree.remotes) for line in expected]


def test_child_runs_like_under_the_mad(tree: Tree) -> None:
    """Nice 19, own process group, 0 stdin bytes, cwd = var dir, defaultrc in the env."""
    tree.prolog.write_text("LN echo fe:/a node1:/b 7 1\n")
    reply = run_transfer_file(
        tree.prolog, remotes=tree.remotes, drivers=None, action_id=7, var_dir=tree.var
    )
    assert reply[-1] == "TRANSFER SUCCESS 7 -"
    (record,) = tree.records()
    assert record["nice"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 19)
    assert record["pgid"] == record["pid"] != os.getpgrp()
    assert record["stdin"] == ""
    assert record["cwd"] == os.path.realpath(tree.var)
    assert record["env"] == {"PRIORITY": "19", "ONE_MAD_DEBUG": "", "PWD": str(tree.var)}


def test_relative_transfer_path_is_resolved_in_the_var_dir(tree: Tree) -> None:
    reply = run_transfer_file(
        "vms/7/transfer.0.prolog",
        remotes=tree.remotes,
        drivers="echo",
        action_id=7,
        var_dir=tree.var,
    )
    assert reply == SUCCESS_RUN[2:]


def test_safety_timeout_is_a_harness_error(tree: Tree) -> None:
    tree.script("probe", "clone", "#!/bin/sh\nexec sleep 30\n")
    tree.prolog.write_text(LINE + "\n")
    started = time.monotonic()
    with pytest.raises(HarnessError, match="safety timeout"):
        run_transfer_file(
            tree.prolog,
            remotes=tree.remotes,
            drivers="probe",
            action_id=7,
            var_dir=tree.var,
            safety_timeout=0.5,
        )
    assert time.monotonic() - started < 5



# ---------------------------------------------------------------------------------------------
# The MAD conversation: threads, DRIVER_CANCEL, EOF
# ---------------------------------------------------------------------------------------------

DONE = 'echo "INFO: done $3" >&2\n'
SLOW_OR_FAST = '#!/bin/sh\n[ "$3" = slow ] && sleep 0.5\n' + DONE


def transfer_files(tree: Tree, **lines: str) -> dict[str, Path]:
    paths = {}
    for name, line in lines.items():
        paths[name] = tree.var / f"transfer.{name}"
        paths[name].write_text(line + "\n")
    return paths


def test_mad_runs_different_ids_concurrently(tree: Tree) -> None:
    tree.script("probe", "clone", SLOW_OR_FAST)
    files = transfer_files(tree, slow="CLONE probe a b slow", fast="CLONE probe a b fast")
    with TmMad(remotes=tree.remotes, drivers="probe", var_dir=tree.var) as mad:
        out = mad.converse(
            ["INIT", f"TRANSFER  30 {files['slow']}", f"TRANSFER  31 {files['fast']}", "FINALIZE"]
        )
    assert out == [
        "INIT SUCCESS - -",
        "LOG I -1 done fast",
        "TRANSFER SUCCESS 31 -",
        "LOG I -1 done slow",
        "TRANSFER SUCCESS 30 -",
    ]


def test_mad_ignores_malformed_and_cancels_queued_actions(tree: Tree) -> None:
    tree.script("probe", "clone", SLOW_OR_FAST)
    files = transfer_files(tree, slow="CLONE probe a b slow", fast="CLONE probe a b fast")
    with TmMad(remotes=tree.remotes, drivers="probe", var_dir=tree.var, threads=1) as mad:
        out = mad.converse(
            [
                "INIT",
                f"TRANSFER 20 {files['slow']}",
                f"TRANSFER 21 {files['fast']}",  # queued behind 20 (one thread)
                "DRIVER_CANCEL 21",
                f"TRANSFER 22 {files['fast']} extra-word",  # wrong arity: ignored
                "BOGUS 23",  # unknown action: ignored
                f" TRANSFER 24 {files['fast']}",  # leading blank: malformed
                "FINALIZE",
            ]
        )
        assert mad.stderr == [f"Malformed message: ' TRANSFER 24 {files['fast']}'"]
    assert out == [
        "INIT SUCCESS - -",
        "LOG I 21 Driver command for 21 cancelled",
        "LOG I -1 done slow",
        "TRANSFER SUCCESS 20 -",
    ]


def test_mad_cancel_of_a_running_action(tree: Tree) -> None:
    started, ended = tree.var / "started", tree.var / "ended"  # the script runs in the var dir
    tree.script("probe", "clone", f"#!/bin/sh\ntouch started\nsleep 0.5\ntouch ended\n{DONE}")
    files = transfer_files(tree, slow="CLONE probe a b slow")
    with TmMad(remotes=tree.remotes, drivers="probe", var_dir=tree.var) as mad:
        mad.converse(["INIT", f"TRANSFER  50 {files['slow']}"])
        wait_for_file(started)
        mad.send("DRIVER_CANCEL 50")
        wait_for_file(ended)
        time.sleep(0.3)  # the killed thread has seen the exit; its output and reply are gone
        assert mad.lines() == ["INIT SUCCESS - -", "LOG I 50 Driver command for 50 cancelled"]
        with pytest.raises(HarnessError, match="never exits"):
            mad.finalize(timeout=5)


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_mad_eof_stops_all_output(tree: Tree) -> None:
    tree.script("probe", "clone", SLOW_OR_FAST)
    files = transfer_files(tree, slow="CLONE probe a b slow")
    with TmMad(remotes=tree.remotes, drivers="probe", var_dir=tree.var) as mad:
        mad.converse(["INIT", f"TRANSFER  40 {files['slow']}"])
        assert mad.eof() == ["INIT SUCCESS - -"]
        time.sleep(0.8)
        assert mad.lines() == ["INIT SUCCESS - -"]
        assert mad.exited


# ---------------------------------------------------------------------------------------------
# Network drivers and hooks
# ---------------------------------------------------------------------------------------------

RECORDER = """\
#!{python}
import json, os, sys
data = sys.stdin.buffer.read()
with open({log!r}, "w") as handle:
    json.dump(dict(args=sys.argv[1:], stdin=data.decode()), handle)
sys.stderr.write("INFO: isolated one-7-0\\n")
if os.environ.get("FAIL"):
    sys.stderr.write("ERROR: ebtables not found\\ncannot isolate one-7-0\\n")
    sys.exit(2)
"""
VM_XML = "<VM><ID>7</ID><TEMPLATE><NIC><VN_MAD>vaf</VN_MAD></NIC></TEMPLATE></VM>"


def recorder(path: Path, log: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return path


def test_vnm_post_through_the_ssh_stream(tree: Tree, tmp_path: Path) -> None:
    log = tmp_path / "vnm.json"
    post = recorder(tree.remotes / "vnm" / "vaf" / "post", log)
    run = run_vnm_action(
        "post", remotes=tree.remotes, vn_mad="vaf", vm_xml=VM_XML, args=("one-7", "node1")
    )
    assert (run.exit_code, run.ok, run.reason) == (0, True, "-")
    assert run.logs == [
        "LOG I 7 isolated one-7-0",
        "LOG I 7 ExitCode: 0",
        "LOG I -1 isolated one-7-0",
    ]
    assert json.loads(log.read_text()) == {
        "args": ["one-7", "node1"],
        "stdin": base64.b64encode(VM_XML.encode()).decode() + "\n",
    }
    failed = run_vnm_action(
        "post",
        remotes=tree.remotes,
        vn_mad="vaf",
        vm_xml=VM_XML,
        args=("one-7", "node1"),
        env=echo_env(FAIL="1"),
    )
    assert (failed.exit_code, failed.result) == (2, "FAILURE")
    assert failed.logs == [
        f"LOG I 7 Command execution fail (exit code: 2): cat << 'EOT' | {post}  'one-7' 'node1'",
        "LOG I 7 isolated one-7-0",
        "LOG E 7 ebtables not found",
        "LOG I 7 cannot isolate one-7-0",
        "LOG I 7 ExitCode: 2",
        "LOG I -1 isolated one-7-0",
        "LOG E -1 ebtables not found",
    ]
    assert failed.reason == "cannot isolate one-7-0ExitCode: 2"


def test_vnm_stderr_without_final_newline_would_hang(tree: Tree) -> None:
    pre = tree.remotes / "vnm" / "vaf" / "pre"
    pre.parent.mkdir(parents=True)
    pre.write_text("#!/bin/sh\nprintf 'no newline' >&2\n")
    pre.chmod(0o755)
    with pytest.raises(HarnessError, match="waits forever"):
        run_vnm_action("pre", remotes=tree.remotes, vn_mad="vaf", vm_xml=VM_XML)


def test_hook_gets_the_template_argument(tree: Tree, tmp_path: Path) -> None:
    log = tmp_path / "hook.json"
    recorder(tree.remotes / "hooks" / "vaf-macs", log)
    run = run_hook("vaf-macs", remotes=tree.remotes, template_xml=VM_XML, extra_args=("on",))
    assert (run.exit_code, run.ok, run.logs) == (0, True, ["LOG I -1 isolated one-7-0"])
    assert json.loads(log.read_text()) == {
        "args": [base64.b64encode(VM_XML.encode()).decode(), "on"],
        "stdin": "",
    }
    killed = tree.remotes / "hooks" / "dies"
    killed.write_text("#!/bin/sh\necho 'dying' >&2\nkill -KILL $$\n")
    killed.chmod(0o755)
    run = run_hook("dies", remotes=tree.remotes, template_xml=VM_XML)
    assert (run.exit_code, run.reason, run.stderr) == (255, "dying", "dying\n")


def test_hook_timeout_terminates_the_group(tree: Tree) -> None:
    hook = tree.remotes / "hooks" / "slow"
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nexec sleep 30\n")
    hook.chmod(0o755)
    run = run_hook("slow", remotes=tree.remotes, template_xml=VM_XML, timeout=0.3)
    command = f"{hook} {base64.b64encode(VM_XML.encode()).decode()}"
    assert (run.exit_code, run.reason) == (255, f"Timeout executing {command}")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "escaped"),
    [
        ("fe:/var/lib/one/ds/1/a+b-c_d.e,f@g", "fe:/var/lib/one/ds/1/a+b-c_d.e,f@g"),
        ("weird\\", "weird\\\\"),
        ("a b", "a\\ b"),
        ("abc:'init.sh'", "abc:\\'init.sh\\'"),
        ("", "''"),
        ("x\ny", "x'\n'y"),
        ("é", "\\é"),
    ],
)  # fmt: skip
def test_shell_escape_is_ruby_shellwords(word: str, escaped: str) -> None:
    assert shell_escape(word) == escaped


def test_parse_reply() -> None:
    expected = [line.replace("<remotes>", "/r") for line in FAILURE_RUN[2:]]
    result, reason, logs = parse_reply(expected)
    assert (result, reason) == ("FAILURE", "Human readable reason line 1reason line 2")
    assert logs[6] == LogLine("D", "7", "7 debug line for vm 7")
    assert logs[-1] == ("E", "-1", "mkswap: something broke")
    assert parse_reply(["LOG I 7 ", "TRANSFER SUCCESS 7 -"]) == (
        "SUCCESS",
        "-",
        [LogLine("I", "7", "")],
    )
    with pytest.raises(ValueError):
        parse_reply(["TRANSFER SUCCESS 7 -", "LOG I 7 late"])


def test_unsplittable_whitespace_is_refused(tree: Tree) -> None:
    tree.prolog.write_text("CLONE echo fe:/a\u00a0b node1:/b 7 1\n")
    with pytest.raises(HarnessError, match="whitespace"):
        run_transfer_file(
            tree.prolog, remotes=tree.remotes, drivers="echo", action_id=7, var_dir=tree.var
        )
