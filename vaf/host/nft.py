"""nftables (``bridge`` family) backend of Ethernet isolation.

One table, ``bridge vaf_isolation``. Its chains and sets exist once per host or once per
*network*, never once per VM; a VM is only set and map **elements** keyed by its tap::

    set ports     { type ifname }                   isolated taps
    set own_mac   { type ifname . ether_addr }      tap . the NIC's MAC
    set ip_ports  { type ifname }                   isolated taps whose IP is known
    set own_ip    { type ifname . ipv4_addr }       tap . IP, tap . 0.0.0.0 (ARP probes)
    set extra     { type ifname . ether_addr }      tap . extra authorized MAC
    map in_ports  { type ifname : verdict }         tap -> jump net_<key>
    set net_<key> { type ether_addr; flags interval }   a network's MAC ranges
    chain net_<key> { ether saddr @net_<key> return; oifname . ether saddr @extra return; drop }
    chain forward { hook forward; iifname @ports jump from_vm; oifname vmap @in_ports }
    chain input   { hook input;   iifname @ports jump from_vm }
    chain from_vm { iifname . ether saddr != @own_mac drop; the same for the ARP sender MAC;
                    iifname @ip_ports: iifname . ARP sender IP != @own_ip drop }

Why elements only: nft fetches the table's chains and sets (and the elements of interval
sets) before every transaction, so per-VM chains or sets, or one big interval set, make each
update cost grow with the number of VMs (measured: 1,000 VMs with two chains and a set each
tripled the cost). Hash-set and map elements are not fetched: apply and clean cost the same
with 1 or 1,000 VMs, and a frame costs a few hash lookups.

Exactness: the elements a port got are recorded in a small state file per tap (next to the
lock file), so re-applying or cleaning deletes exactly those, even if the VM's extra MACs
changed in between. A state file may be stale (a host reboot empties the kernel, not the
file): every deletion is preceded by an ``add`` of the same element, which makes it valid
whether the element exists or not (nft 1.0.6 has no ``destroy``). Without a state file,
apply assumes the tap has nothing; if the kernel disagrees (a map entry to another network)
the transaction fails as a whole and is retried after reading the tap's real elements.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vaf.errors import VafError
from vaf.host.netfilter import PortPolicy, taps_of_vm
from vaf.host.runner import Runner

TABLE = "vaf_isolation"
PRIORITY = "-200"  # the bridge family's "filter" priority
TAP_SETS = {"ports": "ifname", "ip_ports": "ifname", "own_mac": "ifname . ether_addr",
            "extra": "ifname . ether_addr", "own_ip": "ifname . ipv4_addr"}
PROBE_IP = "0.0.0.0"  # RFC 5227: ARP probes before the guest uses its address


@dataclass(frozen=True, order=True)
class Element:
    """One element of a tap: the set (or map) it is in and its nft text."""

    target: str  # set or map name
    text: str  # '"one-7-0" . 02:00:0a:00:01:05' or '"one-7-0" : jump net_p02000a0001'

    @property
    def key(self) -> str:
        """What ``delete element`` takes: a map element without its value."""
        return self.text.split(" : ", 1)[0]

    @property
    def chain(self) -> str | None:
        """The chain a map element jumps to (it must exist for the element to be added)."""
        match = re.search(r" : jump (\S+)$", self.text)
        return match.group(1) if match else None

    def line(self) -> str:
        return f"{self.target}\t{self.text}"

    @classmethod
    def from_line(cls, line: str) -> Element:
        target, text = line.split("\t", 1)
        return cls(target, text)


def port_elements(policy: PortPolicy) -> list[Element]:
    tap = f'"{policy.tap}"'
    elements = [Element("ports", tap), Element("own_mac", f"{tap} . {policy.mac}")]
    elements += [Element("extra", f"{tap} . {mac}") for mac in policy.extra_macs]
    if policy.ip:
        elements += [Element("ip_ports", tap), Element("own_ip", f"{tap} . {policy.ip}"),
                     Element("own_ip", f"{tap} . {PROBE_IP}")]
    elements.append(Element("in_ports", f"{tap} : jump net_{policy.network}"))
    return elements


@dataclass(frozen=True)
class Script:
    """Builds the text of one ``nft -f`` transaction."""

    table: str = TABLE

    @property
    def t(self) -> str:
        return f"bridge {self.table}"

    def base(self) -> list[str]:
        """Table, sets, maps and fixed chains, rewritten each time so they are always exact
        (constant size: it does not grow with the VMs)."""
        t = self.t
        lines = [f"add table {t}"]
        lines += [f"add set {t} {name} {{ type {kind}; }}" for name, kind in TAP_SETS.items()]
        lines.append(f"add map {t} in_ports {{ type ifname : verdict; }}")
        hook = "{{ type filter hook {} priority " + PRIORITY + "; policy accept; }}"
        lines += [f"add chain {t} from_vm",
                  f"add chain {t} forward " + hook.format("forward"),
                  f"add chain {t} input " + hook.format("input")]
        rules = {"from_vm": ["iifname . ether saddr != @own_mac drop",
                             "ether type arp iifname . arp saddr ether != @own_mac drop",
                             "ether type arp iifname @ip_ports iifname . arp saddr ip "
                             "!= @own_ip drop"],
                 # INPUT too: a spoofed ARP must not poison the hypervisor's own cache
                 "forward": ["iifname @ports jump from_vm", "oifname vmap @in_ports"],
                 "input": ["iifname @ports jump from_vm"]}
        for chain, chain_rules in rules.items():
            lines.append(f"flush chain {t} {chain}")
            lines += [f"add rule {t} {chain} {rule}" for rule in chain_rules]
        return lines

    def network(self, key: str, ranges: Sequence) -> list[str]:
        """A network's set and chain; refilled with the same content by each of its VMs."""
        t, name = self.t, f"net_{key}"
        elements = ", ".join(str(item) for item in ranges)
        return [f"add set {t} {name} {{ type ether_addr; flags interval; auto-merge; }}",
                f"flush set {t} {name}",
                f"add element {t} {name} {{ {elements} }}",
                f"add chain {t} {name}",
                f"flush chain {t} {name}",
                f"add rule {t} {name} ether saddr @{name} return",
                f"add rule {t} {name} oifname . ether saddr @extra return",
                f"add rule {t} {name} drop"]

    def replace(self, old: Iterable[Element], new: Iterable[Element]) -> list[str]:
        """Delete ``old`` (present or not), then add ``new``."""
        t, old = self.t, sorted(set(old))
        lines = [f"add chain {t} {chain}" for chain in sorted({e.chain for e in old} - {None})]
        lines += [f"add element {t} {e.target} {{ {e.text} }}" for e in old]
        lines += [f"delete element {t} {e.target} {{ {e.key} }}" for e in old]
        lines += [f"add element {t} {e.target} {{ {e.text} }}" for e in new]
        return lines

    def apply(self, policies: Sequence[PortPolicy], old: dict[str, list[Element]]) -> str:
        lines = self.base()
        networks = {policy.network: policy.ranges for policy in policies}
        for key, ranges in sorted(networks.items()):
            lines += self.network(key, ranges)
        for policy in policies:
            lines += self.replace(old.get(policy.tap, ()), port_elements(policy))
        return text(lines)

    def remove(self, old: dict[str, list[Element]]) -> str:
        lines = self.base()
        for tap in sorted(old):
            lines += self.replace(old[tap], ())
        return text(lines)

    def delete_networks(self, keys: Iterable[str]) -> str:
        t = self.t
        lines = []
        for key in sorted(keys):
            lines += [f"flush chain {t} net_{key}", f"delete chain {t} net_{key}",
                      f"delete set {t} net_{key}"]
        return text(lines)


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


def parse_table(listing: str) -> tuple[dict[str, list[Element]], set[str], set[str]]:
    """From ``nft -j list table``: each tap's elements, the network keys defined (sets or
    chains ``net_*``) and the network keys some tap jumps to."""
    by_tap: dict[str, list[Element]] = {}
    defined, used = set(), set()
    for item in json.loads(listing).get("nftables", []):
        for kind in ("set", "chain", "map"):
            name = item.get(kind, {}).get("name", "")
            if name.startswith("net_"):
                defined.add(name[len("net_"):])
        if "map" in item and item["map"]["name"] == "in_ports":
            for key, verdict in item["map"].get("elem", []):
                target = verdict["jump"]["target"]
                used.add(target[len("net_"):])
                by_tap.setdefault(key, []).append(
                    Element("in_ports", f"{json.dumps(key)} : jump {target}"))
        elif "set" in item and item["set"]["name"] in TAP_SETS:
            for element in item["set"].get("elem", []):
                tap = _tap_of(element)
                if tap is not None:
                    by_tap.setdefault(tap, []).append(
                        Element(item["set"]["name"], _element_text(element)))
    return by_tap, defined, used


# -- the backend ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class NftBackend:
    runner: Runner
    nft: str = "nft"
    table: str = TABLE
    state_dir: str = "/var/tmp/one/.vaf-isolation"

    name = "nft"

    @property
    def script(self) -> Script:
        return Script(self.table)

    def _run(self, script: str) -> None:
        self.runner.run([self.nft, "-f", "-"], sudo=True, input=script)

    # state files: what each tap got, so it can be removed exactly and cheaply
    def _state_path(self, tap: str) -> str:
        return os.path.join(self.state_dir, tap)

    def _recorded(self, tap: str) -> list[Element] | None:
        try:
            with open(self._state_path(tap), encoding="utf-8") as handle:
                return [Element.from_line(line) for line in handle.read().splitlines() if line]
        except FileNotFoundError:
            return None

    def _record(self, tap: str, elements: Sequence[Element]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        temporary = self._state_path(tap) + ".new"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(element.line() + "\n" for element in elements))
        os.replace(temporary, self._state_path(tap))

    def _forget(self, tap: str) -> None:
        try:
            os.unlink(self._state_path(tap))
        except FileNotFoundError:
            pass

    def recorded_taps(self) -> set[str]:
        try:
            return {name for name in os.listdir(self.state_dir) if not name.endswith(".new")}
        except FileNotFoundError:
            return set()

    def _table(self) -> tuple[dict[str, list[Element]], set[str], set[str]] | None:
        result = self.runner.run([self.nft, "-j", "list", "table", "bridge", self.table],
                                 sudo=True, check=False)
        return parse_table(result.stdout) if result.returncode == 0 else None

    def _in_kernel(self) -> dict[str, list[Element]]:
        table = self._table()
        return table[0] if table else {}

    # the operations
    def isolated_taps(self) -> set[str] | None:
        table = self._table()
        return set(table[0]) if table else None

    def apply(self, policies: Sequence[PortPolicy]) -> None:
        old = {p.tap: self._recorded(p.tap) or [] for p in policies}
        try:
            self._run(self.script.apply(policies, old))
        except VafError:
            # Only without a state file can the kernel hold what we do not know of; read it.
            if all(self._recorded(p.tap) is not None for p in policies):
                raise
            kernel = self._in_kernel()
            old = {p.tap: old[p.tap] + kernel.get(p.tap, []) for p in policies}
            self._run(self.script.apply(policies, old))
        for policy in policies:
            self._record(policy.tap, port_elements(policy))

    def clean(self, taps: Iterable[str], vm_id: int | None = None) -> set[str]:
        """Remove the elements of ``taps`` and, given ``vm_id``, of every ``one-<vm_id>-<n>``
        with a state file; return the taps that had elements."""
        taps = set(taps) | taps_of_vm(self.recorded_taps(), vm_id)
        old = {tap: self._recorded(tap) for tap in taps}
        if any(elements is None for elements in old.values()):
            kernel = self._in_kernel()
            old = {tap: elements if elements is not None else kernel.get(tap, [])
                   for tap, elements in old.items()}
        present = {tap for tap, elements in old.items() if elements}
        if present:
            self._run(self.script.remove({tap: old[tap] for tap in present}))
        for tap in taps:
            self._forget(tap)
        return present

    def sweep(self, existing: set[str]) -> set[str]:
        """Remove the elements of taps that no longer exist, then unused networks."""
        table = self._table()
        if table is None:
            return set()
        by_tap, _, _ = table
        orphans = set(by_tap) - existing
        if orphans:
            self._run(self.script.remove({tap: by_tap[tap] for tap in orphans}))
        for tap in orphans | (self.recorded_taps() - existing):
            self._forget(tap)
        _, defined, used = self._table() or ({}, set(), set())
        if defined - used:
            self._run(self.script.delete_networks(defined - used))
        return orphans

    def ruleset(self) -> str:
        result = self.runner.run([self.nft, "list", "table", "bridge", self.table],
                                 sudo=True, check=False)
        return result.stdout if result.returncode == 0 else ""
