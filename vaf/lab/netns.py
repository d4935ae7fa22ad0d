"""Network namespaces as a hypervisor and its VMs, for real-traffic tests of isolation.

A :class:`Lab` owns a "host" namespace with a Linux bridge, and one namespace per VM (or
service) joined to the bridge by a veth pair whose host end carries the tap name oned would
use (``one-<vmid>-<nic>``). Interface names live inside the lab's namespaces, so only the
namespace names must be unique: they carry the pid and a random part, and ``close`` deletes
them all (which destroys their interfaces and rules), also when a test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from vaf.host.runner import Result, Runner

FRAMES_HELPER = os.path.join(os.path.dirname(__file__), "netns_frames.py")
BRIDGE = "br0"


@dataclass
class Lab:
    runner: Runner = field(default_factory=Runner)
    prefix: str = field(default_factory=lambda: f"vafi{os.getpid()}{secrets.token_hex(2)}")
    namespaces: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.prefix}-host"

    def ns_of(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _add_netns(self, name: str) -> None:
        self.runner.run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.run(name, ["ip", "link", "set", "lo", "up"])
        # IPv6 would add DAD and router solicitations to every capture; none is needed here
        self.run(name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])

    def run(self, ns: str, argv: Sequence[str], **kwargs) -> Result:
        return self.runner.run(["ip", "netns", "exec", ns, *argv], **kwargs)

    def start(self) -> Lab:
        self._add_netns(self.host)
        self.run(self.host, ["ip", "link", "add", BRIDGE, "type", "bridge"])
        self.run(self.host, ["ip", "link", "set", BRIDGE, "up"])
        return self

    def add_machine(self, name: str, port: str, mac: str, cidr: str) -> str:
        """A namespace ``name`` whose eth0 (``mac``, ``cidr``) is bridge port ``port``."""
        ns = self.ns_of(name)
        self._add_netns(ns)
        self.run(self.host, ["ip", "link", "add", port, "type", "veth", "peer", "name",
                             "eth0", "netns", ns])
        self.run(self.host, ["ip", "link", "set", port, "master", BRIDGE, "up"])
        self.run(ns, ["ip", "link", "set", "eth0", "address", mac, "up"])
        self.run(ns, ["ip", "addr", "add", cidr, "dev", "eth0"])
        return ns

    def set_mac(self, name: str, mac: str) -> None:
        self.run(self.ns_of(name), ["ip", "link", "set", "eth0", "address", mac])

    def remove_port(self, port: str) -> None:
        self.run(self.host, ["ip", "link", "del", port])

    def ping(self, src: str, ip: str) -> bool:
        """One ICMP round trip, with ARP redone from scratch on both ends."""
        for ns in self.namespaces[1:]:
            self.run(ns, ["ip", "neigh", "flush", "dev", "eth0"], check=False)
        return self.run(self.ns_of(src), ["ping", "-c", "1", "-W", "1", "-q", ip],
                        check=False).returncode == 0

    def frames_received(self, src: str, dst: str, frames: Sequence[bytes]) -> list[bool]:
        """Send raw frames from ``src``'s eth0; which of them reached ``dst``'s eth0."""
        result = self.runner.run([sys.executable, FRAMES_HELPER, f"/run/netns/{self.ns_of(src)}",
                                  f"/run/netns/{self.ns_of(dst)}",
                                  json.dumps([frame.hex() for frame in frames])])
        return json.loads(result.stdout)

    def missing_kernel_support(self, backend: str) -> str | None:
        """Why this kernel cannot serve ``backend``'s tables in the lab's host namespace.

        None when it can. Debian's ``ebtables`` package alone is the legacy tool, which needs
        the x_tables ebtables modules that many kernels (this machine's among them) lack;
        ``ebtables-nft`` comes with the ``iptables`` package.
        """
        probe = (["nft", "list", "tables", "bridge"] if backend == "nft"
                 else ["ebtables", "--concurrent", "-t", "filter", "-L"])
        result = self.run(self.host, probe, check=False)
        if result.returncode == 0:
            return None
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"this kernel cannot serve {backend} here ({' '.join(probe)}: {detail}); "
                "for ebtables install Debian's iptables package (ebtables-nft)")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            self.runner.run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_frame(eth_src: str, sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (Ethernet/IPv4)."""
    def ip(text: str) -> bytes:
        return bytes(int(part) for part in text.split("."))

    header = _mac("ff:ff:ff:ff:ff:ff") + _mac(eth_src) + b"\x08\x06"
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + _mac(sender_mac) + ip(sender_ip)
           + b"\x00" * 6 + ip(target_ip))
    return header + arp + b"\x00" * 18  # padded to the 60-byte minimum


def tagged(frame: bytes, vlan_id: int, tpid: int = 0x8100) -> bytes:
    """The frame with an 802.1Q (or, with tpid 0x88a8, 802.1ad) tag after the MACs."""
    return frame[:12] + tpid.to_bytes(2, "big") + vlan_id.to_bytes(2, "big") + frame[12:]


# ICMPv6 neighbour discovery (RFC 4861) types and link-layer address option types
ROUTER_SOLICITATION, ROUTER_ADVERTISEMENT = 133, 134
NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT = 135, 136
SOURCE_LINK_ADDRESS, TARGET_LINK_ADDRESS = 1, 2
ALL_NODES = "ff02::1"


def link_local(mac: str) -> str:
    """The EUI-64 link-local address of a MAC."""
    raw = bytearray(_mac(mac))
    raw[0] ^= 0x02
    eui = bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def ndp_frame(eth_src: str, icmp_type: int, link_address: str | None = None,
              target: str = "fe80::1", src_ip: str | None = None,
              dst_ip: str = ALL_NODES) -> bytes:
    """An IPv6 neighbour discovery message from ``eth_src`` to the all-nodes group.

    NS/NA carry ``target``; a link-layer address option (source for NS and RS, target for
    NA, as a guest would send) is added when ``link_address`` is given. The checksum is
    right, so a receiving stack would act on the message.
    """
    if icmp_type in (NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT):
        flags = b"\x20\x00\x00\x00" if icmp_type == NEIGHBOUR_ADVERTISEMENT else b"\x00" * 4
        body = flags + ipaddress.IPv6Address(target).packed
    elif icmp_type == ROUTER_ADVERTISEMENT:  # hop limit 64, lifetime 1800 s
        body = b"\x40\x00\x07\x08" + b"\x00" * 8
    else:
        body = b"\x00" * 4
    if link_address is not None:
        kind = TARGET_LINK_ADDRESS if icmp_type == NEIGHBOUR_ADVERTISEMENT \
            else SOURCE_LINK_ADDRESS
        body += bytes([kind, 1]) + _mac(link_address)
    src = ipaddress.IPv6Address(src_ip or link_local(eth_src)).packed
    dst = ipaddress.IPv6Address(dst_ip).packed
    icmp = bytes([icmp_type, 0]) + b"\x00\x00" + body
    pseudo = src + dst + len(icmp).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    icmp = icmp[:2] + _checksum(pseudo + icmp).to_bytes(2, "big") + icmp[4:]
    ip6 = (b"\x60\x00\x00\x00" + len(icmp).to_bytes(2, "big") + b"\x3a\xff" + src + dst)
    group_mac = b"\x33\x33" + dst[-4:]
    return group_mac + _mac(eth_src) + b"\x86\xdd" + ip6 + icmp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
