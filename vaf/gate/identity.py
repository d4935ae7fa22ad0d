"""Who is asking: the host name must belong to the address the ssh connection comes from.

The key is shared by all workers, so the key proves only "some worker". The name a worker
asks for is bound to it through the resolver of the batch server (the same one TORQUE uses
to accept a node): the name must resolve to the ``SSH_CONNECTION`` source address and, with
``reverse`` checking, it must be that address's canonical name (the reverse lookup's name;
in a hosts file the first name of the address's first line). An alias of the address is
refused, so one address cannot register a second node (TORQUE then distrusts the shared
address); the gate also refuses an address that already carries a node of another name.

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
from typing import Protocol, Union

from vaf.errors import VafError

# Union, not |: this alias is evaluated at import, and the head node may run Python 3.9
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]  # noqa: UP007


class Denied(VafError):
    """The request is well formed but this client may not make it (exit code 3)."""

    exit_code = 3


class Resolver(Protocol):
    def addresses(self, name: str) -> set[Address]: ...

    def canonical(self, address: Address) -> str | None:
        """The address's own name (what a reverse lookup answers), None without one."""


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

    def canonical(self, address: Address) -> str | None:
        try:
            primary = socket.gethostbyaddr(str(address))[0]
        except (socket.herror, socket.gaierror, OSError):
            return None
        return _normalise_name(primary)


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

    def canonical(self, address: Address) -> str | None:
        """The first name of the first line for ``address``, as glibc's files backend does."""
        return next((names[0] for addr, names in self._entries if addr == address), None)


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
    if not reverse:
        return
    canonical = resolver.canonical(client)
    if canonical is None:
        raise Denied(f"{client} does not resolve back to any name")
    if canonical != _normalise_name(name):
        raise Denied(f"{name} is an alias: the name of {client} is {canonical} "
                     "(one address, one node)")
