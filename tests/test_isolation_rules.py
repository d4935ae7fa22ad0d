"""Isolation rule builders and policy derivation: pure functions, table-driven."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_isolation import nic_xml, vm_xml

from vaf.config import DriverConfig
from vaf.drivers.isolation import (
    ACTIONS,
    VNM_ACTIONS,
    Settings,
    extra_macs,
    port_policy,
    selected_nics,
)
from vaf.errors import ConfigError, ProtocolError
from vaf.host import ebtables, nft
from vaf.host.netfilter import MacRange, PortPolicy, parse_mac, parse_macs, taps_of_vm
from vaf.one.dispatch import locate, resolve
from vaf.one.xml import VM, parse_xml, parse_xml_stdlib

POLICY = PortPolicy(tap="one-7-0", mac="02:00:0a:00:01:05", ip="10.0.1.5",
                    network="p02000a0001", ranges=(MacRange.prefix_of("02:00:0a:00:01:05"),),
                    extra_macs=("02:00:0a:00:09:09",))


@pytest.mark.parametrize("text, value", [
    ("02:00:0a:00:01:05", 0x02000A000105),
    ("2:0:a:0:1:5", 0x02000A000105),  # as ebtables -L prints it
    ("FF:FF:FF:FF:FF:FF", 0xFFFFFFFFFFFF),
])
def test_parse_mac(text, value):
    assert parse_mac(text) == value


@pytest.mark.parametrize("text", ["", "02:00:0a:00:01", "02:00:0a:00:01:05:06", "02-00-0a-00-01-05",
                                  "02:00:0a:00:01:zz", "020:00:0a:00:01:05", " ; rm -rf /"])
def test_parse_mac_refuses(text):
    with pytest.raises(ProtocolError, match="is not a MAC address"):
        parse_mac(text)


def test_parse_macs_normalizes_and_dedups():
    assert parse_macs("2:0:a:0:9:9, 02:00:0A:00:09:09 02:00:0a:00:09:0a", "x") == (
        "02:00:0a:00:09:09", "02:00:0a:00:09:0a")


@pytest.mark.parametrize("text, masks", [
    ("02:00:0a:00:01:00-02:00:0a:00:01:ff", [("02:00:0a:00:01:00", "ff:ff:ff:ff:ff:00")]),
    ("02:00:0a:00:01:05", [("02:00:0a:00:01:05", "ff:ff:ff:ff:ff:ff")]),
    ("02:00:0a:00:01:00-02:00:0a:00:02:ff", [("02:00:0a:00:01:00", "ff:ff:ff:ff:ff:00"),
                                             ("02:00:0a:00:02:00", "ff:ff:ff:ff:ff:00")]),
    ("02:00:0a:00:01:fe-02:00:0a:00:02:01", [("02:00:0a:00:01:fe", "ff:ff:ff:ff:ff:fe"),
                                             ("02:00:0a:00:02:00", "ff:ff:ff:ff:ff:fe")]),
    ("00:00:00:00:00:00-00:00:00:00:00:02", [("00:00:00:00:00:00", "ff:ff:ff:ff:ff:fe"),
                                             ("00:00:00:00:00:02", "ff:ff:ff:ff:ff:ff")]),
])
def test_mac_range_masks_cover_exactly(text, masks):
    mac_range = MacRange.parse(text)
    assert mac_range.masks() == masks
    covered = sum(1 << (48 - bin(parse_mac(mask)).count("1")) for _, mask in masks)
    assert covered == mac_range.last - mac_range.first + 1


def test_mac_range_refuses_reversed():
    with pytest.raises(ProtocolError, match="ends before it starts"):
        MacRange.parse("02:00:0a:00:01:ff-02:00:0a:00:01:00")


def test_prefix_range_is_the_first_five_octets():
    assert str(MacRange.prefix_of("02:00:0a:00:01:05")) == "02:00:0a:00:01:00-02:00:0a:00:01:ff"


def test_taps_of_vm_match_exactly():
    # OpenNebula's driver matched `\w+` and took "one" as the tap of every VM
    taps = {"one-1-0", "one-1-1", "one-10-0", "one-11-0", "one-1-0x", "xone-1-0", "one-1"}
    assert taps_of_vm(taps, 1) == {"one-1-0", "one-1-1"}


# -- ebtables ---------------------------------------------------------------------------------

def test_ebtables_first_apply_creates_dispatch_chain_and_jumps():
    lines = ebtables.apply_batch([POLICY], None).splitlines()
    fp = f"-s {ebtables.port_fingerprint(POLICY)} -j CONTINUE"
    icmpv6 = "-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type"
    assert lines == [
        "*filter",
        "-N VAF -P RETURN", "-I FORWARD 1 -j VAF", "-I INPUT 1 -j VAF",
        "-N VAF-O-one-7-0 -P RETURN",
        f"-A VAF-O-one-7-0 {fp}",
        "-A VAF-O-one-7-0 -p 802_1Q -j DROP",
        "-A VAF-O-one-7-0 -p 0x88a8 -j DROP",
        "-A VAF-O-one-7-0 -s ! 02:00:0a:00:01:05 -j DROP",
        "-A VAF-O-one-7-0 -p ARP --arp-mac-src ! 02:00:0a:00:01:05 -j DROP",
        "-A VAF-O-one-7-0 -p ARP --arp-ip-src 10.0.1.5 -j RETURN",
        "-A VAF-O-one-7-0 -p ARP --arp-ip-src 0.0.0.0 -j RETURN",
        "-A VAF-O-one-7-0 -p ARP -j DROP",
        f"-A VAF-O-one-7-0 {icmpv6} router-advertisement -j DROP",
        f"-A VAF-O-one-7-0 {icmpv6} redirect -j DROP",
        f"-A VAF-O-one-7-0 {icmpv6} router-solicitation -j DROP",
        f"-A VAF-O-one-7-0 {icmpv6} neighbour-solicitation -j DROP",
        f"-A VAF-O-one-7-0 {icmpv6} neighbour-advertisement -j DROP",
        "-N VAF-I-one-7-0 -P RETURN",
        f"-A VAF-I-one-7-0 {fp}",
        "-A VAF-I-one-7-0 -s 02:00:0a:00:01:00/ff:ff:ff:ff:ff:00 -j RETURN",
        "-A VAF-I-one-7-0 -s 02:00:0a:00:09:09 -j RETURN",
        "-A VAF-I-one-7-0 -j DROP",
        "-A VAF -i one-7-0 -j VAF-O-one-7-0",
        "-A VAF -o one-7-0 -j VAF-I-one-7-0"]


def test_ebtables_blocked_port_drops_everything():
    lines = ebtables.apply_batch([PortPolicy.blocking("one-7-0")], set()).splitlines()
    assert [line for line in lines if "CONTINUE" not in line] == [
        "*filter", "-N VAF-O-one-7-0 -P RETURN", "-A VAF-O-one-7-0 -j DROP",
        "-N VAF-I-one-7-0 -P RETURN", "-A VAF-I-one-7-0 -j DROP",
        "-A VAF -i one-7-0 -j VAF-O-one-7-0", "-A VAF -o one-7-0 -j VAF-I-one-7-0"]


@pytest.mark.parametrize("change", [
    {"extra_macs": ()}, {"extra_macs": ("02:00:0a:00:09:0a",)}, {"ip": None},
    {"ip": "10.0.1.6"}, {"mac": "02:00:0a:00:01:06"}, {"blocked": True}])
def test_ebtables_fingerprint_changes_with_any_rule(change):
    assert ebtables.port_fingerprint(replace(POLICY, **change)) != \
        ebtables.port_fingerprint(POLICY)


@pytest.mark.parametrize("listing, found", [
    ("Bridge chain: VAF-O-one-7-0, entries: 2, policy: RETURN\n-s a:b:c:d:e:f -j CONTINUE \n"
     "-s ! 2:0:a:0:1:5 -j DROP\n", "0a:0b:0c:0d:0e:0f"),
    ("Bridge chain: VAF-O-one-7-0, entries: 1, policy: RETURN\n-s ! 2:0:a:0:1:5 -j DROP\n",
     None),  # rules of an older vaf: rewritten once
])
def test_ebtables_installed_fingerprint(listing, found):
    assert ebtables.installed_fingerprint(listing) == found


@pytest.mark.parametrize("isolated, creates", [
    (set(), True),  # VAF exists, the port is new: chains and jumps created
    ({"one-7-0"}, False),  # re-apply: chains flushed and refilled, no second jump
])
def test_ebtables_reapply_refills_without_new_jumps(isolated, creates):
    lines = ebtables.apply_batch([POLICY], isolated).splitlines()
    assert ("-N VAF -P RETURN" in lines) is False
    assert ("-N VAF-I-one-7-0 -P RETURN" in lines) is creates
    assert ("-F VAF-I-one-7-0" in lines) is not creates
    assert ("-A VAF -o one-7-0 -j VAF-I-one-7-0" in lines) is creates


@pytest.mark.parametrize("listing, entries", [
    ("Bridge table: filter\n\nBridge chain: VAF-I-one-7-0, entries: 3, policy: RETURN\n"
     "-s 02:00:0a:00:01:00/ff:ff:ff:ff:ff:00 -j RETURN\n", 3),
    ("Bridge table: filter\n\nBridge chain: VAF-I-one-7-0, entries: 0, policy: RETURN\n", 0),
    ("", None),
])
def test_ebtables_chain_entries(listing, entries):
    assert ebtables.chain_entries(listing) == entries


def test_ebtables_without_ip_has_no_arp_ip_rules():
    policy = PortPolicy("one-7-0", POLICY.mac, None, POLICY.network, POLICY.ranges)
    assert not any("--arp-ip-src" in rule for rule in ebtables.out_rules(policy))


def test_ebtables_clean_batches():
    assert ebtables.unhook_batch(["one-7-0"]).splitlines()[1:] == [
        "-D VAF -i one-7-0 -j VAF-O-one-7-0", "-D VAF -o one-7-0 -j VAF-I-one-7-0",
        "-F VAF-O-one-7-0", "-F VAF-I-one-7-0"]
    assert ebtables.delete_chains_batch(ebtables.port_chains(["one-7-0"])).splitlines()[1:] \
        == ["-X VAF-I-one-7-0", "-X VAF-O-one-7-0"]


def test_ebtables_dispatch_listing_is_parsed_by_exact_names():
    listing = ("Bridge table: filter\n\nBridge chain: VAF, entries: 5, policy: RETURN\n"
               "-i one-7-0 -j VAF-O-one-7-0\n-o one-7-0 -j VAF-I-one-7-0\n"
               "-i one-70-0 -j VAF-O-one-70-0\n-o one-7-1 -j DROP\n-i x -j VAF-O-y\n")
    assert ebtables.parse_dispatch(listing) == {"one-7-0", "one-70-0"}
    assert ebtables.parse_chains(listing) == {"VAF"}


# -- nftables ---------------------------------------------------------------------------------

T = "bridge vaf_isolation"


def test_nft_port_elements():
    assert [(e.target, e.text) for e in nft.port_elements(POLICY)] == [
        ("ports", '"one-7-0"'),
        ("own_mac", '"one-7-0" . 02:00:0a:00:01:05'),
        ("own_lla", f'"one-7-0" . {0x02000a000105}'),
        ("extra", '"one-7-0" . 02:00:0a:00:09:09'),
        ("ip_ports", '"one-7-0"'),
        ("own_ip", '"one-7-0" . 10.0.1.5'),
        ("own_ip", '"one-7-0" . 0.0.0.0'),
        ("in_ports", '"one-7-0" : jump net_p02000a0001'),
        ("digests", f'"one-7-0" : {nft.port_digest(POLICY)}')]
    assert [(e.target, e.text) for e in nft.port_elements(replace(POLICY, tagged=True))
            if e.target == "tagged_ports"] == [("tagged_ports", '"one-7-0"')]
    blocked = PortPolicy.blocking("one-7-0")
    assert [(e.target, e.text) for e in nft.port_elements(blocked)] == [
        ("blocked", '"one-7-0"'), ("digests", f'"one-7-0" : {nft.port_digest(blocked)}')]


@pytest.mark.parametrize("change", [
    {"extra_macs": ()}, {"ip": None}, {"mac": "02:00:0a:00:01:06"}, {"tagged": True},
    {"network": "n3"}, {"blocked": True}])
def test_nft_port_digest_changes_with_any_element(change):
    assert nft.port_digest(replace(POLICY, **change)) != nft.port_digest(POLICY)


def test_nft_first_apply_builds_the_table_and_adds_only_elements_for_the_vm():
    lines = nft.Script().apply([POLICY], None).splitlines()
    assert f"add element {T} net_p02000a0001 {{ 02:00:0a:00:01:00-02:00:0a:00:01:ff }}" in lines
    assert f'add element {T} in_ports {{ "one-7-0" : jump net_p02000a0001 }}' in lines
    assert f'add element {T} digests {{ ":base" : {nft.base_digest()} }}' in lines
    network = nft.network_digest(POLICY.network, POLICY.ranges)
    assert f'add element {T} digests {{ ":p02000a0001" : {network} }}' in lines
    # nothing per VM but elements: no chain, set or rule named after the tap
    assert not [line for line in lines if "one-7-0" in line
                and not line.startswith(f"add element {T} ")]


def kernel_with(policy: PortPolicy) -> nft.Table:
    """The table as the kernel lists it after ``policy`` was applied."""
    return nft.Table(by_tap={policy.tap: nft.port_elements(policy)},
                     digests={":base": nft.base_digest(), policy.tap: nft.port_digest(policy),
                              f":{policy.network}": nft.network_digest(policy.network,
                                                                       policy.ranges)})


def test_nft_reapplying_the_same_policy_is_an_empty_transaction():
    assert nft.Script().apply([POLICY], kernel_with(POLICY)) == ""


def test_nft_revoking_an_extra_mac_deletes_exactly_that_element():
    revoked = replace(POLICY, extra_macs=())
    assert nft.Script().apply([revoked], kernel_with(POLICY)).splitlines() == [
        f'delete element {T} digests {{ "one-7-0" }}',
        f'delete element {T} extra {{ "one-7-0" . 02:00:0a:00:09:09 }}',
        f'add element {T} digests {{ "one-7-0" : {nft.port_digest(revoked)} }}']


def test_nft_upgrade_marks_taps_of_an_older_vaf_for_a_whole_read():
    older = nft.Table(by_tap={"one-8-0": [nft.Element("ports", '"one-8-0"')]})
    lines = nft.Script().apply([POLICY], older).splitlines()
    assert f'add element {T} digests {{ "one-8-0" : {nft.UNKNOWN} }}' in lines


def test_nft_moving_to_another_network_replaces_the_map_entry():
    other = replace(POLICY, network="n3", ranges=(MacRange.parse("02:00:0b:00:00:00"),))
    lines = nft.Script().apply([other], kernel_with(POLICY)).splitlines()
    assert lines.index(f'delete element {T} in_ports {{ "one-7-0" }}') < \
        lines.index(f'add element {T} in_ports {{ "one-7-0" : jump net_n3 }}')
    assert f"add chain {T} net_n3" in lines


def test_nft_script_size_does_not_depend_on_other_vms():
    other = PortPolicy("one-8-0", "02:00:0a:00:01:06", "10.0.1.6", POLICY.network,
                       POLICY.ranges, POLICY.extra_macs)
    assert len(nft.Script().apply([POLICY], None).splitlines()) == len(
        nft.Script().apply([other], kernel_with(POLICY)).splitlines()) + len(
        nft.Script().base()) + len(nft.Script().network(POLICY.network, POLICY.ranges))


def test_nft_table_listing_is_parsed_per_tap():
    listing = json.dumps({"nftables": [
        {"metainfo": {}},
        {"set": {"name": "ports", "elem": ["one-7-0", "one-8-0"]}},
        {"set": {"name": "own_mac", "elem": [{"concat": ["one-7-0", "02:00:0a:00:01:05"]}]}},
        {"set": {"name": "own_lla", "elem": [{"concat": ["one-7-0", 2199191027973]}]}},
        {"set": {"name": "net_pa", "elem": [{"range": ["02:00:0a:00:01:00",
                                                       "02:00:0a:00:01:ff"]}]}},
        {"set": {"name": "net_pb"}},
        {"map": {"name": "in_ports",
                 "elem": [["one-7-0", {"jump": {"target": "net_pa"}}]]}},
        {"chain": {"name": "net_pa"}},
        {"map": {"name": "digests", "elem": [[":base", "02:00:00:00:00:01"],
                                             ["one-8-0", "02:00:00:00:00:02"]]}}]})
    table = nft.parse_table(listing)
    assert sorted(table.by_tap["one-7-0"]) == sorted([
        nft.Element("ports", '"one-7-0"'),
        nft.Element("own_mac", '"one-7-0" . 02:00:0a:00:01:05'),
        nft.Element("own_lla", '"one-7-0" . 2199191027973'),
        nft.Element("in_ports", '"one-7-0" : jump net_pa')])
    assert table.by_tap["one-8-0"] == [nft.Element("ports", '"one-8-0"'),
                                       nft.Element("digests", '"one-8-0" : 02:00:00:00:00:02')]
    assert (table.defined, table.used) == ({"pa", "pb"}, {"pa"})
    assert table.digests == {":base": "02:00:00:00:00:01", "one-8-0": "02:00:00:00:00:02"}


# -- policies from the VM template ---------------------------------------------------------------

def settings(**values) -> Settings:
    return Settings.from_config(DriverConfig(values, "test.conf"))


def vm(xml: str) -> VM:
    return VM.from_element(parse_xml(xml))


SERVICES = "02:00:0a:00:09:09 02:00:0a:00:09:0a"


def test_policy_defaults_to_the_mac_prefix_and_merges_allowed_extra_macs():
    nic = nic_xml(0, "02:00:0A:00:01:05", "one-7-0", "10.0.1.5",
                  extra="02:00:0a:00:09:0a,02:00:0a:00:09:09")
    machine = vm(vm_xml(7, [nic], user_extra="02:00:0a:00:09:09"))
    policy = port_policy(machine, machine.nics[0], settings(ALLOWED_EXTRA_MACS=SERVICES))
    assert policy == PortPolicy("one-7-0", "02:00:0a:00:01:05", "10.0.1.5", "p02000a0001",
                                (MacRange.prefix_of("02:00:0a:00:01:05"),),
                                ("02:00:0a:00:09:09", "02:00:0a:00:09:0a"))


@pytest.mark.parametrize("conf, nic_extra, user_extra, result", [
    # the admin's line for the network: every NIC of it, no template needed
    ({"NETWORK_EXTRA_MACS_0": "02:00:0a:00:09:09"}, None, None, ("02:00:0a:00:09:09",)),
    ({"NETWORK_EXTRA_MACS_5": "02:00:0a:00:09:09"}, None, None, ()),  # another network
    # a template may name only allowed MACs, in the VM or in a NIC
    ({"ALLOWED_EXTRA_MACS": SERVICES}, None, "02:00:0a:00:09:0a", ("02:00:0a:00:09:0a",)),
    ({"ALLOWED_EXTRA_MACS": SERVICES}, "02:00:0a:00:02:05", None, "does not list"),
    ({}, None, "02:00:0a:00:09:09", "names 02:00:0a:00:09:09, which the admin"),
    # NIC attributes are trusted only when the admin restricted them (TRUST_NIC_EXTRA_MACS)
    ({"TRUST_NIC_EXTRA_MACS": "YES"}, "02:00:0a:00:02:05", None, ("02:00:0a:00:02:05",)),
    ({"TRUST_NIC_EXTRA_MACS": "YES"}, None, "02:00:0a:00:02:05", "does not list"),
])
def test_extra_macs_come_from_trusted_places(conf, nic_extra, user_extra, result):
    nic = nic_xml(0, "02:00:0a:00:01:05", "one-7-0", extra=nic_extra)
    machine = vm(vm_xml(7, [nic], user_extra=user_extra))
    if isinstance(result, tuple):
        assert extra_macs(machine, machine.nics[0], settings(**conf)) == result
    else:
        with pytest.raises(ProtocolError, match=result):
            extra_macs(machine, machine.nics[0], settings(**conf))


@pytest.mark.parametrize("patterns, tap, owner", [
    ((), "one-7-0", (7, 0)), ((), "one-7-12", (7, 12)), ((), "one-07-0", None),
    ((), "one-7-0x", None), ((), "vaf7n0", None),
    (("vaf{vmid}n{nic}",), "vaf7n0", (7, 0)), (("vaf{vmid}n{nic}",), "one-7-0", (7, 0)),
    (("n{nic}-{vmid}",), "n3-7", (7, 3)),
])
def test_tap_names_say_whose_tap_it_is(patterns, tap, owner):
    assert settings(TAP_PATTERNS=" ".join(patterns)).tap_names.owner(tap) == owner


@pytest.mark.parametrize("pattern", ["vaf{vmid}", "x{nic}", "{vmid}{nic}{vmid}", "a+{vmid}{nic}"])
def test_tap_patterns_must_name_vm_and_nic(pattern):
    with pytest.raises(ConfigError, match="TAP_PATTERNS"):
        settings(TAP_PATTERNS=pattern)


def test_policy_uses_configured_ranges_of_its_network():
    machine = vm(vm_xml(7, [nic_xml(0, "02:00:0a:00:01:05", "one-7-0")]))  # NETWORK_ID 0
    conf = settings(NETWORK_MAC_RANGES_0="02:00:0a:00:01:00-02:00:0a:00:03:ff 02:00:0b:00:00:01")
    policy = port_policy(machine, machine.nics[0], conf)
    assert policy.network == "n0"
    assert [str(r) for r in policy.ranges] == ["02:00:0a:00:01:00-02:00:0a:00:03:ff",
                                               "02:00:0b:00:00:01"]


@pytest.mark.parametrize("values, message", [
    ({"NETWORK_MAC_RANGES_x": "02:00:0a:00:01:00"}, "expected NETWORK_MAC_RANGES_<network id>"),
    ({"NETWORK_MAC_RANGES_1": "02:00:0a"}, "is not a MAC address"),
    ({"NETWORK_MAC_RANGES_1": ""}, "lists no MAC range"),
    ({"BACKEND": "iptables"}, "must be one of ebtables, nft"),
    ({"TAGGED_NETWORKS": "3"}, "need BACKEND=nft"),
    ({"TAGGED_NETWORKS": "x", "BACKEND": "nft"}, "expected virtual network ids"),
    ({"ALLOWED_EXTRA_MACS": "02:00"}, "is not a MAC address"),
    ({"NETWORK_EXTRA_MACS_x": "02:00:0a:00:09:09"}, "expected NETWORK_EXTRA_MACS_"),
    # an older conf's programs: ignoring EBTABLES=ebtables-legacy would leave VMs unfiltered
    ({"EBTABLES": "ebtables-legacy", "EBTABLES_RESTORE": "ebtables-legacy-restore"},
     "^EBTABLES, EBTABLES_RESTORE in .*: the firewall commands are set in the host's "
     "/usr/lib/vaf/privileged.conf now"),
    ({"NFT": "/usr/sbin/nft", "BACKEND": "nft"}, "^NFT in "),
    ({"NFT_TABLE": "vaf isolation"}, "NFT_TABLE in .* must be 1 to 64 letters, digits or '_'"),
    ({"NFT_TABLE": "t;flush ruleset"}, "NFT_TABLE in "),
])
def test_bad_conf(values, message):
    with pytest.raises(ConfigError, match=message):
        settings(**values)


@pytest.mark.parametrize("nic, message", [
    (nic_xml(0, None, "one-7-0"), "MAC '' is not a MAC address"),
    (nic_xml(0, "02:00:0a:00:01:05", None), "has no TARGET"),
    (nic_xml(0, "02:00:0a:00:01:05", "-j ACCEPT"), "is not a usable interface name"),
    (nic_xml(0, "02:00:0a:00:01:05", "averyveryverylongtap"), "is not a usable interface"),
    (nic_xml(0, "02:00:0a:00:01:05", "one-7-0", "10.0.1"), "is not an IPv4 address"),
    (nic_xml(0, "02:00:0a:00:01:05", "one-7-0", extra="x"), "EXTRA_AUTHORIZED_MACS item"),
    (nic_xml(0, "02:00:0a:00:01:05", "one-8-0"), "TARGET one-8-0 is not this NIC's tap name"),
    (nic_xml(0, "02:00:0a:00:01:05", "one-7-1"), "is not this NIC's tap name \\(one-7-0"),
])
def test_bad_nic(nic, message):
    machine = vm(vm_xml(7, [nic]))
    with pytest.raises(ProtocolError, match=message):
        port_policy(machine, machine.nics[0], settings())


def test_selected_nics_by_vn_mad():
    machine = vm(vm_xml(7, [nic_xml(0, "02:00:0a:00:01:05", "one-7-0", vn_mad="bridge"),
                            nic_xml(1, "02:00:0a:00:01:06", "one-7-1", vn_mad="ovswitch")]))
    assert [n.nic_id for n in selected_nics(machine, ("bridge",))] == [0]
    assert [n.nic_id for n in selected_nics(machine, ())] == [0, 1]


# -- what ships: remotes files and hook templates ------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("relative", [
    *(f"vnm/vaf_isolation/{action}" for action in VNM_ACTIONS),
    "hooks/ebtables/vaf-isolation", "hooks/ebtables/vaf-isolation-sweep"])
def test_every_executable_is_the_launcher_and_is_served(relative):
    path = REPO / "remotes" / relative
    assert path.is_symlink() and path.resolve() == (REPO / "remotes/vaf/dispatch").resolve()
    inv = locate(str(path), [])
    assert resolve(inv) is ACTIONS[inv.action]


def hook_template(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


@pytest.mark.parametrize("path", sorted((REPO / "share/hooks").glob("vaf-isolation-*.hook")),
                         ids=lambda p: p.name)
def test_hook_templates_call_the_hook_remotely(path):
    template = hook_template(path)
    mode = "apply" if template["ON"] == "RUNNING" else "clean"
    assert template["TYPE"] == "state" and template["RESOURCE"] == "VM"
    assert template["REMOTE"] == "YES" and template["ARGUMENTS"] == f"$TEMPLATE {mode}"
    assert (REPO / "remotes/hooks" / template["COMMAND"]).is_symlink()


# -- the stdlib XML parser the hypervisors use -------------------------------------------------

def test_stdlib_parser_gives_the_same_views_as_lxml():
    nic = nic_xml(0, "02:00:0a:00:01:05", "one-7-0", "10.0.1.5", extra="02:00:0a:00:09:09")
    raw = vm_xml(7, [nic, "<!-- a comment -->", nic.replace("<NIC_ID>0", "<NIC_ID>1")],
                 user_extra="02:00:0a:00:09:0a").replace("<ID>7</ID>", "<ID> 7 </ID>\n  ")
    assert VM.from_element(parse_xml_stdlib(raw.encode())) == VM.from_element(parse_xml(raw))


@pytest.mark.parametrize("raw, message", [
    ('<!DOCTYPE VM [<!ENTITY x "y">]><VM><ID>1</ID><NAME>&x;</NAME></VM>', "DTD"),
    ('<!DOCTYPE VM SYSTEM "file:///etc/passwd"><VM><ID>1</ID></VM>', "DTD"),
    ("<VM><ID>1</ID><NAME>&x;</NAME></VM>", "undefined entity"),
    ("<VM><ID>1</ID>", "not well-formed"),
])
def test_stdlib_parser_refuses_dtds_and_bad_xml(raw, message):
    with pytest.raises(ProtocolError, match=message):
        parse_xml_stdlib(raw.encode())
