"""What Ethernet isolation enforces on one bridge port, independent of the firewall tool.

A :class:`PortPolicy` says, for one VM NIC (its tap), which source MACs may reach the VM
(its network's MAC ranges plus extra authorized MACs) and which MAC/IP the VM may claim.
The ebtables and nftables backends (:mod:`vaf.host.ebtables`, :mod:`vaf.host.nft`) turn a
policy into rules; everything here is pure and stdlib-only (it runs on hypervisors).
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vaf.errors import ConfigError, ProtocolError
from vaf.host.runner import Runner

_MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
# Interface names: at most 15 bytes (IFNAMSIZ - 1); refuse anything that could be read as
# an option, a wildcard (ebtables and nft treat a trailing '+' or '*' as a prefix match) or
# a quoting character in an nft script.
_TAP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
MAC_BITS = 48
ALL_ONES = (1 << MAC_BITS) - 1
PREFIX_OCTETS = 5  # OpenNebula's old driver: same first five octets = same network
#: the tap names oned gives (``one-<vmid>-<nic_id>``); others only through the admin's conf
DEFAULT_TAP_PATTERN = "one-{vmid}-{nic}"


def parse_mac(text: str, what: str = "MAC address") -> int:
    """A MAC as a 48-bit integer; accepts ``2:0:a:0:0:5`` (as ebtables prints it) too."""
    value = (text or "").strip()
    if not _MAC_RE.match(value):
        raise ProtocolError(f"{what} {text!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
    return int("".join(part.zfill(2) for part in value.split(":")), 16)


def format_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


def normalize_mac(text: str, what: str = "MAC address") -> str:
    return format_mac(parse_mac(text, what))


def parse_macs(text: str | None, what: str) -> tuple[str, ...]:
    """A list of MACs separated by commas and/or spaces, normalized and deduplicated."""
    items = [item for item in re.split(r"[,\s]+", text or "") if item]
    return tuple(dict.fromkeys(normalize_mac(item, what) for item in items))


@dataclass(frozen=True, order=True)
class MacRange:
    """An inclusive range of MACs, the unit a network's membership is described in."""

    first: int
    last: int

    @classmethod
    def parse(cls, text: str, what: str = "MAC range") -> MacRange:
        """``aa:..:00-aa:..:ff`` or a single MAC."""
        low, sep, high = text.partition("-")
        first = parse_mac(low, what)
        last = parse_mac(high, what) if sep else first
        if last < first:
            raise ProtocolError(f"{what} {text!r} ends before it starts")
        return cls(first, last)

    @classmethod
    def prefix_of(cls, mac: str, octets: int = PREFIX_OCTETS) -> MacRange:
        """Every MAC sharing the first ``octets`` octets with ``mac``."""
        host_bits = MAC_BITS - 8 * octets
        first = parse_mac(mac) >> host_bits << host_bits
        return cls(first, first | ((1 << host_bits) - 1))

    def __str__(self) -> str:
        if self.first == self.last:
            return format_mac(self.first)
        return f"{format_mac(self.first)}-{format_mac(self.last)}"

    def masks(self) -> list[tuple[str, str]]:
        """The smallest list of (MAC, mask) blocks covering the range exactly.

        ebtables matches a source MAC only as value/mask, so an arbitrary range is split the
        way an IP range is split into CIDR blocks: take the largest aligned block that starts
        at the current position and does not pass the end, repeat.
        """
        blocks = []
        start = self.first
        while start <= self.last:
            size_bits = (start & -start).bit_length() - 1 if start else MAC_BITS
            while start + (1 << size_bits) - 1 > self.last:
                size_bits -= 1
            mask = ALL_ONES ^ ((1 << size_bits) - 1)
            blocks.append((format_mac(start), format_mac(mask)))
            start += 1 << size_bits
        return blocks


def parse_ranges(text: str, what: str) -> tuple[MacRange, ...]:
    ranges = [MacRange.parse(item, what) for item in re.split(r"[,\s]+", text) if item]
    if not ranges:
        raise ConfigError(f"{what} lists no MAC range")
    return tuple(sorted(set(ranges)))


def check_tap(name: str | None, what: str = "TARGET") -> str:
    if not name or not _TAP_RE.match(name):
        raise ProtocolError(f"{what} {name!r} is not a usable interface name")
    return name


@dataclass(frozen=True)
class PortPolicy:
    """The isolation of one bridge port (a VM NIC's tap).

    ``blocked``: the port's rules could not be built (hook form, the VM already runs); it
    drops every frame in both directions until a good apply or a clean replaces it.
    """

    tap: str
    mac: str  # the only source MAC the VM may use, and the only ARP/NDP link-layer address
    ip: str | None  # when known, the only ARP sender IP besides 0.0.0.0 (ARP probes)
    network: str  # a short key naming the network's MAC ranges (names the nft set)
    ranges: tuple[MacRange, ...]  # source MACs of the VM's own network
    extra_macs: tuple[str, ...] = ()  # extra authorized source MACs
    tagged: bool = False  # the network carries 802.1Q-tagged frames (else they are dropped)
    blocked: bool = False

    def __post_init__(self) -> None:
        check_tap(self.tap)
        if not re.match(r"^[a-z0-9_]{1,40}$", self.network):
            raise ValueError(f"bad network key {self.network!r}")
        if self.ip is not None:
            ipaddress.IPv4Address(self.ip)

    @classmethod
    def blocking(cls, tap: str) -> PortPolicy:
        return cls(tap=tap, mac="00:00:00:00:00:00", ip=None, network="blocked", ranges=(),
                   blocked=True)


def fingerprint(lines: Iterable[str]) -> str:
    """A short digest of a rule set: installed rules carry it, so an unchanged rule set is
    recognised from the kernel's listing and left alone (its counters keep counting)."""
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return digest[:12]


@dataclass(frozen=True)
class TapNames:
    """Which tap names belong to which VM NIC: ``one-<vmid>-<nic>`` and the admin's patterns.

    A pattern is a tap name with ``{vmid}`` and ``{nic}`` in it (``vaf{vmid}n{nic}``), so a
    name always tells whose it is: rules are only ever built or removed for the VM that the
    name designates, whatever a template's ``TARGET`` says.
    """

    patterns: tuple[str, ...] = (DEFAULT_TAP_PATTERN,)

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            if pattern.count("{vmid}") != 1 or pattern.count("{nic}") != 1 or \
                    not _TAP_RE.match(pattern.replace("{vmid}", "1").replace("{nic}", "0")):
                raise ConfigError(f"TAP_PATTERNS item {pattern!r}: expected an interface name "
                                  "with {vmid} and {nic} once each (like one-{vmid}-{nic})")

    @property
    def _regexes(self) -> list[re.Pattern]:
        regexes = []
        for pattern in self.patterns:
            head, _, rest = pattern.partition("{vmid}")
            parts = [re.escape(part) for part in rest.split("{nic}")] if "{nic}" in rest \
                else None
            if parts is not None:
                regexes.append(re.compile(rf"^{re.escape(head)}(?P<vmid>0|[1-9]\d*)"
                                          rf"{parts[0]}(?P<nic>0|[1-9]\d*){parts[1]}$"))
            else:  # {nic} before {vmid}
                first, _, middle = head.partition("{nic}")
                regexes.append(re.compile(rf"^{re.escape(first)}(?P<nic>0|[1-9]\d*)"
                                          rf"{re.escape(middle)}(?P<vmid>0|[1-9]\d*)"
                                          rf"{re.escape(rest)}$"))
        return regexes

    def owner(self, tap: str) -> tuple[int, int] | None:
        """(vmid, nic id) of the VM NIC whose tap this name is, or None."""
        for regex in self._regexes:
            match = regex.match(tap)
            if match:
                return int(match.group("vmid")), int(match.group("nic"))
        return None

    def of_vm(self, taps: Iterable[str], vm_id: int | None) -> set[str]:
        """The names among ``taps`` that belong to VM ``vm_id``."""
        if vm_id is None:
            return set()
        return {tap for tap in taps if (self.owner(tap) or (None,))[0] == vm_id}


def interfaces(runner: Runner) -> set[str]:
    """Names of the network interfaces present where ``runner`` runs (``ip -o link``)."""
    names = set()
    for line in runner.output(["ip", "-o", "link", "show"]).splitlines():
        # "7: one-7-0@if6: <BROADCAST,...": the name, minus the "@peer" of veth pairs
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


@contextmanager
def host_lock(path: str) -> Iterator[None]:
    """Serialize vaf's own read-modify-write of the host's rules (hook, VNM, sweep).

    The kernel transactions are atomic anyway; the lock keeps two vaf processes from
    computing their batches from the same stale view of the table. The file is vaf's:
    opened without following a symlink and refused when someone else owns it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise ConfigError(f"lock file {path} is not owned by this user: refusing it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


DEFAULT_TAP_NAMES = TapNames()


def taps_of_vm(taps: Iterable[str], vm_id: int | None,
               names: TapNames = DEFAULT_TAP_NAMES) -> set[str]:
    """The tap names among ``taps`` that belong to VM ``vm_id``, matched exactly."""
    return names.of_vm(taps, vm_id)
