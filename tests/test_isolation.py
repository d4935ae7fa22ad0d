"""Ethernet isolation with real traffic: namespaces as VMs on a bridge, the real executables.

Cluster A (two VMs, MAC prefix 02:00:0a:00:01), cluster B (one VM, prefix 02:00:0a:00:02)
and a service host on the same bridge, all in 10.0.0.0/16 so that only the Ethernet rules
can keep them apart. The service's MAC is an extra authorized MAC of cluster A (VM-wide on
A1, per NIC on A2). Every scenario runs with both backends.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaf.host.ebtables import unhook_batch
from vaf.host.runner import Result
from vaf.lab import oned
from vaf.lab.netns import (
    NEIGHBOUR_ADVERTISEMENT,
    NEIGHBOUR_SOLICITATION,
    ROUTER_ADVERTISEMENT,
    Lab,
    arp_frame,
    ndp_frame,
    tagged,
)
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
    """A remotes tree like /var/tmp/one on a hypervisor, with the repo's launcher; its
    drivers reach root through ``privileged`` (vaf-privileged as ``install.sh host`` lays
    it out: the tests run as root, so the runner runs it without sudo)."""

    root: Path
    lab: Lab
    backend: str
    ebtables: str = "ebtables"  # the flavour whose tables ruleset() lists
    as_user: tuple[str, ...] = ()  # the prefix that runs the drivers as oneadmin, if any

    @classmethod
    def build(cls, root: Path, lab: Lab, backend: str, privileged: Path) -> Remotes:
        (root / "vaf").symlink_to(REPO / "remotes" / "vaf")
        for kind, driver, names in (("hooks", "ebtables", ["vaf-isolation",
                                                           "vaf-isolation-sweep"]),
                                    ("vnm", "vaf_isolation", ["pre", "post", "clean"])):
            (root / kind / driver).mkdir(parents=True)
            for name in names:
                (root / kind / driver / name).symlink_to("../../vaf/dispatch")
            conf = root / "etc" / kind / driver / f"{driver}.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(f"BACKEND={backend}\nVN_MADS=bridge vaf_isolation\n"
                            f"ALLOWED_EXTRA_MACS={SVC.mac}\nPRIVILEGED={privileged}\n")
        return cls(root, lab, backend)

    def configure(self, **values: str) -> None:
        """Add ``KEY=value`` lines to both conf files (hook and driver)."""
        for kind, driver in (("hooks", "ebtables"), ("vnm", "vaf_isolation")):
            conf = self.root / "etc" / kind / driver / f"{driver}.conf"
            conf.write_text(conf.read_text() + "".join(f'{key}="{value}"\n'
                                                       for key, value in values.items()))

    def execute(self, relative: str, args: list[str], stdin: str | None = None,
                env: tuple[str, ...] = ()) -> Result:
        argv = [*self.as_user, "env", *env, str(self.root / relative), *args]
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

    def vnm(self, action: str, xml: str, *args: str) -> Result:
        return self.execute(f"vnm/vaf_isolation/{action}", list(args),
                            stdin=encode_payload(xml) + "\n")

    def sweep(self) -> Result:
        return self.execute("hooks/ebtables/vaf-isolation-sweep", [])

    def ruleset(self) -> str:
        command = (["nft", "list", "ruleset"] if self.backend == "nft"
                   else [self.ebtables, "--concurrent", "-L", "--Lc"])
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
def remotes(request, tmp_path, lab, privileged_program, oned_runtime, oned_logs) -> Remotes:
    missing = lab.missing_kernel_support(request.param)
    if missing:
        pytest.skip(missing)
    built = Remotes.build(tmp_path, lab, request.param, privileged_program)
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


# -- every frame type ---------------------------------------------------------------------

def test_tagged_frames_from_a_vm_are_dropped(lab, remotes):
    """A VLAN tag must not carry a spoofed ARP (or anything) past the checks."""
    remotes.isolate(*VMS)
    def honest(target: str) -> bytes:  # distinct targets: each frame is recognisable
        return arp_frame(A1.mac, A1.mac, A1.ip, target)

    def spoofed(target: str) -> bytes:
        return arp_frame(A1.mac, UNUSED_A_MAC, A2.ip, target)

    frames = [honest("10.0.1.200"), tagged(honest("10.0.1.201"), 5),
              tagged(spoofed("10.0.1.202"), 5), tagged(spoofed("10.0.1.203"), 5, 0x88a8),
              tagged(tagged(spoofed("10.0.1.204"), 5), 6)]
    assert lab.frames_received(A1.name, A2.name, frames) == [True, False, False, False, False]


@pytest.mark.parametrize("remotes", ["nft"], indirect=True)  # ebtables refuses such a network
def test_a_network_meant_for_tags_passes_them_with_the_same_checks(lab, remotes):
    remotes.configure(TAGGED_NETWORKS="0")
    remotes.isolate(*VMS)
    frames = [tagged(arp_frame(A1.mac, A1.mac, A1.ip, "10.0.1.200"), 5),
              tagged(arp_frame(A1.mac, UNUSED_A_MAC, A1.ip, "10.0.1.201"), 5),  # sender MAC
              tagged(arp_frame(A1.mac, A1.mac, A2.ip, "10.0.1.202"), 5),  # sender IP
              tagged(ndp_frame(A1.mac, NEIGHBOUR_ADVERTISEMENT, UNUSED_A_MAC), 5),
              # a second tag is never allowed
              tagged(tagged(arp_frame(A1.mac, A1.mac, A1.ip, "10.0.1.203"), 5), 6)]
    assert lab.frames_received(A1.name, A2.name, frames) == [True, False, False, False, False]
    assert lab.frames_received(B1.name, A2.name, [tagged(arp_frame(
        B1.mac, B1.mac, B1.ip, "10.0.1.200"), 5)]) == [False]  # still another cluster


def test_ebtables_refuses_a_network_meant_for_tags(lab, remotes):
    if remotes.backend != "ebtables":
        pytest.skip("nft serves tagged networks")
    remotes.configure(TAGGED_NETWORKS="0")
    result = remotes.hook(machine_xml(A1), "apply")
    assert result.returncode == 2 and "need BACKEND=nft" in reasons(result)[0]


def test_neighbour_discovery_cannot_claim_another_link_address(lab, remotes):
    """NS/NA whose link-layer address option is not the VM's, and RAs, never leave a VM."""
    remotes.isolate(*VMS)
    frames = {"NA with own MAC": ndp_frame(A1.mac, NEIGHBOUR_ADVERTISEMENT, A1.mac),
              "NS with own MAC": ndp_frame(A1.mac, NEIGHBOUR_SOLICITATION, A1.mac),
              "NS without option (DAD)": ndp_frame(A1.mac, NEIGHBOUR_SOLICITATION,
                                                   src_ip="::", dst_ip="ff02::1:ff00:1"),
              "NA for another MAC": ndp_frame(A1.mac, NEIGHBOUR_ADVERTISEMENT, UNUSED_A_MAC),
              "NS for another MAC": ndp_frame(A1.mac, NEIGHBOUR_SOLICITATION, B1.mac),
              "NA, second option lies": _with_second_option(ndp_frame(
                  A1.mac, NEIGHBOUR_ADVERTISEMENT, A1.mac, target="fe80::2"), UNUSED_A_MAC),
              "RA": ndp_frame(A1.mac, ROUTER_ADVERTISEMENT, A1.mac)}
    sent = list(frames.values())
    received = dict(zip(frames, lab.frames_received(A1.name, A2.name, sent), strict=True))
    honest = remotes.backend == "nft"  # ebtables cannot read ICMPv6 options: drops all NDP
    assert received == {"NA with own MAC": honest, "NS with own MAC": honest,
                        "NS without option (DAD)": honest, "NA for another MAC": False,
                        "NS for another MAC": False, "NA, second option lies": False,
                        "RA": False}


def _with_second_option(frame: bytes, mac: str) -> bytes:
    """An NDP frame with one more target link-layer option (payload length and checksum
    left for the filter to judge: a filter must not parse past what it checks)."""
    option = bytes([2, 1]) + bytes.fromhex(mac.replace(":", ""))
    length = int.from_bytes(frame[18:20], "big") + len(option)
    return frame[:18] + length.to_bytes(2, "big") + frame[20:] + option


# -- state: the kernel is the truth ------------------------------------------------------------

def test_reapplying_an_unchanged_rule_set_keeps_the_counters(lab, remotes):
    remotes.isolate(*VMS)
    spoofed = arp_frame(A1.mac, UNUSED_A_MAC, A1.ip, "10.0.1.200")
    assert lab.frames_received(A1.name, A2.name, [spoofed] * 3) == [False] * 3
    before = remotes.ruleset()
    counted = r"pcnt = [1-9]" if remotes.backend == "ebtables" else r"packets [1-9]"
    assert re.search(counted, before), "control: the drops were counted"
    remotes.isolate(*VMS)
    assert remotes.ruleset() == before


def test_removing_an_extra_mac_removes_it_after_a_remotes_sync(lab, remotes, privileged_program,
                                                              tmp_path_factory):
    """onehost sync --delete replaces the remotes tree: vaf keeps nothing there, and a
    revoked extra MAC is gone whatever happened before."""
    files_before = sorted(str(path) for path in remotes.root.rglob("*"))
    remotes.isolate(A1)
    assert lab.ping(A1.name, SVC.ip)
    assert sorted(str(path) for path in remotes.root.rglob("*")) == files_before
    synced = Remotes.build(tmp_path_factory.mktemp("synced"), lab, remotes.backend,
                           privileged_program)
    without = vm_xml(A1.vmid, [nic_xml(0, A1.mac, A1.tap, A1.ip)])
    assert synced.hook(without, "apply").returncode == 0
    assert reachability(lab, [(A1, SVC), (SVC, A1), (A1, A2)]) == {
        "a1->svc": False, "svc->a1": False, "a1->a2": True}


def test_one_line_of_conf_gives_a_whole_network_its_service(lab, remotes):
    """NETWORK_EXTRA_MACS_<id>: every VM of the network reaches the service, no template
    has to ask."""
    remotes.configure(NETWORK_EXTRA_MACS_0=SVC.mac, ALLOWED_EXTRA_MACS="")
    for machine in VMS:
        xml = vm_xml(machine.vmid, [nic_xml(0, machine.mac, machine.tap, machine.ip)])
        assert remotes.hook(xml, "apply").returncode == 0
    assert reachability(lab, [(A1, SVC), (SVC, B1), (A1, B1)]) == {
        "a1->svc": True, "svc->b1": True, "a1->b1": False}
    result = remotes.hook(machine_xml(A1), "apply")  # A1's template asks for SVC: not allowed
    assert result.returncode != 0 and "ALLOWED_EXTRA_MACS does not list" in reasons(result)[0]


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


def test_clean_with_a_changed_template_removes_what_the_port_really_has(lab, remotes):
    remotes.isolate(A1, A2)  # A1 got SVC's MAC from its template
    changed = vm_xml(A1.vmid, [nic_xml(0, A1.mac, A1.tap, "10.0.1.99")])  # no extra, new IP
    assert remotes.hook(changed, "clean").returncode == 0
    rules = remotes.ruleset()
    assert A1.tap not in rules and A2.tap in rules  # not one element of A1's is left


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


def test_a_network_swept_away_comes_back_with_its_next_vm(lab, remotes):
    remotes.isolate(*VMS)
    lab.remove_port(B1.tap)  # the only VM of network B
    assert remotes.sweep().returncode == 0
    b2 = Machine("b2", 22, "02:00:0a:00:02:06", "10.0.2.6")
    lab.add_machine(b2.name, b2.tap, b2.mac, f"{b2.ip}/16")
    remotes.isolate(b2)
    assert reachability(lab, [(b2, A1), (A1, b2)]) == {"b2->a1": False, "a1->b2": False}
    assert lab.frames_received(A1.name, b2.name, [arp_frame(
        A1.mac, A1.mac, A1.ip, "10.0.2.200")]) == [False]


# -- bad input: one reason line, non-zero exit; the hook fails closed ------------------------

def a1_with(nic: str | None = None, user_extra: str | None = None) -> str:
    return vm_xml(A1.vmid, [nic or nic_xml(0, A1.mac, A1.tap, A1.ip)], user_extra)


BAD_INPUT = {
    "bad MAC": a1_with(nic_xml(0, "02:00:0a:00:01:zz", A1.tap)),
    "missing TARGET": a1_with(nic_xml(0, A1.mac, None)),
    "bad extra MAC": a1_with(user_extra="02:00:0a"),
    "extra MAC the admin did not allow": a1_with(user_extra=B1.mac),
    "NIC extra MAC the admin did not allow": a1_with(nic_xml(0, A1.mac, A1.tap, extra=B1.mac)),
    "tap name with a wildcard": a1_with(nic_xml(0, A1.mac, "one+")),
    "TARGET naming another VM's tap": a1_with(nic_xml(0, A1.mac, A2.tap)),
    "TARGET naming another NIC of the VM": a1_with(nic_xml(0, A1.mac, "one-11-1")),
}
# lxml parses a DTD without resolving it; the stdlib fallback refuses any (see vaf/one/xml.py)
WITH_DTD = '<!DOCTYPE VM [<!ENTITY x "y">]><VM><ID>30</ID></VM>'


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_hook_blocks_a_vm_whose_rules_cannot_be_built(lab, remotes, case):
    """The VM runs when the hook runs: bad input must leave its tap dropping everything,
    say why in one line, and touch no other VM's rules."""
    remotes.isolate(A2, B1)
    others = {f"{m.tap}": m for m in (A2, B1)}
    assert lab.ping(A1.name, A2.ip), "control: A1 is not isolated yet"
    result = remotes.hook(BAD_INPUT[case], "apply")
    assert result.returncode != 0
    assert len(reasons(result)) == 1, result.stderr
    assert f"every frame of {A1.tap} is dropped" in reasons(result)[0]
    assert reachability(lab, [(A1, A2), (A2, A1), (A1, SVC), (SVC, A1)]) == {
        "a1->a2": False, "a2->a1": False, "a1->svc": False, "svc->a1": False}
    assert reachability(lab, [(A2, SVC), (A2, B1)]) == {"a2->svc": True, "a2->b1": False}
    assert all(tap in remotes.ruleset() for tap in others)
    remotes.isolate(A1)  # a good apply replaces the block
    assert reachability(lab, [(A1, A2), (A1, B1)]) == {"a1->a2": True, "a1->b1": False}


def test_hook_block_is_removed_by_clean(lab, remotes):
    remotes.hook(BAD_INPUT["bad MAC"], "apply")
    assert not lab.ping(A1.name, A2.ip)
    assert remotes.hook(BAD_INPUT["bad MAC"], "clean").returncode == 0
    assert A1.tap not in remotes.ruleset() and lab.ping(A1.name, A2.ip)


def test_hook_without_a_vm_fails_with_one_reason(lab, remotes):
    remotes.isolate(A2)
    before = remotes.ruleset()
    result = remotes.hook("<VM><ID>30</ID><TEMPLATE>", "apply")
    assert result.returncode == 2 and len(reasons(result)) == 1, result.stderr
    assert remotes.ruleset() == before


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_vnm_post_with_bad_input_fails_and_touches_nothing(lab, remotes, case):
    """The driver is synchronous: the deploy fails instead, nothing is half-done."""
    remotes.isolate(A2, B1)
    before = remotes.ruleset()
    xml = BAD_INPUT[case].replace("<VN_MAD>bridge", "<VN_MAD>vaf_isolation")
    result = remotes.vnm("post", xml, "deploy-uuid", "node1")
    assert result.returncode != 0
    assert len(reasons(result)) == 1, result.stderr
    assert "dropped" not in reasons(result)[0]
    assert remotes.ruleset() == before


# -- one VM's actions never touch another VM's rules -------------------------------------------

def test_a_target_naming_another_vms_tap_cannot_remove_its_rules(lab, remotes):
    """VM 99 names A2's tap: its failed deploy's clean, its DONE hook and a detach of that
    NIC leave A2's rules alone."""
    remotes.isolate(A1, A2, B1)
    before = remotes.ruleset()
    nic = nic_xml(0, "02:00:0a:00:01:63", A2.tap, vn_mad="vaf_isolation")
    attacker = vm_xml(99, [nic])
    post = remotes.vnm("post", attacker, "deploy-uuid", "node1")
    assert post.returncode != 0 and f"TARGET {A2.tap} is not this NIC's tap" in post.stderr
    assert remotes.vnm("clean", attacker, "node1").returncode == 0  # oned cleans after it
    assert remotes.hook(attacker, "clean").returncode == 0  # the DONE hook
    detach = nic.replace("</NIC>", "<ATTACH>YES</ATTACH></NIC>")
    assert remotes.vnm("clean", vm_xml(99, [detach]), "node1").returncode == 0
    assert remotes.ruleset() == before
    lab.set_mac(A2.name, UNUSED_A_MAC)
    assert not lab.ping(A2.name, SVC.ip), "A2 is still filtered"


def test_admin_tap_patterns_tie_other_names_to_their_vm(lab, remotes):
    """TAP_PATTERNS admits other names, each naming its VM: vaf11n0 is VM 11's NIC 0."""
    remotes.configure(TAP_PATTERNS="vaf{vmid}n{nic}")
    lab.add_machine("custom", "vaf13n0", "02:00:0a:00:01:0d", "10.0.1.13/16")
    custom = Machine("custom", 13, "02:00:0a:00:01:0d", "10.0.1.13")
    xml = vm_xml(13, [nic_xml(0, custom.mac, "vaf13n0", custom.ip)])
    assert remotes.hook(xml, "apply").returncode == 0
    remotes.isolate(A1)
    assert reachability(lab, [(custom, A1), (custom, B1)]) == {"custom->a1": True,
                                                               "custom->b1": False}
    stranger = vm_xml(14, [nic_xml(0, "02:00:0a:00:01:0e", "vaf13n0")])
    assert remotes.hook(stranger, "clean").returncode == 0
    assert "vaf13n0" in remotes.ruleset()
    assert remotes.hook(xml, "clean").returncode == 0
    assert "vaf13n0" not in remotes.ruleset()


def test_hook_rejects_a_payload_that_is_not_base64(lab, remotes):
    result = remotes.execute("hooks/ebtables/vaf-isolation", ["not base64!", "apply"])
    assert result.returncode == 2
    assert len(reasons(result)) == 1 and "not valid base64" in reasons(result)[0]


# -- the VNM driver form and the hypervisor's python -----------------------------------------

def test_vnm_post_and_clean_isolate_the_nics_of_their_vn_mad(lab, remotes):
    xml = vm_xml(A1.vmid, [nic_xml(0, A1.mac, A1.tap, A1.ip, vn_mad="vaf_isolation"),
                           nic_xml(1, "02:00:0a:00:05:05", "one-11-1", vn_mad="ovswitch")],
                 user_extra=SVC.mac)
    payload = encode_payload(xml) + "\n"
    assert remotes.execute("vnm/vaf_isolation/pre", [], stdin=payload).returncode == 0
    result = remotes.execute("vnm/vaf_isolation/post", ["deploy-uuid", "node1"], stdin=payload)
    assert result.returncode == 0, result.stderr
    # 6.10's ssh stream logs the line with the VM's id itself: no id in the line (vaf/one/log.py)
    vm = "11 " if oned.current_runtime() == "7.0" else ""
    assert f"INFO: {vm}vaf_isolation/post: isolated one-11-0" in result.stderr
    rules = remotes.ruleset()
    assert A1.tap in rules and "one-11-1" not in rules
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
                          "(xx:xx:xx:xx:xx:xx); every frame of one-30-0 is dropped until its "
                          "rules can be built")
    assert remotes.ruleset() != before and "one-30-0" in remotes.ruleset()
