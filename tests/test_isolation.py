"""Ethernet isolation with real traffic: namespaces as VMs on a bridge, the real executables.

Cluster A (two VMs, MAC prefix 02:00:0a:00:01), cluster B (one VM, prefix 02:00:0a:00:02)
and a service host on the same bridge, all in 10.0.0.0/16 so that only the Ethernet rules
can keep them apart. The service's MAC is an extra authorized MAC of cluster A (VM-wide on
A1, per NIC on A2). Every scenario runs with both backends.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaf.host.ebtables import unhook_batch
from vaf.host.runner import Result
from vaf.lab import oned
from vaf.lab.netns import Lab, arp_frame
from vaf.lab.oned import run_hook, run_vnm_action
from vaf.one.xml import encode_payload

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["ebtables", "nft"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(c) for c in ("nft", "ebtables", "ping", "ip")),
    reason="needs root, nft, ebtables, ping and ip (scripts/deps/apt-isolation.txt)")


@dataclass(frozen=True)
class Machine:
    name: str
    vmid: int | None  # None: not a VM (the service host)
    mac: str
    ip: str

    @property
    def tap(self) -> str:
        return f"one-{self.vmid}-0" if self.vmid is not None else f"{self.name}0"


A1 = Machine("a1", 11, "02:00:0a:00:01:05", "10.0.1.5")
A2 = Machine("a2", 12, "02:00:0a:00:01:06", "10.0.1.6")
B1 = Machine("b1", 21, "02:00:0a:00:02:05", "10.0.2.5")
SVC = Machine("svc", None, "02:00:0a:00:09:09", "10.0.9.9")
VMS = (A1, A2, B1)
UNUSED_A_MAC = "02:00:0a:00:01:07"  # in A's prefix, used by nobody: what a spoofer picks


def nic_xml(nic_id: int, mac: str | None, target: str | None, ip: str | None = None,
            vn_mad: str = "bridge", extra: str | None = None) -> str:
    parts = [f"<NIC_ID>{nic_id}</NIC_ID>", "<NETWORK_ID>0</NETWORK_ID>",
             f"<VN_MAD>{vn_mad}</VN_MAD>", "<BRIDGE>br0</BRIDGE>"]
    parts += [f"<{tag}>{value}</{tag}>" for tag, value in
              (("MAC", mac), ("TARGET", target), ("IP", ip), ("EXTRA_AUTHORIZED_MACS", extra))
              if value is not None]
    return "<NIC>" + "".join(parts) + "</NIC>"


def vm_xml(vmid: int, nics: list[str], user_extra: str | None = None) -> str:
    user = (f"<EXTRA_AUTHORIZED_MACS>{user_extra}</EXTRA_AUTHORIZED_MACS>"
            if user_extra else "")
    return (f"<VM><ID>{vmid}</ID><NAME>vm{vmid}</NAME><STATE>3</STATE><LCM_STATE>3</LCM_STATE>"
            f"<TEMPLATE>{''.join(nics)}</TEMPLATE><USER_TEMPLATE>{user}</USER_TEMPLATE>"
            "<HISTORY_RECORDS><HISTORY><HOSTNAME>node1</HOSTNAME></HISTORY></HISTORY_RECORDS>"
            "</VM>")


def machine_xml(machine: Machine, vn_mad: str = "bridge") -> str:
    """A's VMs get the service's MAC as extra: VM-wide for A1, in the NIC for A2."""
    nic = nic_xml(0, machine.mac, machine.tap, machine.ip, vn_mad,
                  extra=SVC.mac if machine is A2 else None)
    return vm_xml(machine.vmid, [nic], user_extra=SVC.mac if machine is A1 else None)


@dataclass
class Remotes:
    """A remotes tree like /var/tmp/one on a hypervisor, with the repo's launcher."""

    root: Path
    lab: Lab
    backend: str
    ebtables: str = "ebtables"  # the flavour whose tables ruleset() lists

    @classmethod
    def build(cls, root: Path, lab: Lab, backend: str) -> Remotes:
        (root / "vaf").symlink_to(REPO / "remotes" / "vaf")
        for kind, driver, names in (("hooks", "ebtables", ["vaf-isolation",
                                                           "vaf-isolation-sweep"]),
                                    ("vnm", "vaf_isolation", ["pre", "post", "clean"])):
            (root / kind / driver).mkdir(parents=True)
            for name in names:
                (root / kind / driver / name).symlink_to("../../vaf/dispatch")
            conf = root / "etc" / kind / driver / f"{driver}.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(f"BACKEND={backend}\nVN_MADS=bridge vaf_isolation\n")
        return cls(root, lab, backend)

    def execute(self, relative: str, args: list[str], stdin: str | None = None,
                env: tuple[str, ...] = ()) -> Result:
        argv = ["env", *env, str(self.root / relative), *args]
        return self.lab.run(self.lab.host, argv, check=False, input=stdin)

    def hook(self, xml: str, mode: str, **kwargs) -> Result:
        return self.execute("hooks/ebtables/vaf-isolation", [encode_payload(xml), mode],
                            **kwargs)

    def shim(self, tmp: Path) -> Path:
        """A second remotes tree for the oned harness, whose executables enter the lab's
        host namespace and exec the real ones (the harness runs them in its own)."""
        for relative in ("vnm/vaf_isolation/post", "vnm/vaf_isolation/clean",
                         "hooks/ebtables/vaf-isolation"):
            path = tmp / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\nexec ip netns exec " + self.lab.host + " "
                            + str(self.root / relative) + ' "$@"\n')
            path.chmod(0o755)
        return tmp

    def isolate(self, *machines: Machine) -> None:
        for machine in machines:
            result = self.hook(machine_xml(machine), "apply")
            assert result.returncode == 0, result.stderr

    def sweep(self) -> Result:
        return self.execute("hooks/ebtables/vaf-isolation-sweep", [])

    def ruleset(self) -> str:
        command = (["nft", "list", "ruleset"] if self.backend == "nft"
                   else [self.ebtables, "--concurrent", "-L"])
        return self.lab.run(self.lab.host, command).stdout


@pytest.fixture
def lab():
    lab = Lab()
    try:
        lab.start()
        for machine in (*VMS, SVC):
            lab.add_machine(machine.name, machine.tap, machine.mac, f"{machine.ip}/16")
        yield lab
    finally:
        lab.close()


@pytest.fixture(params=BACKENDS)
def remotes(request, tmp_path, lab, oned_runtime, oned_logs) -> Remotes:
    missing = lab.missing_kernel_support(request.param)
    if missing:
        pytest.skip(missing)
    built = Remotes.build(tmp_path, lab, request.param)
    oned.write_version_file(built.root)  # each test runs under both runtimes (conftest.py)
    oned_logs.configure(built.root, front_end=False)
    return built


def reasons(result: Result) -> list[str]:
    """The untagged stderr lines: what oned turns into the failure reason."""
    tags = ("ERROR: ", "WARN: ", "INFO: ", "DEBUG: ")
    return [line for line in result.stderr.splitlines()
            if line.strip() and not line.startswith(tags)]


def reachability(lab: Lab, pairs) -> dict[str, bool]:
    return {f"{src.name}->{dst.name}": lab.ping(src.name, dst.ip) for src, dst in pairs}


# -- traffic --------------------------------------------------------------------------------

def test_clusters_are_isolated_but_reach_their_service(lab, remotes):
    assert lab.ping(A1.name, B1.ip), "control: without rules the bridge connects everybody"
    remotes.isolate(*VMS)
    expected = {"a1->a2": True, "a2->a1": True,  # broadcast ARP and unicast inside A
                "a1->svc": True, "svc->a2": True,  # the extra authorized MAC
                "a1->b1": False, "b1->a2": False,  # between clusters
                "b1->svc": False, "svc->b1": False}  # B has no extra MAC
    pairs = [(A1, A2), (A2, A1), (A1, SVC), (SVC, A2), (A1, B1), (B1, A2), (B1, SVC),
             (SVC, B1)]
    assert reachability(lab, pairs) == expected


def test_spoofed_source_mac_is_dropped(lab, remotes):
    remotes.isolate(*VMS)
    lab.set_mac(A1.name, UNUSED_A_MAC)  # inside A's range: only the port's own MAC is allowed
    assert reachability(lab, [(A1, A2), (A1, SVC)]) == {"a1->a2": False, "a1->svc": False}
    lab.set_mac(A1.name, A1.mac)
    assert lab.ping(A1.name, A2.ip)


def test_spoofed_arp_is_dropped(lab, remotes):
    remotes.isolate(*VMS)
    frames = [arp_frame(A1.mac, A1.mac, A1.ip, "10.0.1.200"),  # honest
              arp_frame(A1.mac, UNUSED_A_MAC, A1.ip, "10.0.1.200"),  # claims another MAC
              arp_frame(A1.mac, A1.mac, A2.ip, "10.0.1.200"),  # claims A2's address
              arp_frame(A1.mac, A1.mac, "0.0.0.0", "10.0.1.200")]  # RFC 5227 probe
    assert lab.frames_received(A1.name, A2.name, frames) == [True, False, False, True]


def test_broadcast_stays_inside_the_cluster(lab, remotes):
    remotes.isolate(*VMS)
    hello_a = arp_frame(A1.mac, A1.mac, A1.ip, "10.0.1.200")
    hello_b = arp_frame(B1.mac, B1.mac, B1.ip, "10.0.2.200")
    assert lab.frames_received(A1.name, A2.name, [hello_a]) == [True]
    assert lab.frames_received(A1.name, B1.name, [hello_a]) == [False]
    assert lab.frames_received(B1.name, A1.name, [hello_b]) == [False]


def test_concurrent_applies_all_land(lab, remotes):
    """Hooks of several VMs run at once (oned starts them in parallel): none is lost."""
    machines = [Machine(f"c{i}", 50 + i, f"02:00:0a:00:03:{i:02x}", f"10.0.3.{i}")
                for i in range(1, 7)]
    with ThreadPoolExecutor(len(machines)) as pool:
        results = list(pool.map(lambda m: remotes.hook(machine_xml(m), "apply"), machines))
    assert [r.returncode for r in results] == [0] * len(machines), [r.stderr for r in results]
    rules = remotes.ruleset()
    assert all(machine.tap in rules for machine in machines)


def test_admin_command_shows_and_sweeps(lab, remotes):
    remotes.isolate(A1, A2)
    lab.remove_port(A2.tap)
    conf = str(remotes.root / "etc/vnm/vaf_isolation/vaf_isolation.conf")

    def vaf(*args: str) -> Result:
        code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from vaf.cli import main; main()"
        return lab.run(lab.host, [sys.executable, "-c", code, "isolation", *args,
                                  "--remotes", str(remotes.root), "--conf", conf])

    shown = vaf("show").stdout
    assert f"backend: {remotes.backend}" in shown
    assert f"isolated taps: {A1.tap} {A2.tap}" in shown
    assert vaf("sweep").stdout.strip() == A2.tap
    assert f"isolated taps: {A1.tap}\n" in vaf("show").stdout


# -- rule life cycle ------------------------------------------------------------------------

def test_apply_twice_changes_nothing(lab, remotes):
    remotes.isolate(*VMS)
    before = remotes.ruleset()
    remotes.isolate(A1)
    assert remotes.ruleset() == before


def test_clean_removes_exactly_that_vm(lab, remotes):
    remotes.isolate(*VMS)
    for _ in range(2):  # a second clean finds nothing and succeeds
        result = remotes.hook(machine_xml(A1), "clean")
        assert result.returncode == 0, result.stderr
    rules = remotes.ruleset()
    assert A1.tap not in rules
    assert A2.tap in rules and B1.tap in rules
    assert reachability(lab, [(A2, SVC), (A2, B1)]) == {"a2->svc": True, "a2->b1": False}


def test_clean_finds_the_vm_taps_the_template_no_longer_lists(lab, remotes):
    """A NIC detached while the driver was not told still has rules: clean removes every
    one-<vmid>-<n>, and only those (one-110-0 belongs to VM 110, not 11)."""
    nics = [nic_xml(0, A1.mac, A1.tap), nic_xml(1, "02:00:0a:00:01:15", "one-11-1")]
    other = vm_xml(110, [nic_xml(0, "02:00:0a:00:01:16", "one-110-0")])
    for xml in (vm_xml(11, nics), other):
        assert remotes.hook(xml, "apply").returncode == 0
    result = remotes.hook(vm_xml(11, nics[:1]), "clean")
    assert "removed the rules of one-11-0, one-11-1" in result.stderr
    rules = remotes.ruleset()
    assert "one-11-" not in rules and "one-110-0" in rules


@pytest.mark.parametrize("remotes", ["ebtables"], indirect=True)  # nft: one transaction
def test_apply_after_a_clean_interrupted_half_way(lab, remotes):
    """ebtables clean is two batches (jumps, then chains): a crash in between must not make
    the next apply fail or leave the port unfiltered."""
    remotes.isolate(*VMS)
    lab.run(lab.host, ["ebtables-restore", "--noflush"], input=unhook_batch([A1.tap]))
    lab.set_mac(A1.name, UNUSED_A_MAC)
    assert lab.ping(A1.name, SVC.ip)  # the half-cleaned port is unfiltered: spoofing works
    remotes.isolate(A1)
    assert f"-i {A1.tap} -j VAF-O-{A1.tap}" in remotes.ruleset()
    assert not lab.ping(A1.name, SVC.ip)
    lab.set_mac(A1.name, A1.mac)
    assert reachability(lab, [(A1, B1), (A1, A2)]) == {"a1->b1": False, "a1->a2": True}


def test_sweep_removes_the_rules_of_vanished_taps(lab, remotes):
    remotes.isolate(*VMS)
    lab.remove_port(A2.tap)  # the VM died and nobody ran clean
    result = remotes.sweep()
    assert result.returncode == 0, result.stderr
    assert f"removed the rules of 1 vanished taps: {A2.tap}" in result.stderr
    rules = remotes.ruleset()
    assert A2.tap not in rules
    assert A1.tap in rules and B1.tap in rules
    assert not lab.ping(A1.name, B1.ip)


# -- bad input: one reason line, non-zero exit, nothing touched -------------------------------

BAD_INPUT = {
    "bad MAC": vm_xml(30, [nic_xml(0, "02:00:0a:00:01:zz", "one-30-0")]),
    "missing TARGET": vm_xml(30, [nic_xml(0, "02:00:0a:00:01:08", None)]),
    "bad extra MAC": vm_xml(30, [nic_xml(0, "02:00:0a:00:01:08", "one-30-0")], "02:00:0a"),
    "tap name with a wildcard": vm_xml(30, [nic_xml(0, "02:00:0a:00:01:08", "one+")]),
    "malformed XML": "<VM><ID>30</ID><TEMPLATE>",
}
# lxml parses a DTD without resolving it; the stdlib fallback refuses any (see vaf/one/xml.py)
WITH_DTD = '<!DOCTYPE VM [<!ENTITY x "y">]><VM><ID>30</ID></VM>'


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_with_one_reason_and_touches_nothing(lab, remotes, case):
    remotes.isolate(A1)
    before = remotes.ruleset()
    # one good NIC before the bad one: it must not be isolated either
    xml = BAD_INPUT[case].replace("<TEMPLATE>", "<TEMPLATE>" + nic_xml(
        1, "02:00:0a:00:01:09", "one-30-1"), 1)
    result = remotes.hook(xml, "apply")
    assert result.returncode != 0
    assert len(reasons(result)) == 1, result.stderr
    assert remotes.ruleset() == before


def test_hook_rejects_a_payload_that_is_not_base64(lab, remotes):
    result = remotes.execute("hooks/ebtables/vaf-isolation", ["not base64!", "apply"])
    assert result.returncode == 2
    assert len(reasons(result)) == 1 and "not valid base64" in reasons(result)[0]


# -- the VNM driver form and the hypervisor's python -----------------------------------------

def test_vnm_post_and_clean_isolate_the_nics_of_their_vn_mad(lab, remotes):
    xml = vm_xml(40, [nic_xml(0, A1.mac, A1.tap, A1.ip, vn_mad="vaf_isolation"),
                      nic_xml(1, "02:00:0a:00:05:05", "one-40-1", vn_mad="ovswitch")],
                 user_extra=SVC.mac)
    payload = encode_payload(xml) + "\n"
    assert remotes.execute("vnm/vaf_isolation/pre", [], stdin=payload).returncode == 0
    result = remotes.execute("vnm/vaf_isolation/post", ["deploy-uuid", "node1"], stdin=payload)
    assert result.returncode == 0, result.stderr
    # 6.10's ssh stream logs the line with the VM's id itself: no id in the line (vaf/one/log.py)
    vm = "40 " if oned.current_runtime() == "7.0" else ""
    assert f"INFO: {vm}vaf_isolation/post: isolated one-11-0" in result.stderr
    rules = remotes.ruleset()
    assert A1.tap in rules and "one-40-1" not in rules
    assert reachability(lab, [(A1, SVC), (A1, B1)]) == {"a1->svc": True, "a1->b1": False}
    result = remotes.execute("vnm/vaf_isolation/clean", ["node1"], stdin=payload)
    assert result.returncode == 0, result.stderr
    assert A1.tap not in remotes.ruleset()
    assert lab.ping(A1.name, B1.ip)


def test_vnm_clean_on_nic_detach_removes_only_that_nic(lab, remotes):
    nics = [nic_xml(0, A1.mac, A1.tap, vn_mad="vaf_isolation"),
            nic_xml(1, "02:00:0a:00:01:15", "one-11-1", vn_mad="vaf_isolation")]
    payload = encode_payload(vm_xml(11, nics))
    assert remotes.execute("vnm/vaf_isolation/post", ["d", "h"], stdin=payload).returncode == 0
    detach = nics[1].replace("</NIC>", "<ATTACH>YES</ATTACH></NIC>")
    result = remotes.execute("vnm/vaf_isolation/clean", ["h"],
                             stdin=encode_payload(vm_xml(11, [nics[0], detach])))
    assert result.returncode == 0, result.stderr
    rules = remotes.ruleset()
    assert "one-11-1" not in rules and A1.tap in rules


def test_host_side_runs_without_lxml(lab, remotes, tmp_path):
    """Hypervisors have Debian's python3 alone: the stdlib parser must serve the hook."""
    blocker = tmp_path / "blocked" / "lxml"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no lxml on a hypervisor')\n")
    env = (f"PYTHONPATH={blocker.parent}",)
    result = remotes.hook(machine_xml(A1), "apply", env=env)
    assert result.returncode == 0, result.stderr
    assert A1.tap in remotes.ruleset()
    result = remotes.hook(WITH_DTD, "apply", env=env)
    assert result.returncode == 2 and "DTD" in reasons(result)[0]


# -- as oned runs them (vaf/lab/oned.py) ----------------------------------------------

def test_oned_runs_the_vnm_driver_and_logs_into_the_vm(lab, remotes, tmp_path):
    shim = remotes.shim(tmp_path / "shim")
    xml = vm_xml(11, [nic_xml(0, A1.mac, A1.tap, A1.ip, vn_mad="vaf_isolation")])
    run = run_vnm_action("post", remotes=shim, vn_mad="vaf_isolation", vm_xml=xml,
                         args=("deploy-uuid", "node1"))
    assert run.ok, run.logs
    assert any(line.startswith("LOG I 11 vaf_isolation/post: isolated one-11-0")
               for line in run.logs), run.logs
    assert A1.tap in remotes.ruleset()
    run = run_vnm_action("clean", remotes=shim, vn_mad="vaf_isolation", vm_xml=xml,
                         args=("node1",))
    assert run.ok and A1.tap not in remotes.ruleset()


def test_oned_hook_failure_reason_is_one_clear_line(lab, remotes, tmp_path):
    shim = remotes.shim(tmp_path / "shim")
    before = remotes.ruleset()
    run = run_hook("ebtables/vaf-isolation", remotes=shim, extra_args=("apply",),
                   template_xml=vm_xml(30, [nic_xml(0, "02:00:0a:00:01:zz", "one-30-0")]))
    assert not run.ok and run.exit_code == 2
    assert run.reason == ("VM 30 NIC 0: MAC '02:00:0a:00:01:zz' is not a MAC address "
                          "(xx:xx:xx:xx:xx:xx)")
    assert remotes.ruleset() == before
