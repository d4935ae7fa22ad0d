"""The sudoers file names exactly the command lines the drivers build, and nothing more.

``share/sudoers/vaf`` is checked twice: by ``visudo`` (sudo's own parser, so the file installs)
and here, rule by rule, against argv from the real builders (lvm, dd, mkfs, ebtables, nft,
the privileged entry point). Each rule is a POSIX extended regular expression over the
arguments; the subset the file uses reads the same in Python's ``re``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vaf.host import dd, fs
from vaf.host import lvm as L
from vaf.host.ebtables import DISPATCH, in_chain
from vaf.host.runner import Runner

REPO = Path(__file__).resolve().parent.parent
SUDOERS = REPO / "share" / "sudoers" / "vaf"
VG = "vg-one-100"
TAGS = ["vaf.lvmsnap", "vaf.src=/var/lib/one/datastores/1/0a1b", "vaf.used=1700000000"]
IMAGE = "/var/lib/one/datastores/1/0a1b2c3d4e"
DEVICE = f"/dev/{VG}/lv-one-7-0"


def rules() -> dict[str, list[re.Pattern]]:
    """{program name: [argument regex, ...]} from every Cmnd_Alias of the file."""
    text = re.sub(r"\\\n", " ", SUDOERS.read_text())
    found: dict[str, list[re.Pattern]] = {}
    for line in text.splitlines():
        match = re.match(r"\s*Cmnd_Alias\s+\w+\s*=\s*(.*)$", line)
        if not match:
            continue
        for command in re.split(r",\s+(?=/)", match.group(1).strip()):
            path, _, args = command.strip().partition(" ")
            assert args.startswith("^") and args.endswith("$"), f"not an exact rule: {command}"
            assert "#" not in args
            found.setdefault(os.path.basename(path), []).append(re.compile(args))
    return found


RULES = rules()


def allowed(argv: list[str]) -> bool:
    line = " ".join(argv[1:])
    return any(rule.fullmatch(line) for rule in RULES.get(argv[0], []))


class _Stop(Exception):
    pass


def lvm_reads() -> list[list[str]]:
    """The argv VolumeGroup's reads run (recorded by an observer before they execute)."""
    seen: list[list[str]] = []

    def record(_host, argv):
        seen.append(list(argv))
        raise _Stop

    vg = L.VolumeGroup(VG, Runner().observed_by(record))
    for read in (vg.usage, vg.lvs, vg.exists):
        with pytest.raises(_Stop):
            read()
    return seen


BUILT = [
    *lvm_reads(),
    L.lvcreate_linear_argv(VG, "vaf-fill-0123456789abcdef01234567", 64, TAGS, wipe=False),
    L.lvcreate_linear_argv(VG, "lv-one-7-1", 1024, ["vaf.lvmsnap"]),
    L.lvcreate_pool_argv(VG, "vaf-pool", "50%VG"),
    L.lvcreate_pool_argv(VG, "vaf-pool", "2G"),
    L.lvcreate_pool_argv(VG, "vaf-pool", 2048),
    L.lvcreate_thin_argv(VG, "vaf-pool", "lv-one-7-1", 1024, ["vaf.lvmsnap"]),
    L.lvcreate_thin_snapshot_argv(VG, "vaf-pool", "vaf-cache-0a1b", "lv-one-7-0", TAGS[:1]),
    L.lvcreate_classic_snapshot_argv(VG, "vaf-cache-0a1b", "lv-one-7-0", 80, TAGS[:1]),
    L.lvremove_argv(VG, "lv-one-7-0"),
    L.lvrename_argv(VG, "vaf-fill-0a1b", "vaf-cache-0a1b"),
    L.lvchange_argv(VG, "vaf-fill-0a1b", readonly=True, activate=False, skip=True),
    L.lvchange_argv(VG, "vaf-fill-0a1b", readonly=True),
    L.lvchange_argv(VG, "lv-one-7-0", activate=True),
    L.lvchange_argv(VG, "vaf-cache-0a1b", del_tags=["vaf.used=1"], add_tags=["vaf.used=2"]),
    L.lvextend_argv(VG, "lv-one-7-0", 2048),
    dd.dd_argv(IMAGE, f"/dev/{VG}/vaf-fill-0a1b", "4M"),
    dd.dd_argv(IMAGE, DEVICE, "4M", sparse=True),
    dd.dd_argv(DEVICE, f"{IMAGE}.vaf-tmp-4242", "4M", count_bytes=1000, direct=False),
    dd.dd_argv("/dev/zero", DEVICE, "1M", count_bytes=5, seek_bytes=7),
    ["blockdev", "--getsize64", DEVICE],
    fs.mkfs_argv("xfs", DEVICE, thin=True),
    fs.mkfs_argv("ext4", DEVICE),
    fs.mkfs_argv("ext3", DEVICE, thin=True),
    fs.mkswap_argv(DEVICE),
    ["ebtables", "--concurrent", "-t", "filter", "-L"],
    ["ebtables", "--concurrent", "-t", "filter", "-L", DISPATCH],
    ["ebtables", "--concurrent", "-t", "filter", "-L", in_chain("one-7-0")],
    ["ebtables", "--concurrent", "-t", "filter", "-X", in_chain("one-7-0")],
    ["ebtables-restore", "--noflush"],
    ["nft", "-f", "-"],
    ["nft", "-j", "list", "table", "bridge", "vaf_isolation"],
    ["nft", "list", "table", "bridge", "vaf_isolation"],
    ["vaf-privileged", "cpu-apply"],
    ["vaf-privileged", "cpu-status"],
]


@pytest.mark.parametrize("argv", BUILT, ids=lambda argv: " ".join(argv)[:60])
def test_every_command_line_the_drivers_build_is_allowed(argv):
    assert allowed(argv), " ".join(argv)


HOSTILE = [
    ["lvremove", "-f", f"{VG}/lv-one-7-0", "--config", "x"],  # an extra option
    ["lvremove", "-f", "vg0/root"],  # a volume group that is not a datastore's
    ["lvremove", "-f", f"{VG}/--force"],
    ["lvcreate", "--yes", "-n", "x", "-L", "8m", "--wipesignatures", "y", "-Z", "y",
     "--addtag", "evil", VG],  # a tag that is not vaf's
    ["lvchange", "--config", "global{}", f"{VG}/lv-one-7-0"],
    ["lvrename", VG, "lv-one-7-0", "-f x"],
    ["dd", "if=/etc/shadow", f"of={DEVICE}", "bs=4M", "status=progress", "oflag=direct",
     "conv=fsync"],  # reading a file outside the datastores
    ["dd", f"if={DEVICE}", "of=/etc/shadow", "bs=4M", "status=progress", "count=1",
     "iflag=count_bytes,fullblock", "conv=fsync,notrunc"],
    ["dd", f"if={IMAGE}", "of=/dev/sda", "bs=4M", "status=progress", "oflag=direct",
     "conv=fsync"],
    ["dd", "if=/var/lib/one/datastores/1/../../../../etc/shadow", f"of={DEVICE}", "bs=4M",
     "status=progress", "oflag=direct", "conv=fsync"],
    ["mkfs.xfs", "-f", "-q", "/dev/sda"],
    ["blockdev", "--setrw", DEVICE],
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
    assert "/usr/lib/vaf/vaf-privileged ^cpu-(apply|release|status)$" in text
    assert "python" not in text and "/var/tmp/one" not in text


def test_every_rule_is_documented():
    aliases = re.findall(r"^Cmnd_Alias\s+(\w+)", SUDOERS.read_text(), re.MULTILINE)
    doc = (REPO / "docs" / "privileged.md").read_text()
    assert aliases and [a for a in aliases if f"`{a}`" not in doc] == []
