"""The sudoers file names exactly the command lines the drivers build, and nothing more.

``share/sudoers/vaf`` is checked twice: by ``visudo`` (sudo's own parser, so the file installs)
and here, rule by rule, against argv from the real builders (the privileged entry point's
verbs, ebtables, nft). A rule is either a fixed command line (lvmsnap, CPU priority: the same
on every sudo version) or, for isolation, a POSIX extended regular expression over the
arguments (``^...$``, sudo 1.9.10+); the subset the file uses reads the same in Python's ``re``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vaf.drivers.lvmsnap import host as lvmsnap_host
from vaf.drivers.lvmsnap import settings
from vaf.host.ebtables import DISPATCH, in_chain

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


def rules() -> dict[str, list]:
    """{program name: [fixed argument string or compiled regex, ...]}."""
    found: dict[str, list] = {}
    for commands in aliases().values():
        for path, args in commands:
            assert "#" not in args and args, f"not an exact rule: {path} {args}"
            if args.startswith("^"):
                assert args.endswith("$"), f"not an exact rule: {path} {args}"
                rule = re.compile(args)
            else:
                assert not set(args) & set("*?[]\\^$"), f"a wildcard: {path} {args}"
                rule = args
            found.setdefault(os.path.basename(path), []).append(rule)
    return found


RULES = rules()


def allowed(argv: list[str]) -> bool:
    line = " ".join(argv[1:])
    return any(rule == line if isinstance(rule, str) else rule.fullmatch(line)
               for rule in RULES.get(argv[0], []))


class _Stop(Exception):
    pass


def privileged_argv(command: str) -> list[str]:
    """The argv the front-end's ssh call runs, without ``sudo -n`` (as sudo matches it)."""
    program = settings.BY_KEY["PRIVILEGED"].default
    assert program[:2] == ("sudo", "-n")
    return [os.path.basename(program[2]), command]


BUILT = [
    *(privileged_argv(f"lvmsnap-{action}") for action in sorted(lvmsnap_host.COMMANDS)),
    ["ebtables", "--concurrent", "-t", "filter", "-L"],
    ["ebtables", "--concurrent", "-t", "filter", "-L", DISPATCH],
    ["ebtables", "--concurrent", "-t", "filter", "-L", in_chain("one-7-0")],
    ["ebtables", "--concurrent", "-t", "filter", "-X", in_chain("one-7-0")],
    ["ebtables-restore", "--noflush"],
    ["nft", "-f", "-"],
    ["nft", "-j", "list", "table", "bridge", "vaf_isolation"],
    ["nft", "list", "table", "bridge", "vaf_isolation"],
    ["vaf-privileged", "cpu-apply"],
    ["vaf-privileged", "cpu-release"],
    ["vaf-privileged", "cpu-status"],
]


@pytest.mark.parametrize("argv", BUILT, ids=lambda argv: " ".join(argv)[:60])
def test_every_command_line_the_drivers_build_is_allowed(argv):
    assert allowed(argv), " ".join(argv)


HOSTILE = [
    # LVM, dd and mkfs are no longer sudo'ed: only the privileged entry point runs them
    ["lvremove", "-f", f"{VG}/lv-one-7-0"],
    ["lvcreate", "--yes", "-n", "x", "-L", "8m", "--wipesignatures", "y", "-Z", "y", VG],
    ["dd", f"if={IMAGE}", f"of={DEVICE}", "bs=4M", "status=progress", "oflag=direct",
     "conv=fsync"],
    ["mkfs.xfs", "-f", "-q", DEVICE],
    ["blockdev", "--getsize64", DEVICE],
    ["vaf-privileged", "lvmsnap-clone", "--conf=/tmp/x"],  # no argument beyond the verb
    ["vaf-privileged", "lvmsnap-clone", "{}"],
    ["vaf-privileged", "lvmsnap-"],
    ["vaf-privileged", "lvmsnap-clone lvmsnap-delete"],
    ["nft", "-f", "/etc/shadow"],
    ["nft", "flush", "ruleset"],
    ["ebtables", "--concurrent", "-t", "filter", "-F"],
    ["vaf-privileged", "cpu-apply", "--state-dir=/etc"],
    ["vaf-privileged"],
    ["python3", "/var/tmp/one/vaf/lib/vaf/host/privileged.py"],  # code oneadmin can write
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


def test_the_privileged_rules_are_fixed_command_lines_that_any_sudo_reads():
    """Debian 11, Ubuntu 22.04 and RHEL 9 ship sudo < 1.9.10, which reads ^...$ literally."""
    table = aliases()
    for alias in ("VAF_LVMSNAP", "VAF_PRIVILEGED"):
        for path, args in table[alias]:
            assert path == "/usr/lib/vaf/vaf-privileged"
            assert re.fullmatch(r"(lvmsnap|cpu)-[a-z]+", args), args
    verbs = {args for path, args in table["VAF_LVMSNAP"]}
    assert verbs == {f"lvmsnap-{action}" for action in lvmsnap_host.COMMANDS}


def test_every_rule_is_documented():
    aliases = re.findall(r"^Cmnd_Alias\s+(\w+)", SUDOERS.read_text(), re.MULTILINE)
    doc = (REPO / "docs" / "privileged.md").read_text()
    assert aliases and [a for a in aliases if f"`{a}`" not in doc] == []
