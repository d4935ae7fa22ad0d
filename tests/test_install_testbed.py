"""install.sh for real, in the test hypervisor (a Debian 12 guest without the image's blanket
sudo): each role installed, installed again (no change), uninstalled, and the guest's file
tree compared before and after: what is left is the packages apt installed and what
install.sh said it kept, nothing else."""

from __future__ import annotations

import json
import os
import shlex

import pytest
from test_oned_conf import STOCK_70

from vaf import __version__
from vaf.lab import apt_repo
from vaf.lab.testbed import Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

# Stat (not content: hashing the root fs under TCG takes minutes) of every path of the guest
# that an install could touch; /run only where vaf's names are. find, not a Python walk: three
# times faster in the emulated guest.
SKIP = ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/var/log", "/var/cache", "/var/lib/apt",
        "/var/lib/dpkg", "/run", "/root/.cache")
FIELDS = "%y\\t%m\\t%U\\t%G\\t%s\\t%T@\\t%l\\t%p\\0"
PRUNED = " -o ".join(f"-path {path}" for path in SKIP)
SNAPSHOT = (f"find / -mindepth 1 \\( {PRUNED} \\) -prune -o -printf '{FIELDS}'; "
            f"find /run -mindepth 1 -path '*vaf*' -printf '{FIELDS}'")


def parse_snapshot(listing: str) -> dict[str, list]:
    """path -> [kind, mode, uid, gid, size, mtime, link target] (size and mtime 0 for a
    directory: its listing changes with what is inside, which is checked entry by entry)."""
    found = {}
    for record in filter(None, listing.split("\0")):
        kind, mode, uid, gid, size, mtime, link, path = record.split("\t", 7)
        directory = kind == "d"
        found[path] = [kind, mode, int(uid), int(gid), 0 if directory else int(size),
                       "0" if directory else mtime, link]
    return found


#: what apt and the packages' scripts change besides their own files
APT_BOOKKEEPING = ("/etc/ld.so.cache", "/etc/alternatives/", "/usr/share/doc/",
                   "/usr/share/man/", "/usr/share/lintian/", "/etc/apt/")


@pytest.fixture(scope="module")
def guest():
    if os.environ.get("TESTBED") == "0":
        pytest.skip("TESTBED=0: test hypervisor disabled")
    tb = Testbed()
    tb.host_setup = "image"  # this module installs the roles itself
    tb.build()
    with tb:
        tb.drop_blanket_sudo()
        apt_repo.serve(tb)
        yield tb


def snapshot(tb) -> dict[str, list]:
    """The guest's tree; bytecode caches aside (running vaf writes them; uninstall removes
    them with their directories)."""
    found = parse_snapshot(tb.ssh(["sh", "-c", SNAPSHOT], timeout=300).stdout)
    return {path: v for path, v in found.items() if "/__pycache__" not in path}


def installed_packages(tb) -> set[str]:
    out = tb.ssh(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith("installed")}


def package_files(tb, packages: set[str]) -> set[str]:
    if not packages:
        return set()
    out = tb.ssh(["dpkg", "-L", *sorted(packages)]).stdout
    return {line for line in out.splitlines() if line.startswith("/")}


def kept_paths(output: str) -> list[str]:
    """The paths of install.sh's `kept: <path> (why)` lines."""
    return [line.split()[1] for line in output.splitlines()
            if line.startswith("kept: /")]


def unexplained(before: dict, after: dict, allowed: set[str], kept: list[str]) -> list[str]:
    """Paths that changed, appeared or vanished, and neither apt nor a `kept:` line explains."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}

    def explained(path: str) -> bool:
        if path in allowed or "/__pycache__" in path or path.startswith(APT_BOOKKEEPING):
            return True
        if any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            return True
        # a directory whose listing changed because of an explained entry in it (mtime)
        return before.get(path, [""])[0] == "d" and after.get(path, [""])[0] == "d"

    return sorted(p for p in changed if not explained(p))


def round_trip(tb, role: str, *args: str, uninstall_args: tuple[str, ...] = (),
               while_installed=None, rewritten: tuple[str, ...] = ()) -> dict:
    """install, look (``while_installed(tb)``), install again, uninstall; the outputs and
    snapshots. Whatever the uninstall leaves must be apt's or said to be kept."""
    packages_before = installed_packages(tb)
    before = snapshot(tb)
    first = tb.install_role(role, *args)
    installed = snapshot(tb)
    if while_installed:
        while_installed(tb)
    second = tb.install_role(role, *args)
    assert f"install.sh {role}: nothing to change" in second.stdout, second.stdout
    assert snapshot(tb) == installed
    removed = tb.install_role(role, "--uninstall", *uninstall_args)
    after = snapshot(tb)
    new_packages = installed_packages(tb) - packages_before
    allowed = package_files(tb, new_packages)
    # files put back as they were (same content, new mtime): the caller checks their content
    left = unexplained(before, after, allowed | set(rewritten), kept_paths(removed.stdout))
    assert left == [], f"left behind by {role}: {left}\n{removed.stdout}"
    return {"first": first.stdout, "removed": removed.stdout, "before": before,
            "installed": installed, "after": after, "packages": new_packages}


def test_frontend_installs_packages_drivers_and_oned_conf(guest):
    guest.ssh(["sh", "-c", 'mkdir -p /etc/one && cat > /etc/one/oned.conf'], input=STOCK_70)
    seen = {}

    def look(tb):
        seen["version"] = tb.ssh(["/usr/local/bin/vaf", "--version"]).stdout.strip()
        monitor = tb.ssh(["/var/lib/one/remotes/tm/lvmsnap/monitor", "x"], user="oneadmin",
                         check=False)
        seen["monitor"] = (monitor.returncode, monitor.stderr)
        seen["conf"] = tb.ssh(["cat", "/etc/one/oned.conf"]).stdout
        seen["owner"] = tb.ssh(["stat", "-c", "%U", "/var/lib/one/remotes/vaf/lib/vaf"]).stdout

    run = round_trip(guest, "frontend", "--apply", uninstall_args=("--apply",),
                     while_installed=look, rewritten=("/etc/one/oned.conf",))
    assert {"python3-click", "python3-lxml", "genisoimage"} <= run["packages"]
    assert seen["version"] == f"vaf, version {__version__}"
    assert seen["monitor"] == (2, "datastore id must be a non-negative integer, got 'x'\n")
    assert seen["owner"].strip() == "oneadmin"
    assert ',netapp,lvmsnap"' in seen["conf"] and 'NAME = "vaf_isolation"' in seen["conf"]
    assert "next: onehook create /usr/share/vaf/hooks/cpu-priority.hook" in run["first"]
    assert "onehost sync -f" in run["first"]
    assert guest.ssh(["cat", "/etc/one/oned.conf"]).stdout == STOCK_70
    backups = guest.ssh(["sh", "-c", "ls /etc/one/oned.conf.vaf-*"]).stdout.split()
    assert backups and all(f"kept: {b} " in run["removed"] for b in backups)


def test_host_gets_exactly_vafs_sudo_rules_and_privileged_entry(guest):
    def sudo(*argv: str, stdin: str | None = None):
        return guest.ssh(["sudo", "-n", *argv], user="oneadmin", check=False, input=stdin)

    assert sudo("/usr/sbin/vgs").returncode != 0  # no blanket rule in this guest
    first = guest.install_role("host")
    try:
        assert "no volume group vg-one-<id> on this host" in first.stderr
        assert guest.ssh(["stat", "-c", "%a %U", "/etc/sudoers.d/vaf"]).stdout == "440 root\n"
        # a verb of the drivers works (the installed copy imports what it runs), nothing else
        allowed = sudo("/usr/lib/vaf/vaf-privileged", "lvmsnap-probe", stdin="")
        assert "password is required" not in allowed.stderr
        assert "Traceback" not in allowed.stderr, allowed.stderr
        assert "password is required" in sudo("/usr/sbin/vgs").stderr
        assert "password is required" in sudo("/usr/lib/vaf/vaf-privileged", "lvmsnap-x").stderr
        status = sudo("/usr/lib/vaf/vaf-privileged", "cpu-status", stdin='{"vmids": []}')
        assert "password is required" not in status.stderr and "Traceback" not in status.stderr
        # isolation's firewall commands: through their verbs only, on this guest's sudo too
        listed = sudo("/usr/lib/vaf/vaf-privileged", "isolation-ebtables-list",
                      stdin='{"chain": "FORWARD"}')
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["stdout"].startswith("Bridge table: filter")
        assert "password is required" in sudo("/usr/sbin/ebtables", "--concurrent", "-t",
                                               "filter", "-L").stderr
        assert guest.ssh(["stat", "-c", "%U %a", "/usr/lib/vaf/lib/vaf/host/privileged.py",
                          "/var/lock/vaf-lvmsnap"]).stdout == "root 644\noneadmin 755\n"
        with guest.loop_vg("vg-one-7", 64):
            again = guest.install_role("host", "--vg", "vg-one-7")
            assert "volume group vg-one-7 present" in again.stdout
            assert "install.sh host: nothing to change" in again.stdout
    finally:
        guest.install_role("host", "--uninstall")
    run = round_trip(guest, "host")
    assert "kept: volume groups vg-one-*" in run["removed"]
    assert "/etc/sudoers.d/vaf" not in run["after"]


def test_head_account_key_line_and_units(guest):
    guest.ssh("rm -f /root/workers /root/workers.pub && "
              "ssh-keygen -q -t ed25519 -N '' -C workers -f /root/workers")
    args = ("--gate-key", "/root/workers.pub", "--gate-from", "10.0.2.0/24")
    first = guest.install_role("head", *args)
    keys = guest.ssh(["cat", "/var/lib/vafgate/.ssh/authorized_keys"]).stdout
    assert 'command="/usr/local/bin/vaf-gate serve --config /etc/vaf/gate.conf"' in keys
    # the forced command runs as the gate's account and answers in the gate's words
    forced = guest.ssh(["su", "-s", "/bin/sh", "vafgate", "-c",
                        "SSH_ORIGINAL_COMMAND='rm -rf /' /usr/local/bin/vaf-gate serve "
                        "--config /etc/vaf/gate.conf"], check=False)
    assert forced.stderr.startswith("vaf-gate: refused:"), (forced.stdout, forced.stderr)
    assert guest.ssh(["stat", "-c", "%U %a", "/run/vaf-gate"]).stdout == "vafgate 700\n"
    units = guest.ssh(["ls", "/etc/systemd/system"]).stdout.split()
    shipped = sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "share",
                                             "systemd")))
    assert sorted(u for u in units if u.startswith("vaf-")) == shipped
    assert "/etc/vaf/login.conf" in first.stdout
    again = guest.install_role("head", *args)
    assert "install.sh head: nothing to change" in again.stdout
    removed = guest.install_role("head", "--uninstall")
    assert "kept: account vafgate and its home /var/lib/vafgate" in removed.stdout
    assert guest.ssh(["id", "vafgate"], check=False).returncode == 0
    purged = guest.install_role("head", "--uninstall", "--purge")
    assert "remove account vafgate and its home" in purged.stdout
    assert guest.ssh(["id", "vafgate"], check=False).returncode != 0
    assert guest.ssh(["test", "-e", "/var/lib/vafgate"], check=False).returncode != 0
    # nothing of the head role's own is left (other roles' manifests may share the directory)
    assert guest.ssh(["sh", "-c", "ls /var/lib/vaf/install/head.* 2>/dev/null"],
                     check=False).stdout == ""


def test_sweep_cron_names_the_conf_of_the_installed_form(guest):
    guest.install_role("host", "--isolation", "vnm")
    try:
        cron = guest.ssh(["cat", "/etc/cron.d/vaf-isolation-sweep"]).stdout
        command = cron.strip().splitlines()[-1].split(None, 6)[-1]
        assert shlex.split(command)[-1] == "vaf_isolation"
    finally:
        guest.install_role("host", "--uninstall")
