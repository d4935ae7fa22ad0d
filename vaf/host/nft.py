"""nftables (``bridge`` family) backend of Ethernet isolation.

One table, ``bridge vaf_isolation``. Its chains and sets exist once per host or once per
*network*, never once per VM; a VM is only set and map **elements** keyed by its tap::

    set ports        { type ifname }                 isolated taps
    set blocked      { type ifname }                 taps whose rules could not be built
    set tagged_ports { type ifname }                 taps of networks that carry 802.1Q tags
    set own_mac      { type ifname . ether_addr }    tap . the NIC's MAC
    set own_lla      { typeof iifname . @th,208,48 } tap . the NIC's MAC as NDP options hold it
    set ip_ports     { type ifname }                 isolated taps whose IP is known
    set own_ip       { type ifname . ipv4_addr }     tap . IP, tap . 0.0.0.0 (ARP probes)
    set extra        { type ifname . ether_addr }    tap . extra authorized MAC
    map in_ports     { type ifname : verdict }       tap -> jump net_<key>
    map digests      { type ifname : ether_addr }    tap, ":base", ":<key>" -> digest
    set net_<key>    { type ether_addr; flags interval }   a network's MAC ranges
    chain net_<key>  { ether saddr @net_<key> return; oifname . ether saddr @extra return; drop }
    chain forward    { hook forward; blocked taps drop; iifname @ports jump from_vm;
                       oifname vmap @in_ports }
    chain input      { hook input; blocked taps drop; iifname @ports jump from_vm }
    chain from_vm    { the anti-spoofing rules of FROM_VM_RULES }

Why elements only: nft fetches the table's chains and sets (and the elements of interval
sets) before every transaction, so per-VM chains or sets, or one big interval set, make each
update cost grow with the number of VMs (measured: 1,000 VMs with two chains and a set each
tripled the cost). Hash-set and map elements are cheap to add and to look up.

The kernel is the only state, nothing is kept in files. The ``digests`` map holds a 48-bit
digest (written as a MAC) of what each tap's elements are, of the fixed chains (``:base``)
and of each network's chain (``:<key>``), changed in the same transaction as what it
describes. Apply reads that map (small, one element per tap) and:

* leaves a tap, base or network whose digest is current alone (re-applying an unchanged
  rule set is no transaction at all, so the counters keep counting);
* adds a tap that has no digest: it has no element either;
* for a tap whose digest differs (its extra MACs or MAC changed), reads the whole table to
  learn the tap's real elements and deletes exactly those, so a revoked extra MAC goes
  whatever happened before.

A table of an older vaf (no ``digests``, or an old ``:base``) is read whole, and its taps get
the digest "unknown", which sends their next apply to the whole-table path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vaf.errors import VafError
from vaf.host.netfilter import (
    DEFAULT_TAP_NAMES,
    PortPolicy,
    TapNames,
    fingerprint,
    format_mac,
    parse_mac,
)
from vaf.host.netfilter_verbs import Firewall

TABLE = "vaf_isolation"
PRIORITY = "-200"  # the bridge family's "filter" priority
TAP_SETS = {"ports": "type ifname", "blocked": "type ifname", "tagged_ports": "type ifname",
            "ip_ports": "type ifname", "own_mac": "type ifname . ether_addr",
            "own_lla": "typeof iifname . @th,208,48",
            "extra": "type ifname . ether_addr", "own_ip": "type ifname . ipv4_addr"}
PROBE_IP = "0.0.0.0"  # RFC 5227: ARP probes before the guest uses its address
DIGESTS = "digests"
BASE_KEY = ":base"
UNKNOWN = "00:00:00:00:00:00"  # the digest of a tap whose elements must be read

# ICMPv6 neighbour discovery (RFC 4861). An NS or NA is 24 bytes of ICMPv6 plus options, an
# RS 8; a link-layer address option (type 1 source, 2 target) is 8 bytes: type, length, MAC.
# Accepted: no option, or exactly one option whose link-layer address is the port's MAC (any
# other single option, such as the DAD nonce, carries no address). Longer messages are
# dropped rather than parsed: a guest does not need them, and a second option could lie.
_ICMP6 = "meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type"
_NS_NA = f"{_ICMP6} {{ nd-neighbor-solicit, nd-neighbor-advert }}"
_RS = f"{_ICMP6} nd-router-solicit"
FROM_VM_RULES = [
    # tagged frames only from ports of networks meant to carry tags; the kernel took the
    # (outer) tag off before the bridge, so "meta protocol" below is the inner protocol and
    # the ARP and NDP checks hold for tagged frames too; a second tag is never allowed
    "ether type { 8021q, 8021ad } iifname != @tagged_ports counter drop",
    "meta protocol { 8021q, 8021ad } counter drop",
    "iifname . ether saddr != @own_mac counter drop",
    "meta protocol arp iifname . arp saddr ether != @own_mac counter drop",
    "meta protocol arp iifname @ip_ports iifname . arp saddr ip != @own_ip counter drop",
    f"{_ICMP6} {{ nd-router-advert, nd-redirect }} counter drop",  # VMs are not routers
    f"{_NS_NA} ip6 length != {{ 24, 32 }} counter drop",
    f"{_NS_NA} ip6 length 32 @th,192,8 {{ 1, 2 }} iifname . @th,208,48 != @own_lla "
    "counter drop",
    f"{_RS} ip6 length != {{ 8, 16 }} counter drop",
    f"{_RS} ip6 length 16 @th,64,8 1 iifname . @th,80,48 != @own_lla counter drop",
]
BLOCKED_RULES = ["iifname @blocked counter drop", "oifname @blocked counter drop"]
BASE_RULES = {"from_vm": FROM_VM_RULES,
              # INPUT too: a spoofed ARP or NA must not poison the hypervisor's own caches
              "forward": [*BLOCKED_RULES, "iifname @ports jump from_vm",
                          "oifname vmap @in_ports"],
              "input": [BLOCKED_RULES[0], "iifname @ports jump from_vm"]}


@dataclass(frozen=True, order=True)
class Element:
    """One element of a tap: the set (or map) it is in and its nft text."""

    target: str  # set or map name
    text: str  # '"one-7-0" . 02:00:0a:00:01:05' or '"one-7-0" : jump net_p02000a0001'

    @property
    def key(self) -> str:
        """What ``delete element`` takes: a map element without its value."""
        return self.text.split(" : ", 1)[0]


def port_elements(policy: PortPolicy) -> list[Element]:
    """The tap's elements, its digest included."""
    return [*_port_elements(policy), digest_element(policy.tap, port_digest(policy))]


def _port_elements(policy: PortPolicy) -> list[Element]:
    tap = f'"{policy.tap}"'
    if policy.blocked:
        return [Element("blocked", tap)]
    elements = [Element("ports", tap), Element("own_mac", f"{tap} . {policy.mac}"),
                Element("own_lla", f"{tap} . {parse_mac(policy.mac)}")]
    elements += [Element("extra", f"{tap} . {mac}") for mac in policy.extra_macs]
    if policy.tagged:
        elements.append(Element("tagged_ports", tap))
    if policy.ip:
        elements += [Element("ip_ports", tap), Element("own_ip", f"{tap} . {policy.ip}"),
                     Element("own_ip", f"{tap} . {PROBE_IP}")]
    elements.append(Element("in_ports", f"{tap} : jump net_{policy.network}"))
    return elements


def network_rules(key: str) -> list[str]:
    name = f"net_{key}"
    return [f"ether saddr @{name} return", "oifname . ether saddr @extra return",
            "counter drop"]


def digest_mac(lines: Iterable[str]) -> str:
    return format_mac(int(fingerprint(lines), 16))


def port_digest(policy: PortPolicy) -> str:
    return digest_mac(f"{e.target} {e.text}" for e in _port_elements(policy))


def digest_element(key: str, digest: str) -> Element:
    return Element(DIGESTS, f"{json.dumps(key)} : {digest}")


@dataclass(frozen=True)
class Script:
    """Builds the text of one ``nft -f`` transaction."""

    table: str = TABLE

    @property
    def t(self) -> str:
        return f"bridge {self.table}"

    def _rules(self, chain: str, rules: Sequence[str]) -> list[str]:
        t = self.t
        return [f"flush chain {t} {chain}"] + [f"add rule {t} {chain} {rule}" for rule in rules]

    def _digest(self, key: str, old: str | None, new: str) -> list[str]:
        return self.change([digest_element(key, old)] if old else [],
                           [digest_element(key, new)])

    def base(self, old_digest: str | None = None) -> list[str]:
        """Table, sets, maps and fixed chains (constant size: it does not grow with VMs)."""
        t = self.t
        lines = [f"add table {t}"]
        lines += [f"add set {t} {name} {{ {kind}; }}" for name, kind in TAP_SETS.items()]
        lines += [f"add map {t} in_ports {{ type ifname : verdict; }}",
                  f"add map {t} {DIGESTS} {{ type ifname : ether_addr; }}"]
        hook = "{{ type filter hook {} priority " + PRIORITY + "; policy accept; }}"
        lines += [f"add chain {t} from_vm",
                  f"add chain {t} forward " + hook.format("forward"),
                  f"add chain {t} input " + hook.format("input")]
        for chain, rules in BASE_RULES.items():
            lines += self._rules(chain, rules)
        return lines + self._digest(BASE_KEY, old_digest, base_digest())

    def network(self, key: str, ranges: Sequence, old_digest: str | None = None) -> list[str]:
        """A network's set and chain, rewritten only when its ranges changed."""
        t, name = self.t, f"net_{key}"
        elements = ", ".join(str(item) for item in ranges)
        return [f"add set {t} {name} {{ type ether_addr; flags interval; auto-merge; }}",
                f"flush set {t} {name}",
                f"add element {t} {name} {{ {elements} }}",
                f"add chain {t} {name}",
                *self._rules(name, network_rules(key)),
                *self._digest(f":{key}", old_digest, network_digest(key, ranges))]

    def change(self, old: Iterable[Element], new: Iterable[Element]) -> list[str]:
        """Turn the elements ``old`` (as the kernel has them) into ``new``."""
        t, old, new = self.t, set(old), set(new)
        lines = [f"delete element {t} {e.target} {{ {e.key} }}" for e in sorted(old - new)]
        return lines + [f"add element {t} {e.target} {{ {e.text} }}" for e in sorted(new - old)]

    def apply(self, policies: Sequence[PortPolicy], kernel: Table | None) -> str:
        """The transaction bringing ``policies`` about, given what the kernel has (the whole
        table, or only its digests when no tap to change has elements)."""
        kernel = kernel or Table()
        digests = kernel.digests
        lines = []
        if digests.get(BASE_KEY) != base_digest():
            lines += self.base(digests.get(BASE_KEY))
            # taps of an older vaf have no digest: mark them for a whole-table read
            lines += [f"add element {self.t} {DIGESTS} {{ {json.dumps(tap)} : {UNKNOWN} }}"
                      for tap in sorted(set(kernel.by_tap) - set(digests))]
        networks = {p.network: p.ranges for p in policies if not p.blocked}
        for key, ranges in sorted(networks.items()):
            if digests.get(f":{key}") != network_digest(key, ranges):
                lines += self.network(key, ranges, digests.get(f":{key}"))
        for policy in policies:
            if digests.get(policy.tap) != port_digest(policy):
                lines += self.change(kernel.by_tap.get(policy.tap, ()), port_elements(policy))
        return text(lines)

    def remove(self, old: dict[str, list[Element]]) -> str:
        return text([line for tap in sorted(old) for line in self.change(old[tap], ())])

    def delete_networks(self, keys: Iterable[str], digests: dict[str, str]) -> str:
        t = self.t
        lines = []
        for key in sorted(keys):
            lines += [f"flush chain {t} net_{key}", f"delete chain {t} net_{key}",
                      f"delete set {t} net_{key}"]
            if f":{key}" in digests:
                lines.append(f"delete element {t} {DIGESTS} {{ {json.dumps(':' + key)} }}")
        return text(lines)


def base_digest() -> str:
    return digest_mac([*(f"{c}: {r}" for c, rules in BASE_RULES.items() for r in rules),
                       *(f"{name} {kind}" for name, kind in TAP_SETS.items())])


def network_digest(key: str, ranges: Sequence) -> str:
    return digest_mac([*network_rules(key), *(str(item) for item in ranges)])


def text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# -- reading the table (sweep, show, and the rare apply or clean without a state file) ---------

def _element_text(item) -> str:
    """nft JSON of one element back to nft syntax."""
    if isinstance(item, dict) and "concat" in item:
        return " . ".join(_element_text(part) for part in item["concat"])
    if isinstance(item, dict) and "elem" in item:
        return _element_text(item["elem"]["val"])
    return json.dumps(item) if isinstance(item, str) and not _is_address(item) else str(item)


def _is_address(value: str) -> bool:
    return bool(re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$|^\d+\.\d+\.\d+\.\d+$", value))


def _tap_of(item) -> str | None:
    while isinstance(item, dict):
        item = item["concat"][0] if "concat" in item else item.get("elem", {}).get("val")
    return item if isinstance(item, str) else None


@dataclass
class Table:
    """What the kernel's table holds, as far as vaf cares."""

    by_tap: dict[str, list[Element]]
    defined: set[str]  # network keys with a set or chain net_<key>
    used: set[str]  # network keys some tap jumps to
    digests: dict[str, str]  # tap, ":base" or ":<key>" -> its digest

    def __init__(self, by_tap=None, defined=None, used=None, digests=None) -> None:
        self.by_tap = by_tap or {}
        self.defined = defined or set()
        self.used = used or set()
        self.digests = digests or {}


def parse_table(listing: str) -> Table:
    """From ``nft -j list table``: each tap's elements, the networks and the rule digests."""
    table = Table()
    for item in json.loads(listing).get("nftables", []):
        for kind in ("set", "chain", "map"):
            name = item.get(kind, {}).get("name", "")
            if name.startswith("net_"):
                table.defined.add(name[len("net_"):])
        if "map" in item and item["map"]["name"] == DIGESTS:
            table.digests = parse_digests(item)
            for key, digest in table.digests.items():
                if not key.startswith(":"):
                    table.by_tap.setdefault(key, []).append(digest_element(key, digest))
        elif "map" in item and item["map"]["name"] == "in_ports":
            for key, verdict in item["map"].get("elem", []):
                target = verdict["jump"]["target"]
                table.used.add(target[len("net_"):])
                table.by_tap.setdefault(key, []).append(
                    Element("in_ports", f"{json.dumps(key)} : jump {target}"))
        elif "set" in item and item["set"]["name"] in TAP_SETS:
            for element in item["set"].get("elem", []):
                tap = _tap_of(element)
                if tap is not None:
                    table.by_tap.setdefault(tap, []).append(
                        Element(item["set"]["name"], _element_text(element)))
    return table


def parse_digests(item: dict) -> dict[str, str]:
    """The ``digests`` map of a JSON listing item."""
    return {key: value for key, value in item["map"].get("elem", [])}


# -- the backend ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NftBackend:
    """The operations; every nft command runs as root through ``firewall`` (the
    ``isolation-nft-*`` verbs of vaf-privileged)."""

    firewall: Firewall
    table: str = TABLE

    name = "nft"

    @property
    def script(self) -> Script:
        return Script(self.table)

    def _run(self, script: str) -> None:
        if script:
            self.firewall.nft_apply(script)

    def _table(self) -> Table | None:
        result = self.firewall.nft_list(self.table, as_json=True, check=False)
        return parse_table(result.stdout) if result.returncode == 0 else None

    def _digests(self) -> dict[str, str] | None:
        """The ``digests`` map alone: one small element per tap, read instead of the table."""
        result = self.firewall.nft_list(self.table, DIGESTS, as_json=True, check=False)
        if result.returncode != 0:
            return None
        maps = [item for item in json.loads(result.stdout).get("nftables", []) if "map" in item]
        return parse_digests(maps[0]) if maps else None

    # the operations
    def isolated_taps(self) -> set[str] | None:
        table = self._table()
        return set(table.by_tap) if table else None

    def has_rules(self, tap: str) -> bool:
        return tap in (self.isolated_taps() or set())

    def apply(self, policies: Sequence[PortPolicy]) -> None:
        digests = self._digests()
        if digests is None or digests.get(BASE_KEY) != base_digest() or any(
                digests.get(p.tap) not in (None, port_digest(p)) for p in policies):
            self._run(self.script.apply(policies, self._table()))
            return
        try:  # no tap to change has elements: the digests are all that is needed
            self._run(self.script.apply(policies, Table(digests=digests)))
        except VafError:  # the kernel disagrees (someone else wrote the table): read it all
            self._run(self.script.apply(policies, self._table()))

    def clean(self, taps: Iterable[str], vm_id: int | None = None,
              names: TapNames = DEFAULT_TAP_NAMES,
              expected: Sequence[PortPolicy] = ()) -> set[str]:
        """Remove the elements of ``taps`` and, given ``vm_id``, of every tap ``names`` says
        is that VM's; return the taps that had elements.

        ``expected``: the policies the template gives these taps. A tap whose digest is the
        one of its expected policy has exactly that policy's elements, and the table is not
        read; otherwise (a changed template, a NIC the template no longer lists) it is.
        """
        digests = self._digests()
        if digests is not None:
            known = {key for key in digests if not key.startswith(":")}
            present = (set(taps) | names.of_vm(known, vm_id)) & known
            policies = {p.tap: p for p in expected}
            if all(tap in policies and digests[tap] == port_digest(policies[tap])
                   for tap in present):
                self._run(self.script.remove({tap: port_elements(policies[tap])
                                              for tap in present}))
                return present
        by_tap = (self._table() or Table()).by_tap
        present = (set(taps) | names.of_vm(by_tap, vm_id)) & set(by_tap)
        self._run(self.script.remove({tap: by_tap[tap] for tap in present}))
        return present

    def sweep(self, existing: set[str]) -> set[str]:
        """Remove the elements of taps that no longer exist, then unused networks."""
        table = self._table()
        if table is None:
            return set()
        orphans = set(table.by_tap) - existing
        self._run(self.script.remove({tap: table.by_tap[tap] for tap in orphans}))
        table = self._table() or Table()
        self._run(self.script.delete_networks(table.defined - table.used, table.digests))
        return orphans

    def ruleset(self) -> str:
        result = self.firewall.nft_list(self.table, check=False)
        return result.stdout if result.returncode == 0 else ""
