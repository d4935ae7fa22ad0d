"""The ebtables backend with ``ebtables-legacy``, on the test hypervisor, as oneadmin.

This machine's kernel lacks the legacy ebtables tables, the test hypervisor's guest has both
flavours. The same lab as ``test_isolation.py`` (namespaces on a bridge) is built in the guest
over ssh; the hook runs as oneadmin from a remotes copy with the guest's own python3, which
has no lxml, so the stdlib XML parser is exercised for real too. The host part is installed
as ``install.sh host`` installs it (vaf-privileged, its conf naming ebtables-legacy, the
sudoers file) and oneadmin's blanket sudo is taken away: every firewall command reaches root
through the shipped sudoers rules, which hold no wildcard and no regular expression.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest
from test_isolation import (
    A1,
    A2,
    B1,
    SVC,
    UNUSED_A_MAC,
    VMS,
    Remotes,
    machine_xml,
    reachability,
)

from vaf.host.runner import Runner
from vaf.lab.host_install import install_host, sudo_limited_to_vaf
from vaf.lab.netns import Lab
from vaf.lab.testbed import HOST_ALIAS

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEST = "/var/tmp/vaf-isolation-test"
CONF = f"BACKEND=ebtables\nALLOWED_EXTRA_MACS={SVC.mac}\n"
#: vaf-privileged's conf picks the flavour (the driver's conf cannot: oneadmin writes it)
LEGACY = {"EBTABLES": "/usr/sbin/ebtables-legacy",
          "EBTABLES_RESTORE": "/usr/sbin/ebtables-legacy-restore"}
AS_ONEADMIN = ("runuser", "-u", "oneadmin", "--")


def stage_remotes(stage: Path) -> None:
    """A remotes tree as `onehost sync` leaves it: real copies, the executables as symlinks."""
    shutil.copytree(REPO / "vaf", stage / "vaf" / "lib" / "vaf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "remotes" / "vaf" / "dispatch", stage / "vaf" / "dispatch")
    (stage / "hooks" / "ebtables").mkdir(parents=True)
    for name in ("vaf-isolation", "vaf-isolation-sweep"):
        (stage / "hooks" / "ebtables" / name).symlink_to("../../vaf/dispatch")
    conf = stage / "etc" / "hooks" / "ebtables" / "ebtables.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(CONF)


@pytest.fixture
def legacy(testbed, tmp_path) -> Remotes:
    stage_remotes(tmp_path / "stage")
    testbed.sync_remotes(tmp_path / "stage", DEST)
    install_host(testbed, LEGACY)
    runner = Runner(host=HOST_ALIAS, ssh=("ssh", "-F", testbed.ssh_config, "-l", "root"),
                    sudo_prefix=())
    lab = Lab(runner=runner)
    try:
        lab.start()
        for machine in (*VMS, SVC):
            lab.add_machine(machine.name, machine.tap, machine.mac, f"{machine.ip}/16")
        with sudo_limited_to_vaf(testbed):  # oneadmin may run exactly share/sudoers/vaf
            yield Remotes(PurePosixPath(DEST), lab, "ebtables", ebtables="ebtables-legacy",
                          as_user=AS_ONEADMIN)
    finally:
        lab.close()


def test_isolation_with_ebtables_legacy(legacy):
    lab = legacy.lab
    direct = lab.run(lab.host, [*AS_ONEADMIN, "sudo", "-n", LEGACY["EBTABLES"], "-L"],
                     check=False)
    assert direct.returncode != 0 and "password is required" in direct.stderr  # no such rule
    legacy.isolate(*VMS)
    before = legacy.ruleset()
    legacy.isolate(A1)  # twice: nothing changes, not even the counters
    rules = legacy.ruleset()
    assert rules == before
    assert rules.count(f"-i {A1.tap} -j VAF-O-{A1.tap}") == 1
    assert "VAF" not in lab.run(lab.host, ["ebtables-nft", "-L"], check=False).stdout
    assert reachability(lab, [(A1, A2), (A1, SVC), (A1, B1), (B1, SVC)]) == {
        "a1->a2": True, "a1->svc": True, "a1->b1": False, "b1->svc": False}
    lab.set_mac(A1.name, UNUSED_A_MAC)
    assert not lab.ping(A1.name, A2.ip)
    lab.set_mac(A1.name, A1.mac)

    assert legacy.hook(machine_xml(A1), "clean").returncode == 0
    lab.remove_port(A2.tap)
    sweep = legacy.sweep()
    assert sweep.returncode == 0, sweep.stderr
    rules = legacy.ruleset()
    assert A1.tap not in rules and A2.tap not in rules and B1.tap in rules
