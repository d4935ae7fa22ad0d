"""nftables (``bridge`` family) backend of Ethernet isolation.

One table, ``bridge vaf_isolation``, whose base rules never change with the number of VMs::

    map in_ports  { type ifname : verdict }   tap -> jump in_<tap>   (frames to the VM)
    map out_ports { type ifname : verdict }   tap -> jump out_<tap>  (frames from the VM)
    chain forward { hook forward; iifname vmap @out_ports; oifname vmap @in_ports }
    chain input   { hook input;   iifname vmap @out_ports }   (protects the host's ARP cache)
    set net_<key> { ether_addr, interval }    a network's MAC ranges, shared by its VMs
    set extra_<tap> { ether_addr }            the port's extra authorized MACs
    chain in_<tap>  { ether saddr @net_<key> return; ether saddr @extra_<tap> return; drop }
    chain out_<tap> { source MAC and ARP sender checks }

A frame costs two hash lookups whatever the number of VMs, and applying or cleaning a VM is
one ``nft -f`` transaction that touches only that VM's elements and chains (plus a refill of
its network's set with the same content): the cost does not grow with the VMs on the host.
What "the network" allows are its MAC ranges, not the VMs that happen to run here.

Idempotency without reading the table first: ``add`` of an existing table, chain, set or map
element is a no-op, a ``flush`` before refilling makes re-application exact, and clean adds
what it then deletes (``add chain X; delete chain X``) so deleting what is absent cannot fail
the transaction (nft 1.0.6 has no ``destroy``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vaf.host.netfilter import PortPolicy
from vaf.host.runner import Runner

TABLE = "vaf_isolation"
PRIORITY = "-200"  # the bridge family's "filter" priority


@dataclass(frozen=True)
class Script:
    """Builds one ``nft -f`` transaction for a table."""

    table: str = TABLE

    def _t(self) -> str:
        return f"bridge {self.table}"

    def base(self) -> list[str]:
        """Table, maps and base chains; rewritten each time so they are always exact."""
        t = self._t()
        hook = "type filter hook {} priority " + PRIORITY + "; policy accept;"
        return [f"add table {t}",
                f"add map {t} in_ports {{ type ifname : verdict; }}",
                f"add map {t} out_ports {{ type ifname : verdict; }}",
                f"add chain {t} forward {{ {hook.format('forward')} }}",
                f"add chain {t} input {{ {hook.format('input')} }}",
                f"flush chain {t} forward",
                f"flush chain {t} input",
                f"add rule {t} forward iifname vmap @out_ports",
                f"add rule {t} forward oifname vmap @in_ports",
                f"add rule {t} input iifname vmap @out_ports"]

    def network_set(self, key: str, ranges: Sequence) -> list[str]:
        t = self._t()
        elements = ", ".join(str(item) for item in ranges)
        return [f"add set {t} net_{key} {{ type ether_addr; flags interval; auto-merge; }}",
                f"flush set {t} net_{key}",
                f"add element {t} net_{key} {{ {elements} }}"]

    def port(self, policy: PortPolicy) -> list[str]:
        t, tap = self._t(), policy.tap
        lines = [f"add set {t} extra_{tap} {{ type ether_addr; }}",
                 f"flush set {t} extra_{tap}"]
        if policy.extra_macs:
            lines.append(f"add element {t} extra_{tap} {{ {', '.join(policy.extra_macs)} }}")
        for chain, rules in ((f"in_{tap}", in_rules(policy)), (f"out_{tap}", out_rules(policy))):
            lines += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
            lines += [f"add rule {t} {chain} {rule}" for rule in rules]
        lines += [f'add element {t} in_ports {{ "{tap}" : jump in_{tap} }}',
                  f'add element {t} out_ports {{ "{tap}" : jump out_{tap} }}']
        return lines

    def apply(self, policies: Sequence[PortPolicy]) -> str:
        lines = self.base()
        networks = {policy.network: policy.ranges for policy in policies}
        for key, ranges in sorted(networks.items()):
            lines += self.network_set(key, ranges)
        for policy in policies:
            lines += self.port(policy)
        return text(lines)

    def remove(self, taps: Iterable[str]) -> str:
        """Delete the ports' elements, chains and sets; valid whether they exist or not."""
        t = self._t()
        lines = self.base()
        for tap in sorted(taps):
            lines += [f"add chain {t} in_{tap}", f"add chain {t} out_{tap}",
                      f"add set {t} extra_{tap} {{ type ether_addr; }}",
                      f'add element {t} in_ports {{ "{tap}" : jump in_{tap} }}',
                      f'add element {t} out_ports {{ "{tap}" : jump out_{tap} }}',
                      f'delete element {t} in_ports {{ "{tap}" }}',
                      f'delete element {t} out_ports {{ "{tap}" }}']
            for chain in (f"in_{tap}", f"out_{tap}"):
                lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
            lines.append(f"delete set {t} extra_{tap}")
        return text(lines)

    def delete_sets(self, names: Iterable[str]) -> str:
        return text([f"delete set {self._t()} {name}" for name in sorted(names)])


def in_rules(policy: PortPolicy) -> list[str]:
    return [f"ether saddr @net_{policy.network} return",
            f"ether saddr @extra_{policy.tap} return",
            "drop"]


def out_rules(policy: PortPolicy) -> list[str]:
    rules = [f"ether saddr != {policy.mac} drop",
             f"ether type arp arp saddr ether != {policy.mac} drop"]
    if policy.ip:
        # 0.0.0.0: ARP probes (RFC 5227) before the guest uses its address
        rules.append(f"ether type arp arp saddr ip != {{ {policy.ip}, 0.0.0.0 }} drop")
    return rules


def text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def parse_map_keys(listing: str) -> set[str]:
    """Keys of a verdict map from ``nft -j list map``."""
    keys = set()
    for item in json.loads(listing).get("nftables", []):
        for element in item.get("map", {}).get("elem", []):
            key = element[0] if isinstance(element, list) else element
            if isinstance(key, str):
                keys.add(key)
    return keys


def unused_network_sets(listing: str) -> set[str]:
    """``net_*`` sets of a ``nft list table`` listing that no rule refers to."""
    defined = set(re.findall(r"^\s*set (net_\w+) \{", listing, re.MULTILINE))
    used = set(re.findall(r"@(net_\w+)", listing))
    return defined - used


@dataclass(frozen=True)
class NftBackend:
    runner: Runner
    nft: str = "nft"
    table: str = TABLE

    name = "nft"

    @property
    def script(self) -> Script:
        return Script(self.table)

    def _run(self, script: str) -> None:
        self.runner.run([self.nft, "-f", "-"], sudo=True, input=script)

    def isolated_taps(self) -> set[str] | None:
        listing = self.runner.run([self.nft, "-j", "list", "map", "bridge", self.table,
                                   "in_ports"], sudo=True, check=False)
        if listing.returncode != 0:
            return None
        return parse_map_keys(listing.stdout)

    def apply(self, policies: Sequence[PortPolicy]) -> None:
        self._run(self.script.apply(policies))

    def clean(self, taps: Iterable[str]) -> set[str]:
        isolated = self.isolated_taps()
        if isolated is None:
            return set()  # vaf never isolated anything here: create nothing
        taps = set(taps)
        if taps:
            self._run(self.script.remove(taps))
        return taps & isolated

    def sweep(self, existing: set[str]) -> set[str]:
        """Remove ports whose tap is gone, then network sets no port uses any more."""
        isolated = self.isolated_taps()
        if isolated is None:
            return set()
        orphans = isolated - existing
        if orphans:
            self._run(self.script.remove(orphans))
        unused = unused_network_sets(self.ruleset())
        if unused:
            self._run(self.script.delete_sets(unused))
        return orphans

    def ruleset(self) -> str:
        result = self.runner.run([self.nft, "list", "table", "bridge", self.table],
                                 sudo=True, check=False)
        return result.stdout if result.returncode == 0 else ""
