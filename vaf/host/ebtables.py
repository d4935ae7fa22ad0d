"""ebtables backend of Ethernet isolation (``ebtables-nft`` and ``ebtables-legacy``).

Layout in the ``filter`` table::

    FORWARD, INPUT --(position 1)--> VAF
    VAF:  -i <tap> -j VAF-O-<tap>      frames from the VM (anti-spoofing)
          -o <tap> -j VAF-I-<tap>      frames to the VM (its network + extra MACs, else DROP)

Each port chain starts with a no-op fingerprint rule, ``-s <digest as a MAC> -j CONTINUE``
(it matches almost nothing and does nothing when it does): a port whose installed fingerprint
is the one of the rules it should have is left alone, so re-applying an unchanged rule set
keeps its counters. What a port has is always read from the kernel, never from a file.

Atomicity: every change is one ``ebtables-restore --noflush`` batch. ``ebtables-nft-restore``
commits the batch as one nf_tables transaction; ``ebtables-legacy-restore`` builds the table
in memory and replaces it with one setsockopt at ``COMMIT``. So a port is never seen with half
of its rules. Idempotency: a batch is computed from the jumps present in ``VAF`` (a port
whose jumps exist has its chains: both are always created in the same batch), so applying
twice flushes and refills the chains instead of adding rules twice.

One exception, from ebtables-nft 1.8.9: deleting a jump and its chain in one batch fails
("CHAIN_DEL failed (Device or resource busy)"). Clean therefore removes the jumps (the port
is unfiltered from then on, atomically) and then deletes the now unreachable, empty chains in
a second batch; a crash between the two leaves chains without effect, which the sweep removes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vaf.host.netfilter import (
    DEFAULT_TAP_NAMES,
    PortPolicy,
    TapNames,
    fingerprint,
    format_mac,
    parse_mac,
)
from vaf.host.netfilter_verbs import Firewall
from vaf.host.runner import CommandError, Result

DISPATCH = "VAF"
HOOKS = ("FORWARD", "INPUT")  # INPUT too: a spoofed ARP must not poison the host's cache
IN_PREFIX = "VAF-I-"
OUT_PREFIX = "VAF-O-"
# ebtables-nft lists an empty chain with a DROP policy wrongly (Neutron's LP#1915341):
# user chains keep policy RETURN and end with an explicit DROP where one is needed.
CHAIN_POLICY = "RETURN"


def in_chain(tap: str) -> str:
    return IN_PREFIX + tap


def out_chain(tap: str) -> str:
    return OUT_PREFIX + tap


def jump_rules(tap: str) -> list[str]:
    return [f"-i {tap} -j {out_chain(tap)}", f"-o {tap} -j {in_chain(tap)}"]


#: ICMPv6 messages only a router sends: never from a VM
ROUTER_ONLY_ICMPV6 = ("router-advertisement", "redirect")
#: neighbour discovery messages carrying a link-layer address option. ebtables cannot read
#: ICMPv6 options, so they are dropped from VMs (IPv6 on-link needs the nft backend)
NDP_WITH_LINK_ADDRESS = ("router-solicitation", "neighbour-solicitation",
                         "neighbour-advertisement")
VLAN_ETHERTYPES = ("802_1Q", "0x88a8")  # 802.1Q and 802.1ad (QinQ) tags


def _icmpv6(kind: str) -> str:
    return f"-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type {kind} -j DROP"


def out_rules(policy: PortPolicy) -> list[str]:
    """Frames from the VM: untagged, its own source MAC, ARP only for its own MAC (and IP),
    no router messages, no neighbour discovery (see NDP_WITH_LINK_ADDRESS)."""
    if policy.blocked:
        return ["-j DROP"]
    # The kernel has taken a VLAN tag off before ebtables looks, so "-p ARP" never sees a
    # tagged ARP: tagged frames go first (networks carrying tags need the nft backend).
    rules = [f"-p {kind} -j DROP" for kind in VLAN_ETHERTYPES]
    rules += [f"-s ! {policy.mac} -j DROP", f"-p ARP --arp-mac-src ! {policy.mac} -j DROP"]
    if policy.ip:
        rules += [f"-p ARP --arp-ip-src {policy.ip} -j RETURN",
                  "-p ARP --arp-ip-src 0.0.0.0 -j RETURN",  # ARP probes (RFC 5227)
                  "-p ARP -j DROP"]
    rules += [_icmpv6(kind) for kind in ROUTER_ONLY_ICMPV6 + NDP_WITH_LINK_ADDRESS]
    return rules


def in_rules(policy: PortPolicy) -> list[str]:
    """Frames to the VM: from its network's MAC ranges or an extra authorized MAC."""
    rules = [f"-s {mac}/{mask} -j RETURN"
             for mac_range in policy.ranges for mac, mask in mac_range.masks()]
    rules += [f"-s {mac} -j RETURN" for mac in policy.extra_macs]
    return rules + ["-j DROP"]


def port_fingerprint(policy: PortPolicy) -> str:
    """The port's fingerprint as the MAC its first rule matches (``-s <this> -j CONTINUE``)."""
    digest = fingerprint([*out_rules(policy), "|", *in_rules(policy)])
    return format_mac(int(digest, 16))


def fingerprint_rule(policy: PortPolicy) -> str:
    return f"-s {port_fingerprint(policy)} -j CONTINUE"


def installed_fingerprint(listing: str) -> str | None:
    """The fingerprint of a port chain listing (``ebtables -L VAF-O-<tap>``), if any."""
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 4 and words[0] == "-s" and words[2:4] == ["-j", "CONTINUE"]:
            return format_mac(parse_mac(words[1]))
    return None


def port_lines(policy: PortPolicy, present: bool) -> list[str]:
    """Restore lines that (re)build one port's chains; jumps only if not ``present``."""
    lines = []
    for chain, rules in ((out_chain(policy.tap), out_rules(policy)),
                         (in_chain(policy.tap), in_rules(policy))):
        lines.append(f"-F {chain}" if present else f"-N {chain} -P {CHAIN_POLICY}")
        lines += [f"-A {chain} {rule}" for rule in [fingerprint_rule(policy), *rules]]
    if not present:
        lines += [f"-A {DISPATCH} {rule}" for rule in jump_rules(policy.tap)]
    return lines


def apply_batch(policies: Sequence[PortPolicy], isolated: set[str] | None) -> str:
    """The whole ``ebtables-restore`` input for applying ``policies``.

    ``isolated``: taps whose chains and jumps exist, or ``None`` when ``VAF`` does not exist
    yet (then the batch creates it and hooks it first in FORWARD and INPUT).
    """
    lines = []
    if isolated is None:
        lines.append(f"-N {DISPATCH} -P {CHAIN_POLICY}")
        lines += [f"-I {hook} 1 -j {DISPATCH}" for hook in HOOKS]
        isolated = set()
    for policy in policies:
        lines += port_lines(policy, policy.tap in isolated)
    return batch(lines)


def chain_entries(listing: str) -> int | None:
    """The number of rules in an ``ebtables -L <chain>`` listing (None: no header)."""
    match = re.search(r"^Bridge chain: \S+, entries: (\d+),", listing, re.MULTILINE)
    return int(match.group(1)) if match else None


def unhook_batch(taps: Iterable[str]) -> str:
    """First step of clean: the ports' jumps go and their chains are emptied."""
    lines = []
    for tap in sorted(taps):
        lines += [f"-D {DISPATCH} {rule}" for rule in jump_rules(tap)]
        lines += [f"-F {out_chain(tap)}", f"-F {in_chain(tap)}"]
    return batch(lines)


def port_chains(taps: Iterable[str]) -> set[str]:
    return {chain for tap in taps for chain in (in_chain(tap), out_chain(tap))}


def delete_chains_batch(chains: Iterable[str]) -> str:
    return batch([f"-X {chain}" for chain in sorted(chains)])


def batch(lines: list[str]) -> str:
    # No COMMIT line: ebtables-legacy-restore rejects it; both flavours commit at the end.
    return "*filter\n" + "".join(line + "\n" for line in lines)


def parse_dispatch(listing: str) -> set[str]:
    """Taps with a jump in ``VAF``, from ``ebtables -L VAF`` (exact names, no regex guess)."""
    taps = set()
    for line in listing.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] in ("-i", "-o") and words[2] == "-j" \
                and words[3] in (out_chain(words[1]), in_chain(words[1])):
            taps.add(words[1])
    return taps


def parse_chains(listing: str) -> set[str]:
    """Chain names in an ``ebtables -L`` listing of the whole table."""
    prefix = "Bridge chain: "
    return {line[len(prefix):].split(",", 1)[0] for line in listing.splitlines()
            if line.startswith(prefix)}


@dataclass(frozen=True)
class EbtablesBackend:
    """The operations; every ebtables command runs as root through ``firewall`` (the
    ``isolation-ebtables-*`` verbs of vaf-privileged, whose conf names the programs:
    ebtables-nft or ebtables-legacy)."""

    firewall: Firewall

    name = "ebtables"

    def _list(self, *chain: str, check: bool = False) -> Result:
        return self.firewall.ebtables_list(*chain, check=check)

    def _restore(self, text: str) -> None:
        self.firewall.ebtables_restore(text)

    def isolated_taps(self) -> set[str] | None:
        """Taps with rules, or ``None`` if vaf never set up this host's table."""
        listing = self._list(DISPATCH)
        if listing.returncode != 0:
            return None
        return parse_dispatch(listing.stdout)

    def _port_state(self, policy: PortPolicy) -> str:
        """``absent``, ``current``, ``present`` (other rules) or ``stale``, from the port's
        outbound chain.

        Listing one chain costs the same whatever the number of VMs (listing VAF does not).
        A chain with rules always has its jumps: both are made in one batch, and clean
        removes the jumps and empties the chains in one batch. An existing but empty chain
        is what a clean interrupted before its second batch leaves.
        """
        listing = self._list(out_chain(policy.tap))
        if listing.returncode != 0:
            return "absent"
        if not chain_entries(listing.stdout):
            return "stale"
        current = installed_fingerprint(listing.stdout) == port_fingerprint(policy)
        return "current" if current else "present"

    def has_rules(self, tap: str) -> bool:
        listing = self._list(out_chain(tap))
        return listing.returncode == 0 and bool(chain_entries(listing.stdout))

    def _hooked(self) -> bool:
        forward = self._list("FORWARD").stdout.splitlines()
        return f"-j {DISPATCH}" in (line.strip() for line in forward)

    def apply(self, policies: Sequence[PortPolicy]) -> None:
        states = {p.tap: self._port_state(p) for p in policies}
        policies = [p for p in policies if states[p.tap] != "current"]  # keep their counters
        if not policies:
            return
        if "stale" in states.values():
            self._apply_exactly(policies)
            return
        present = {tap for tap, state in states.items() if state == "present"}
        try:
            self._restore(apply_batch(policies, present if present or self._hooked() else None))
        except CommandError:
            self._apply_exactly(policies)  # something else changed the table: read it

    def _apply_exactly(self, policies: Sequence[PortPolicy]) -> None:
        isolated = self.isolated_taps()
        try:
            self._restore(apply_batch(policies, isolated))
        except CommandError:
            # A clean interrupted between its two batches leaves empty chains without jumps,
            # which "-N" refuses: delete those of these ports (if any) and try once more.
            stale = port_chains(p.tap for p in policies if p.tap not in (isolated or set()))
            deleted = [chain for chain in sorted(stale)
                       if self.firewall.ebtables_delete(chain, check=False).returncode == 0]
            if not deleted:
                raise
            self._restore(apply_batch(policies, isolated))

    def clean(self, taps: Iterable[str], vm_id: int | None = None,
              names: TapNames = DEFAULT_TAP_NAMES,
              expected: Sequence[PortPolicy] = ()) -> set[str]:
        """Remove the rules of ``taps`` and, given ``vm_id``, of every tap ``names`` says
        is that VM's; return the taps that had rules (``expected`` is the nft backend's
        shortcut: a port's chains go whatever they hold)."""
        isolated = self.isolated_taps() or set()
        present = (set(taps) | names.of_vm(isolated, vm_id)) & isolated
        self._remove(present)
        return present

    def _remove(self, taps: set[str]) -> None:
        if taps:
            self._restore(unhook_batch(taps))
            self._restore(delete_chains_batch(port_chains(taps)))

    def sweep(self, existing: set[str]) -> set[str]:
        """Remove the rules of taps that no longer exist; return those taps.

        Also deletes vaf port chains that no jump uses (a clean interrupted between its two
        batches).
        """
        orphans = (self.isolated_taps() or set()) - existing
        self._remove(orphans)
        isolated = self.isolated_taps() or set()
        chains = parse_chains(self._list(check=True).stdout)
        stale = {chain for chain in chains if chain.startswith((IN_PREFIX, OUT_PREFIX))}
        stale -= port_chains(isolated)
        if stale:
            self._restore(delete_chains_batch(stale))
        return orphans

    def ruleset(self) -> str:
        """The whole filter table as ebtables lists it, with counters (``vaf isolation
        show``)."""
        return self.firewall.ebtables_list(counters=True).stdout
