"""Isolation's firewall verbs of vaf-privileged: the request checked field by field, the fixed
commands it runs (programs from its own conf only) and the report the backends get back.

The builders are pure and tested with tables. The program itself runs here from a copy laid
out as ``install.sh host`` lays it out, its conf naming a recorder (prints its arguments, then
its stdin) and ``false`` as the firewall programs: what it ran shows, without root. The
real ebtables and nft run behind these verbs in tests/test_isolation.py (root, namespaces)
and tests/test_isolation_testbed.py (oneadmin under the shipped sudoers file).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from vaf.config import DriverConfig
from vaf.errors import ConfigError, DriverError, ProtocolError
from vaf.host import cpu_verbs, privileged
from vaf.host import netfilter_verbs as nv
from vaf.host.netfilter_verbs import TEXT_LIMIT, Firewall
from vaf.host.runner import CommandError, CommandNotFound, Runner
from vaf.lab.host_install import install_here

COMMANDS = {"EBTABLES": "/usr/sbin/ebtables", "EBTABLES_RESTORE": "/usr/sbin/ebtables-restore",
            "NFT": "/usr/sbin/nft"}
EBT = ["/usr/sbin/ebtables", "--concurrent", "-t", "filter"]
REPO = Path(__file__).resolve().parents[1]
LONGEST_TAP = "one-99999-9999"  # 15 characters is the kernel's limit (IFNAMSIZ - 1)


# -- the fixed commands ----------------------------------------------------------------------------

@pytest.mark.parametrize("verb, request_, argv, stdin", [
    ("isolation-ebtables-list", {}, [*EBT, "-L"], None),
    ("isolation-ebtables-list", {"chain": "VAF"}, [*EBT, "-L", "VAF"], None),
    ("isolation-ebtables-list", {"chain": "VAF-O-one-7-0", "counters": False},
     [*EBT, "-L", "VAF-O-one-7-0"], None),
    ("isolation-ebtables-list", {"counters": True}, [*EBT, "-L", "--Lc"], None),
    ("isolation-ebtables-list", {"chain": "FORWARD", "counters": True},
     [*EBT, "-L", "FORWARD", "--Lc"], None),
    ("isolation-ebtables-delete", {"chain": "VAF-I-one-7-0"}, [*EBT, "-X", "VAF-I-one-7-0"],
     None),
    ("isolation-ebtables-restore", {"rules": "*filter\n-F VAF\n"},
     ["/usr/sbin/ebtables-restore", "--noflush"], "*filter\n-F VAF\n"),
    ("isolation-nft-apply", {"script": "flush set bridge t ports\n"},
     ["/usr/sbin/nft", "-f", "-"], "flush set bridge t ports\n"),
    ("isolation-nft-list", {"table": "vaf_isolation"},
     ["/usr/sbin/nft", "list", "table", "bridge", "vaf_isolation"], None),
    ("isolation-nft-list", {"table": "vaf_isolation", "json": True},
     ["/usr/sbin/nft", "-j", "list", "table", "bridge", "vaf_isolation"], None),
    ("isolation-nft-list", {"table": "vaf_isolation", "map": "digests", "json": True},
     ["/usr/sbin/nft", "-j", "list", "map", "bridge", "vaf_isolation", "digests"], None),
])
def test_each_verb_runs_one_fixed_command(verb, request_, argv, stdin):
    assert nv.BUILDERS[verb](request_, COMMANDS) == (argv, stdin)


@pytest.mark.parametrize("chain", ["VAF", "FORWARD", "INPUT", f"VAF-O-{LONGEST_TAP}",
                                   f"VAF-I-{LONGEST_TAP}", "_x", "0", "a" * 31])
def test_chain_names_vaf_uses_are_accepted(chain):
    assert nv.chain(chain) == chain


@pytest.mark.parametrize("chain", [
    "", "-L", "--Lc", "--init-table", "-Z", "VAF O", "VAF;id", "VAF\n", "VAF\0", "../x",
    "VAF$", "V\u00c4F", "a" * 32, 7, None, True, ["VAF"], {"chain": "VAF"}])
def test_hostile_chain_names_are_refused(chain):
    for verb, request_ in (("isolation-ebtables-list", {"chain": chain}),
                           ("isolation-ebtables-delete", {"chain": chain})):
        with pytest.raises(ProtocolError, match="^chain must be 1 to 31 letters"):
            nv.BUILDERS[verb](request_, COMMANDS)


@pytest.mark.parametrize("table", ["vaf_isolation", "t", "T2", "a" * 64])
def test_table_and_map_names_by_the_old_rules_grammar_are_accepted(table):
    assert nv.nft_list({"table": table, "map": table}, COMMANDS)[0][-2:] == [table, table]


@pytest.mark.parametrize("table", [
    "", "vaf_isolation; flush ruleset", "vaf isolation", "vaf-isolation", '"vaf"', "t\n",
    "a" * 65, "ip", 1, None, False, ["vaf_isolation"]])
def test_hostile_table_and_map_names_are_refused(table):
    if table == "ip":  # a plain word is a name: nft itself refuses a keyword
        assert nv.nft_list({"table": table}, COMMANDS)[0][-1] == "ip"
        return
    with pytest.raises(ProtocolError, match="^table must be 1 to 64 letters"):
        nv.nft_list({"table": table}, COMMANDS)
    with pytest.raises(ProtocolError, match="^map must be 1 to 64 letters"):
        nv.nft_list({"table": "vaf_isolation", "map": table}, COMMANDS)


@pytest.mark.parametrize("verb, field", [("isolation-ebtables-restore", "rules"),
                                         ("isolation-nft-apply", "script")])
def test_rules_and_scripts_are_text_of_bounded_size(verb, field):
    largest = "x" * TEXT_LIMIT
    assert nv.BUILDERS[verb]({field: largest}, COMMANDS)[1] == largest
    for value, reason in (("x" * (TEXT_LIMIT + 1), f"{field} larger than {TEXT_LIMIT}"),
                          ("flush ruleset\0", f"{field} contains a NUL"),
                          (["flush ruleset"], f"{field} must be a string, got list"),
                          (None, f"{field} must be a string, got NoneType"),
                          (7, f"{field} must be a string, got int")):
        with pytest.raises(ProtocolError, match=f"^{reason}"):
            nv.BUILDERS[verb]({field: value}, COMMANDS)


@pytest.mark.parametrize("verb, request_, reason", [
    ("isolation-ebtables-list", {"chain": "VAF", "argv": ["/bin/sh"]},
     "isolation-ebtables-list: unexpected field 'argv' (expected chain, counters)"),
    ("isolation-ebtables-list", {"table": "nat"}, "unexpected field 'table'"),
    ("isolation-ebtables-delete", {"chain": "VAF", "counters": True},
     "unexpected field 'counters'"),
    ("isolation-ebtables-restore", {"rules": "*filter\n", "program": "/bin/sh"},
     "unexpected field 'program'"),
    ("isolation-nft-apply", {"script": "", "NFT": "/tmp/nft", "args": ["-c"]},
     "unexpected field 'NFT', 'args'"),
    ("isolation-nft-list", {"table": "t", "family": "ip"}, "unexpected field 'family'"),
    ("isolation-ebtables-delete", {}, "isolation-ebtables-delete: missing field 'chain'"),
    ("isolation-ebtables-restore", {}, "missing field 'rules'"),
    ("isolation-nft-apply", {}, "missing field 'script'"),
    ("isolation-nft-list", {"map": "digests"}, "missing field 'table'"),
    ("isolation-ebtables-list", {"counters": "yes"}, "counters must be true or false"),
    ("isolation-ebtables-list", {"counters": 1}, "counters must be true or false"),
    ("isolation-nft-list", {"table": "t", "json": "true"}, "json must be true or false"),
])
def test_extra_missing_and_mistyped_fields_are_refused(verb, request_, reason):
    with pytest.raises(ProtocolError) as refused:
        nv.BUILDERS[verb](request_, COMMANDS)
    assert reason in refused.value.reason


def test_the_programs_come_from_the_conf_as_absolute_paths():
    assert nv.commands_of(DriverConfig({})) == nv.DEFAULT_COMMANDS == COMMANDS
    legacy = DriverConfig({"EBTABLES": "/usr/sbin/ebtables-legacy"}, "privileged.conf")
    assert nv.commands_of(legacy)["EBTABLES"] == "/usr/sbin/ebtables-legacy"
    with pytest.raises(ConfigError, match="^NFT in privileged.conf must be an absolute path"):
        nv.commands_of(DriverConfig({"NFT": "nft"}, "privileged.conf"))


# -- the program ---------------------------------------------------------------------------------

RECORDER = '#!/bin/sh\necho "$@"\nexec cat\n'  # what it was run with, then its stdin


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """vaf-privileged as installed, its conf naming the recorder as ebtables and
    ebtables-restore, and false (fails) as nft; the recorder's path."""
    root = tmp_path_factory.mktemp("host-install")
    recorder = root / "recorder"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    return install_here(root, {"EBTABLES": str(recorder), "EBTABLES_RESTORE": str(recorder),
                               "NFT": shutil.which("false")})


def run_program(program, verb: str, request_, env: dict | None = None):
    text = request_ if isinstance(request_, str) else json.dumps(request_)
    runner = Runner(sudo_prefix=())
    if env:  # the program must not care (sudo resets it anyway)
        return runner.run(["env", *(f"{k}={v}" for k, v in env.items()), str(program), verb],
                          input=text, check=False)
    return runner.run([str(program), verb], input=text, check=False)


def test_the_program_runs_the_command_of_its_conf_and_reports_it(program):
    done = run_program(program, "isolation-ebtables-list", {"chain": "VAF"},
                       env={"EBTABLES": "/bin/false", "PYTHONPATH": "/tmp"})
    report = json.loads(done.stdout)
    assert done.returncode == 0 and done.stderr == ""
    recorder = str(program.parents[3] / "recorder")
    assert report["argv"] == [recorder, "--concurrent", "-t", "filter", "-L", "VAF"]
    assert report["stdout"] == "--concurrent -t filter -L VAF\n" and report["returncode"] == 0
    restored = json.loads(run_program(program, "isolation-ebtables-restore",
                                      {"rules": "*filter\n-F VAF\n"}).stdout)
    assert restored["stdout"] == "--noflush\n*filter\n-F VAF\n"  # the rules on its stdin
    failed = run_program(program, "isolation-nft-apply", {"script": "flush ruleset\n"})
    assert failed.returncode == 1 and json.loads(failed.stdout)["returncode"] == 1


@pytest.mark.parametrize("verb, sent, reason", [
    ("isolation-ebtables-delete", {"chain": "--init-table"}, "chain must be 1 to 31"),
    ("isolation-ebtables-list", {"chain": "VAF", "program": "/bin/sh"},
     "isolation-ebtables-list: unexpected field 'program'"),
    ("isolation-nft-list", {"table": "t; flush ruleset"}, "table must be 1 to 64"),
    ("isolation-nft-apply", {"script": "x" * (TEXT_LIMIT + 1)}, "script larger than"),
    ("isolation-nft-apply", "[1, 2]", "request must be a JSON object"),
    ("isolation-nft-apply", "{bad", "request is not valid JSON"),
    ("isolation-nft", {"script": ""}, "usage: vaf-privileged"),
])
def test_the_program_refuses_bad_requests_in_one_line_and_runs_nothing(program, verb, sent,
                                                                       reason):
    done = run_program(program, verb, sent)
    assert done.returncode == 2 and done.stdout == ""  # no report: nothing ran
    assert done.stderr.startswith(reason) and len(done.stderr.splitlines()) == 1


def test_main_reports_the_host_and_the_command(capsys, tmp_path):
    conf = tmp_path / "privileged.conf"
    conf.write_text(f"NFT={shutil.which('echo')}\n")
    code = privileged.main(["isolation-nft-list"], str(conf),
                           io.StringIO('{"table": "vaf_isolation", "json": true}'))
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and set(report) == {"host", "argv", "returncode", "stdout", "stderr"}
    assert report["stdout"] == "-j list table bridge vaf_isolation\n"


# -- the backends' client ------------------------------------------------------------------------

def test_the_client_gives_the_backends_the_commands_result(program):
    firewall = Firewall(Runner(sudo_prefix=()), str(program))
    listed = firewall.ebtables_list("VAF-O-one-7-0", counters=True)
    assert listed.stdout == "--concurrent -t filter -L VAF-O-one-7-0 --Lc\n"
    assert listed.argv[0] == str(program.parents[3] / "recorder") and listed.returncode == 0
    assert firewall.ebtables_restore("*filter\n").stdout == "--noflush\n*filter\n"
    assert firewall.nft_list("vaf_isolation", check=False).returncode == 1
    with pytest.raises(CommandError) as failed:
        firewall.nft_apply("flush ruleset\n")
    assert failed.value.reason == "false failed: exit code 1"  # the program that failed


def test_a_missing_firewall_program_is_named(tmp_path):
    missing = install_here(tmp_path, {"NFT": str(tmp_path / "no-nft")})
    with pytest.raises(CommandNotFound) as failed:
        Firewall(Runner(sudo_prefix=()), str(missing)).nft_list("vaf_isolation")
    assert failed.value.reason == "no-nft is not installed (command not found)"


def test_a_firewall_program_that_cannot_run_is_named(tmp_path):
    plain = tmp_path / "ebtables"
    plain.write_text("not a program\n")  # mode 0644: exec refused
    installed = install_here(tmp_path, {"EBTABLES": str(plain)})
    with pytest.raises(CommandError) as failed:
        Firewall(Runner(sudo_prefix=()), str(installed)).ebtables_list("VAF")
    assert failed.value.reason == f"ebtables failed: {plain}: Permission denied"


def test_a_host_without_the_install_is_told_to_run_install_host(tmp_path):
    absent = tmp_path / "usr/lib/vaf/vaf-privileged"
    with pytest.raises(DriverError) as failed:
        Firewall(Runner(sudo_prefix=()), str(absent)).ebtables_list("VAF")
    host = os.uname().nodename
    assert failed.value.reason == (f"vaf-privileged isolation-ebtables-list: {absent} is "
                                   f"missing on {host}: run install.sh host on {host}")


def test_a_refused_request_fails_with_the_programs_reason(program):
    with pytest.raises(DriverError) as failed:
        Firewall(Runner(sudo_prefix=()), str(program)).ebtables_delete("-Z")
    assert "vaf-privileged isolation-ebtables-delete on " in failed.value.reason
    assert failed.value.reason.endswith("failed: chain must be 1 to 31 letters, digits, '_' or "
                                        "'-' (not first), got '-Z'")


def test_the_firewall_verbs_load_no_more_than_they_need():
    """The backends call vaf-privileged several times per VM: its start-up is their cost
    (bench/isolation_bench.py). CPU's module and dataclasses (inspect, ast) stay unloaded."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from vaf.host import privileged; "
            "print(' '.join(sorted(m for m in ('vaf.host.cpu', 'vaf.host.cpu_verbs', "
            "'dataclasses', 'inspect') if m in sys.modules)))")
    loaded = Runner().output(["/usr/bin/python3", "-IS", "-c", code, str(REPO)])
    assert loaded == ""
    assert tuple(cpu_verbs.VERBS) == privileged.CPU_VERBS
