"""Who is asking: the host name must belong to the address the ssh connection comes from.

The key is shared by all workers, so the key proves only "some worker". The name a worker
asks for is bound to it through the resolver of the batch server (the same one TORQUE uses
to accept a node): the name must resolve to the ``SSH_CONNECTION`` source address and, with
``reverse`` checking, that address must map back to the name, so one address cannot
register an alias as a second node (TORQUE then distrusts the shared address).

Two resolvers: :class:`SystemResolver` (getaddrinfo/gethostbyaddr: /etc/hosts, DNS, as
configured in nsswitch.conf) for production, and :class:`HostsFileResolver` reading one
hosts-format file, for a head node whose workers are listed in a file it controls, and for
tests (which must not edit the machine's /etc/hosts).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from vaf.errors import VafError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Denied(VafError):
    """The request is well formed but this client may not make it (exit code 3)."""

    exit_code = 3


class Resolver(Protocol):
    def addresses(self, name: str) -> set[Address]: ...

    def names(self, address: Address) -> set[str]: ...


def normalise_address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


class SystemResolver:
    """The machine's own resolver (what qmgr and slurmctld will use too)."""

    def addresses(self, name: str) -> set[Address]:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return set()
        return {normalise_address(info[4][0]) for info in infos}

    def names(self, address: Address) -> set[str]:
        try:
            primary, aliases, _ = socket.gethostbyaddr(str(address))
        except (socket.herror, socket.gaierror, OSError):
            return set()
        return {_normalise_name(n) for n in [primary, *aliases]}


@dataclass
class HostsFileResolver:
    """Resolve from one file in /etc/hosts format (``address name [aliases...]``)."""

    path: str
    _entries: list[tuple[Address, tuple[str, ...]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        with open(self.path, encoding="utf-8") as handle:
            self._entries = list(_parse_hosts(handle.read().splitlines()))

    def addresses(self, name: str) -> set[Address]:
        wanted = _normalise_name(name)
        return {addr for addr, names in self._entries if wanted in names}

    def names(self, address: Address) -> set[str]:
        return {n for addr, names in self._entries if addr == address for n in names}


def _parse_hosts(lines: Iterable[str]):
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            address = normalise_address(words[0])
        except ValueError:
            continue
        yield address, tuple(_normalise_name(n) for n in words[1:])


def client_address(ssh_connection: str | None) -> Address:
    """The source address from ``SSH_CONNECTION`` (``client port server port``)."""
    words = (ssh_connection or "").split()
    if len(words) != 4:
        raise Denied("no usable SSH_CONNECTION: the gate must run as an ssh forced command")
    try:
        return normalise_address(words[0])
    except ValueError:
        raise Denied(f"SSH_CONNECTION has no valid client address: {words[0]!r}") from None


def check_binding(name: str, client: Address, resolver: Resolver, reverse: bool = True) -> None:
    """Raise :class:`Denied` unless ``name`` resolves to ``client`` (and back, if asked)."""
    forward = resolver.addresses(name)
    if not forward:
        raise Denied(f"{name} does not resolve on the batch server")
    if client not in forward:
        shown = ", ".join(sorted(str(a) for a in forward))
        raise Denied(f"{name} resolves to {shown}, not to the connecting address {client}")
    if reverse and _normalise_name(name) not in resolver.names(client):
        raise Denied(f"{client} does not resolve back to {name}")
