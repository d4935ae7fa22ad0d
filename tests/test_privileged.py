"""The sudoers file names exactly the command lines the drivers build, and nothing more.

``share/sudoers/vaf`` is checked twice: by ``visudo`` (sudo's own parser, so the file installs)
and here, rule by rule, against argv from the real builders (lvmsnap's, CPU priority's and
isolation's calls of the privileged entry point). Every rule is one fixed command line, the
program's installed path and one verb: no wildcard and no regular expression, so the file
means the same on every sudo (regular expressions need sudo 1.9.10, which Debian 11, Ubuntu
22.04 and RHEL 9 do not ship).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vaf.drivers import cpu_host
from vaf.drivers.lvmsnap import host as lvmsnap_host
from vaf.drivers.lvmsnap import settings
from vaf.host import netfilter_verbs, privileged
from vaf.host.ebtables import DISPATCH, in_chain
from vaf.host.netfilter_verbs import Firewall
from vaf.host.nft import DIGESTS, TABLE
from vaf.host.privileged_call import DEFAULT_PROGRAM
from vaf.host.runner import Runner

REPO = Path(__file__).resolve().parent.parent
SUDOERS = REPO / "share" / "sudoers" / "vaf"
VG = "vg-one-100"
IMAGE = "/var/lib/one/datastores/1/0a1b2c3d4e"
DEVICE = f"/dev/{VG}/lv-one-7-0"


def aliases() -> dict[str, list[tuple[str, str]]]:
    """{alias: [(program path, arguments), ...]} from every Cmnd_Alias of the file."""
    text = re.sub(r"\\\n", " ", SUDOERS.read_text())
    found: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        match = re.match(r"\s*Cmnd_Alias\s+(\w+)\s*=\s*(.*)$", line)
        if not match:
            continue
        for command in re.split(r",\s+(?=/)", match.group(2).strip()):
            path, _, args = command.strip().partition(" ")
            found.setdefault(match.group(1), []).append((path, args))
    return found


def rules() -> set[tuple[str, str]]:
    """Every (program path, argument string) the file allows: fixed lines only."""
    found = set()
    for commands in aliases().values():
        for path, args in commands:
            assert args and not set(path + args) & set("#*?[]\\^$!"), \
                f"not one fixed command line: {path} {args}"
            found.add((path, args))
    return found


RULES = rules()


def allowed(argv: list[str]) -> bool:
    return (argv[0], " ".join(argv[1:])) in RULES


class _Stop(Exception):
    pass


def privileged_argv(command: str) -> list[str]:
    """The argv the front-end's ssh call runs, without ``sudo -n`` (as sudo matches it)."""
    program = settings.BY_KEY["PRIVILEGED"].default
    assert program[:2] == ("sudo", "-n")
    return [program[2], command]


def firewall_argv(call) -> list[str]:
    """The argv ``call(Firewall)`` has the runner run (without sudo, as sudo matches it):
    the real client, stopped before anything runs."""
    seen = []

    def stop(host, argv):
        seen.append(list(argv))
        raise _Stop

    with pytest.raises(_Stop):
        call(Firewall(Runner().observed_by(stop)))
    return seen[0]


#: every method of the backends' client, as they call it
FIREWALL_CALLS = {
    "ebtables_list": [lambda f: f.ebtables_list(), lambda f: f.ebtables_list(DISPATCH),
                      lambda f: f.ebtables_list(in_chain("one-7-0"), check=False),
                      lambda f: f.ebtables_list(counters=True)],
    "ebtables_delete": [lambda f: f.ebtables_delete(in_chain("one-7-0"), check=False)],
    "ebtables_restore": [lambda f: f.ebtables_restore("*filter\n-F VAF\n")],
    "nft_apply": [lambda f: f.nft_apply("flush set bridge vaf_isolation ports\n")],
    "nft_list": [lambda f: f.nft_list(TABLE, as_json=True, check=False),
                 lambda f: f.nft_list(TABLE, DIGESTS, as_json=True, check=False),
                 lambda f: f.nft_list(TABLE, check=False)],
}

BUILT = [
    *(privileged_argv(f"lvmsnap-{action}") for action in sorted(lvmsnap_host.COMMANDS)),
    *(firewall_argv(call) for calls in FIREWALL_CALLS.values() for call in calls),
    *([cpu_host.DEFAULT_PRIVILEGED, f"cpu-{verb}"] for verb in cpu_host.VERBS),
]


@pytest.mark.parametrize("argv", BUILT, ids=lambda argv: " ".join(argv)[:60])
def test_every_command_line_the_drivers_build_is_allowed(argv):
    assert allowed(argv), " ".join(argv)


def test_every_method_of_the_firewall_client_is_checked_and_has_a_verb():
    methods = {name for name, _ in inspect.getmembers(Firewall, inspect.isfunction)
               if not name.startswith("_")}
    assert methods == set(FIREWALL_CALLS)
    verbs = {firewall_argv(call)[1] for calls in FIREWALL_CALLS.values() for call in calls}
    assert verbs == set(netfilter_verbs.BUILDERS) <= set(privileged.VERBS)
    assert {args for _, args in aliases()["VAF_ISOLATION"]} == verbs


HOSTILE = [
    # LVM, dd and mkfs are no longer sudo'ed: only the privileged entry point runs them
    ["/usr/sbin/lvremove", "-f", f"{VG}/lv-one-7-0"],
    ["/usr/sbin/lvcreate", "--yes", "-n", "x", "-L", "8m", "--wipesignatures", "y", "-Z", "y",
     VG],
    ["/usr/bin/dd", f"if={IMAGE}", f"of={DEVICE}", "bs=4M", "status=progress", "oflag=direct",
     "conv=fsync"],
    ["/usr/sbin/mkfs.xfs", "-f", "-q", DEVICE],
    ["/usr/sbin/blockdev", "--getsize64", DEVICE],
    [DEFAULT_PROGRAM, "lvmsnap-clone", "--conf=/tmp/x"],  # no argument beyond the verb
    [DEFAULT_PROGRAM, "lvmsnap-clone", "{}"],
    [DEFAULT_PROGRAM, "lvmsnap-"],
    [DEFAULT_PROGRAM, "lvmsnap-clone lvmsnap-delete"],
    # isolation's firewall programs are no longer sudo'ed either: only their verbs are
    ["/usr/sbin/ebtables", "--concurrent", "-t", "filter", "-L"],
    ["/usr/sbin/ebtables", "--concurrent", "-t", "filter", "-L", "--init-table"],
    ["/usr/sbin/ebtables", "--concurrent", "-t", "filter", "-F"],
    ["/usr/sbin/ebtables-restore", "--noflush"],
    ["/usr/sbin/ebtables-restore"],  # without --noflush: every table flushed
    ["/usr/sbin/nft", "-f", "-"],
    ["/usr/sbin/nft", "-f", "/etc/shadow"],
    ["/usr/sbin/nft", "flush", "ruleset"],
    ["/usr/sbin/nft", "list", "table", "bridge", "vaf_isolation;", "flush", "ruleset"],
    [DEFAULT_PROGRAM, "isolation-nft-apply", "-"],
    [DEFAULT_PROGRAM, "isolation-ebtables-delete", "FORWARD"],
    [DEFAULT_PROGRAM, "isolation-ebtables-list", "--conf=/tmp/x"],
    [DEFAULT_PROGRAM, "isolation-"],
    [DEFAULT_PROGRAM, "cpu-apply", "--state-dir=/etc"],
    [DEFAULT_PROGRAM],
    ["/tmp/vaf-privileged", "cpu-apply"],  # another copy of the program
    ["/usr/bin/python3", "/var/tmp/one/vaf/lib/vaf/host/privileged.py"],  # code oneadmin writes
]


@pytest.mark.parametrize("argv", HOSTILE, ids=lambda argv: " ".join(argv)[:60])
def test_what_an_attacker_would_try_is_refused(argv):
    assert not allowed(argv), " ".join(argv)


def test_sudo_parses_the_file():
    visudo = shutil.which("visudo") or ("/usr/sbin/visudo" if os.path.exists("/usr/sbin/visudo")
                                        else None)
    if visudo is None:
        pytest.skip("visudo is not installed (Debian package sudo, scripts/deps/apt-core.txt)")
    done = subprocess.run([visudo, "-cf", str(SUDOERS)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_privileged_program_is_named_by_its_installed_path_only():
    text = SUDOERS.read_text()
    assert "/usr/lib/vaf/vaf-privileged cpu-apply," in text
    assert "python" not in text and "/var/tmp/one" not in text


def test_the_rules_are_fixed_command_lines_that_any_sudo_reads():
    """Debian 11, Ubuntu 22.04 and RHEL 9 ship sudo < 1.9.10, which reads ^...$ literally:
    every rule is the installed program and one verb it serves."""
    table = aliases()
    assert set(table) == {"VAF_LVMSNAP", "VAF_ISOLATION", "VAF_PRIVILEGED"}
    for commands in table.values():
        for path, args in commands:
            assert path == DEFAULT_PROGRAM
            assert re.fullmatch(r"(lvmsnap|cpu|isolation)(-[a-z]+)+", args), args
            assert args.startswith("lvmsnap-") or args in privileged.VERBS, args
    verbs = {args for path, args in table["VAF_LVMSNAP"]}
    assert verbs == {f"lvmsnap-{action}" for action in lvmsnap_host.COMMANDS}
    lines = [line for line in SUDOERS.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert not set("".join(lines)) & set("*?[]^$!"), "a wildcard or a regular expression"


def test_every_rule_is_documented():
    aliases = re.findall(r"^Cmnd_Alias\s+(\w+)", SUDOERS.read_text(), re.MULTILINE)
    doc = (REPO / "docs" / "privileged.md").read_text()
    assert aliases and [a for a in aliases if f"`{a}`" not in doc] == []
