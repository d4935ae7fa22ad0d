"""Ethernet isolation of virtual clusters: the ebtables hook and the VNM driver.

Two ways OpenNebula can run the same code on the hypervisor:

* the state hook ``remotes/hooks/ebtables/vaf-isolation`` (``ARGUMENTS="$TEMPLATE apply"`` on
  RUNNING, ``"$TEMPLATE clean"`` when the VM leaves it; templates in ``share/hooks/``);
* the network driver ``remotes/vnm/vaf_isolation/`` (``post`` applies, ``clean`` cleans; stdin
  is the base64 VM XML), a drop-in for the ebtables VN_MAD removed in OpenNebula 7.0.

For each NIC (tap = ``NIC/TARGET``, which must be the NIC's own tap name): frames reach the
VM only from its network's MAC ranges and from its extra authorized MACs; the VM may only send
untagged frames (unless its network carries tags) with its own source MAC, ARP sender MAC
(and IP, when the NIC has one) and neighbour discovery link-layer address, and no router
messages. Everything is validated before any rule is touched. What each template attribute
is trusted for is in ``docs/isolation.md``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError, ProtocolError, VafError
from vaf.host.ebtables import EbtablesBackend
from vaf.host.netfilter import (
    DEFAULT_TAP_PATTERN,
    MacRange,
    PortPolicy,
    TapNames,
    check_tap,
    host_lock,
    interfaces,
    normalize_mac,
    parse_macs,
    parse_ranges,
)
from vaf.host.netfilter_verbs import NAME_RE, Firewall
from vaf.host.nft import NftBackend
from vaf.host.privileged_call import DEFAULT_PROGRAM
from vaf.host.runner import Runner
from vaf.one.args import expect_args
from vaf.one.dispatch import Invocation
from vaf.one.log import DriverLog
from vaf.one.xml import VM, Nic

#: extra authorized source MACs a template may ask for (VM-wide, or in one NIC=[...])
EXTRA_MACS = "EXTRA_AUTHORIZED_MACS"
#: conf key prefixes, suffixed by a virtual network id (NIC/NETWORK_ID)
RANGES_PREFIX = "NETWORK_MAC_RANGES_"
NETWORK_EXTRA_PREFIX = "NETWORK_EXTRA_MACS_"
BACKENDS = ("ebtables", "nft")
#: vaf's lock, outside the remotes tree (``onehost sync`` mirrors that with --delete)
LOCK_NAME = ".vaf-isolation.lock"
#: keys of older confs: the programs run as root are named by vaf-privileged's own conf
MOVED_TO_PRIVILEGED_CONF = ("EBTABLES", "EBTABLES_RESTORE", "NFT")


def default_lock_file() -> str:
    return os.path.join(os.path.expanduser("~"), LOCK_NAME)


@dataclass(frozen=True)
class Settings:
    backend: str
    network_ranges: dict[int, tuple[MacRange, ...]]
    vn_mads: tuple[str, ...]  # hook only: NICs it isolates (empty: every NIC)
    lock_file: str = field(default_factory=default_lock_file)
    #: every NIC of network <id> gets these (admin-written: trusted)
    network_extra_macs: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: the only MACs a VM template may name as extra authorized MACs
    allowed_extra_macs: tuple[str, ...] = ()
    #: NIC/EXTRA_AUTHORIZED_MACS comes only from the virtual network (INHERIT_VNET_ATTR) or
    #: oneadmin (VM_RESTRICTED_ATTR): the admin says so with TRUST_NIC_EXTRA_MACS=YES
    trust_nic_extra_macs: bool = False
    tagged_networks: frozenset[int] = frozenset()  # networks meant to carry 802.1Q tags
    tap_names: TapNames = TapNames()
    nft_table: str = "vaf_isolation"
    #: the one privileged entry point, which runs the firewall commands as root
    privileged: str = DEFAULT_PROGRAM

    @classmethod
    def from_config(cls, config: DriverConfig) -> Settings:
        where = f"ALLOWED_EXTRA_MACS in {config.source}"
        settings = cls(
            backend=config.choice("BACKEND", "ebtables", BACKENDS),
            network_ranges=_per_network(config, RANGES_PREFIX, parse_ranges),
            vn_mads=config.list("VN_MADS"),
            lock_file=config.str("LOCK_FILE", default_lock_file()),
            network_extra_macs=_per_network(config, NETWORK_EXTRA_PREFIX, parse_macs),
            allowed_extra_macs=_conf_macs(config.str("ALLOWED_EXTRA_MACS", ""), where),
            trust_nic_extra_macs=config.bool("TRUST_NIC_EXTRA_MACS", False),
            tagged_networks=frozenset(_network_ids(config, "TAGGED_NETWORKS")),
            tap_names=TapNames((DEFAULT_TAP_PATTERN, *config.list("TAP_PATTERNS"))),
            nft_table=config.str("NFT_TABLE", "vaf_isolation"),
            privileged=config.str("PRIVILEGED", DEFAULT_PROGRAM))
        moved = [key for key in MOVED_TO_PRIVILEGED_CONF if key in config.values]
        if moved:
            # fail closed: ignoring EBTABLES=ebtables-legacy would write the other flavour's
            # tables, and the VMs would run unfiltered
            raise ConfigError(f"{', '.join(moved)} in {config.source}: the firewall commands "
                              f"are set in the host's /usr/lib/vaf/privileged.conf now "
                              f"(run as root by {DEFAULT_PROGRAM}); remove the line")
        if not NAME_RE.fullmatch(settings.nft_table):
            raise ConfigError(f"NFT_TABLE in {config.source} must be 1 to 64 letters, digits "
                              f"or '_', got {settings.nft_table!r}")
        if settings.tagged_networks and settings.backend != "nft":
            raise ConfigError(f"TAGGED_NETWORKS in {config.source}: networks carrying 802.1Q "
                              "tags need BACKEND=nft (ebtables cannot check tagged ARP)")
        return settings

    def backend_for(self, runner: Runner) -> EbtablesBackend | NftBackend:
        firewall = Firewall(runner, self.privileged)
        if self.backend == "nft":
            return NftBackend(firewall, self.nft_table)
        return EbtablesBackend(firewall)


def _conf_macs(text: str, what: str) -> tuple[str, ...]:
    try:
        return parse_macs(text, what)
    except ProtocolError as err:
        raise ConfigError(err.reason) from None


def _per_network(config: DriverConfig, prefix: str, parse) -> dict[int, tuple]:
    values = {}
    for key, value in config.values.items():
        if not key.startswith(prefix):
            continue
        suffix = key[len(prefix):]
        if not suffix.isdigit():
            raise ConfigError(f"{key} in {config.source}: expected {prefix}<network id>")
        try:
            values[int(suffix)] = parse(value, f"{key} in {config.source}")
        except ProtocolError as err:
            raise ConfigError(err.reason) from None
    return values


def _network_ids(config: DriverConfig, key: str) -> list[int]:
    items = config.list(key)
    if not all(item.isdigit() for item in items):
        raise ConfigError(f"{key} in {config.source}: expected virtual network ids")
    return [int(item) for item in items]


def network_of(nic: Nic, mac: str, settings: Settings) -> tuple[str, tuple[MacRange, ...]]:
    """The key and MAC ranges of the NIC's network: configured ranges, else the MAC prefix."""
    if nic.network_id is not None and nic.network_id in settings.network_ranges:
        return f"n{nic.network_id}", settings.network_ranges[nic.network_id]
    prefix = MacRange.prefix_of(mac)
    return f"p{prefix.first >> 8:010x}", (prefix,)


def own_tap(vm: VM, nic: Nic, settings: Settings) -> str:
    """The NIC's tap: its TARGET, which must be a name of this very NIC (``one-<vmid>-<nic>``
    or an admin's pattern), so that no template can point vaf at another VM's port."""
    where = f"VM {vm.vm_id} NIC {nic.nic_id}"
    if not nic.target:
        raise ProtocolError(f"{where} has no TARGET (tap device): cannot isolate it")
    tap = check_tap(nic.target, f"{where}: TARGET")
    if settings.tap_names.owner(tap) != (vm.vm_id, nic.nic_id):
        expected = default_tap(vm, nic)
        raise ProtocolError(f"{where}: TARGET {tap} is not this NIC's tap name ({expected}, "
                            "or TAP_PATTERNS in the conf): refusing to touch it")
    return tap


def default_tap(vm: VM, nic: Nic) -> str:
    return DEFAULT_TAP_PATTERN.format(vmid=vm.vm_id, nic=nic.nic_id)


def extra_macs(vm: VM, nic: Nic, settings: Settings) -> tuple[str, ...]:
    """The NIC's extra authorized MACs: the admin's, and those a template asks for when the
    admin's allow-list has them (a template is written by a cloud user)."""
    where = f"VM {vm.vm_id} NIC {nic.nic_id}"
    trusted = list(settings.network_extra_macs.get(nic.network_id, ()))
    requested = list(parse_macs(vm.attribute(EXTRA_MACS), f"VM {vm.vm_id}: {EXTRA_MACS} item"))
    from_nic = parse_macs(nic.attrs.get(EXTRA_MACS), f"{where}: {EXTRA_MACS} item")
    (trusted if settings.trust_nic_extra_macs else requested).extend(from_nic)
    refused = [mac for mac in requested if mac not in settings.allowed_extra_macs]
    if refused:
        raise ProtocolError(f"{where}: {EXTRA_MACS} names {', '.join(refused)}, which the "
                            "admin's ALLOWED_EXTRA_MACS does not list")
    return tuple(dict.fromkeys(trusted + requested))


def port_policy(vm: VM, nic: Nic, settings: Settings) -> PortPolicy:
    where = f"VM {vm.vm_id} NIC {nic.nic_id}"
    tap = own_tap(vm, nic, settings)
    mac = normalize_mac(nic.mac or "", f"{where}: MAC")
    key, ranges = network_of(nic, mac, settings)
    ip = nic.ip or None
    if ip is not None:
        _check_ipv4(ip, where)
    return PortPolicy(tap=tap, mac=mac, ip=ip, network=key, ranges=ranges,
                      extra_macs=extra_macs(vm, nic, settings),
                      tagged=nic.network_id in settings.tagged_networks)


def _check_ipv4(ip: str, where: str) -> None:
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ProtocolError(f"{where}: IP {ip!r} is not an IPv4 address") from None


def selected_nics(vm: VM, vn_mads: Sequence[str]) -> list[Nic]:
    return [nic for nic in vm.nics if not vn_mads or nic.vn_mad in vn_mads]


def attaching(nics: Sequence[Nic]) -> list[Nic]:
    """NICs being hot-(de)attached: then oned expects only those to be touched."""
    return [nic for nic in nics if nic.attrs.get("ATTACH", "").upper() == "YES"]


@dataclass(frozen=True)
class Isolation:
    """The two operations, given the VM and the NICs this caller is responsible for."""

    settings: Settings
    runner: Runner
    log: DriverLog

    @property
    def backend(self) -> EbtablesBackend | NftBackend:
        return self.settings.backend_for(self.runner)

    def apply(self, vm: VM, nics: Sequence[Nic]) -> int:
        nics = attaching(nics) or list(nics)
        policies = [port_policy(vm, nic, self.settings) for nic in nics]  # all checked first
        if not policies:
            self.log.info("no NIC to isolate")
            return 0
        with host_lock(self.settings.lock_file):
            self.backend.apply(policies)
        for policy in policies:
            self.log.info(f"isolated {policy.tap} ({policy.mac}, network {policy.network}, "
                          f"{len(policy.extra_macs)} extra MACs) with {self.backend.name}")
        return 0

    def block(self, vm: VM, nics: Sequence[Nic]) -> list[str]:
        """Make the VM's taps drop every frame (its rules cannot be built, it runs already).

        Its taps: each NIC's ``one-<vmid>-<nic>``, its TARGET when that is a name of the
        NIC, and a TARGET naming no VM's port that carries no vaf rules (the tap the running
        VM got); never a port with another VM's rules.
        """
        backend = self.backend
        with host_lock(self.settings.lock_file):
            taps = set()
            for nic in attaching(nics) or list(nics):
                taps.add(default_tap(vm, nic))
                target = _usable_name(nic.target)
                owner = self.settings.tap_names.owner(target) if target else None
                if target and (owner == (vm.vm_id, nic.nic_id)
                               or (owner is None and not backend.has_rules(target))):
                    taps.add(target)
            backend.apply([PortPolicy.blocking(tap) for tap in sorted(taps)])
        return sorted(taps)

    def clean(self, vm: VM, nics: Sequence[Nic]) -> int:
        """Remove the rules of the VM's taps: its NICs' taps, and taps named as this VM's
        that have rules (a NIC detached while the driver was not told). On hot-detach only
        the detached NIC. A TARGET naming someone else's tap is left alone."""
        detaching = attaching(nics)
        targets = set()
        for nic in detaching or nics:
            targets.add(default_tap(vm, nic))
            target = _usable_name(nic.target)
            if target and self.settings.tap_names.owner(target) == (vm.vm_id, nic.nic_id):
                targets.add(target)
            elif target and target != default_tap(vm, nic):
                self.log.warn(f"NIC {nic.nic_id}: TARGET {target} is not this NIC's tap: "
                              "left alone")
        with host_lock(self.settings.lock_file):
            cleaned = self.backend.clean(targets, None if detaching else vm.vm_id,
                                         self.settings.tap_names,
                                         self._policies_if_any(vm, detaching or nics))
        self.log.info(f"removed the rules of {', '.join(sorted(cleaned)) or 'no tap'}")
        return 0

    def _policies_if_any(self, vm: VM, nics: Sequence[Nic]) -> list[PortPolicy]:
        """The policies the template gives its NICs, as far as it can (clean never fails on
        a bad template; the backend reads the kernel for what it cannot vouch for)."""
        policies = []
        for nic in nics:
            try:
                policies.append(port_policy(vm, nic, self.settings))
            except VafError:
                continue
        return policies

    def sweep(self) -> set[str]:
        with host_lock(self.settings.lock_file):
            return self.backend.sweep(interfaces(self.runner))


def _usable_name(name: str | None) -> str | None:
    try:
        return check_tap(name)
    except ProtocolError:
        return None


def isolation_for(inv: Invocation, log: DriverLog) -> Isolation:
    return Isolation(Settings.from_config(inv.config), inv.runner, log)


def _vm(payload: str | bytes, log: DriverLog) -> VM:
    vm = VM.from_payload(payload, "VM template")
    log.vmid = vm.vm_id
    return vm


# -- the hook ------------------------------------------------------------------------------

def hook(inv: Invocation, log: DriverLog) -> int:
    """``vaf-isolation <base64 VM XML> apply|clean`` (onehook state hook, REMOTE=YES)."""
    args = expect_args(inv.args, ["TEMPLATE", "MODE"], "vaf-isolation")
    mode = args["MODE"]
    if mode not in ("apply", "clean"):
        raise ProtocolError(f"vaf-isolation: MODE must be apply or clean, got {mode!r}")
    vm = _vm(args["TEMPLATE"], log)
    isolation = isolation_for(inv, log)
    nics = selected_nics(vm, isolation.settings.vn_mads)
    if mode == "clean":
        return isolation.clean(vm, nics)
    try:
        return isolation.apply(vm, nics)
    except VafError as err:
        # The VM runs already (the hook is asynchronous): fail closed, not open.
        try:
            blocked = isolation.block(vm, nics)
        except VafError as block_err:
            raise type(err)(f"{err.reason}; blocking its taps failed too: "
                            f"{block_err.reason}") from None
        raise type(err)(f"{err.reason}; every frame of {', '.join(blocked)} is dropped "
                        "until its rules can be built") from None


def _sweep_config(inv: Invocation) -> DriverConfig:
    """The conf of the form in use: the hook's, or with ``vaf-isolation-sweep <VN_MAD>`` the
    network driver's (``etc/vnm/<VN_MAD>/<VN_MAD>.conf``), whose BACKEND made the rules."""
    if not inv.args:
        return inv.config
    vn_mad = expect_args(inv.args, ["VN_MAD"], "vaf-isolation-sweep")["VN_MAD"]
    if not re.fullmatch(r"[A-Za-z0-9_]+", vn_mad):
        raise ProtocolError(f"vaf-isolation-sweep: VN_MAD must be a driver name, got {vn_mad!r}")
    path = os.path.join(inv.remotes, "etc", "vnm", vn_mad, f"{vn_mad}.conf")
    if not os.path.isfile(path):
        raise ConfigError(f"vaf-isolation-sweep: no conf {path} for VN_MAD {vn_mad}")
    return load_config(path, inv.environ)


def sweep(inv: Invocation, log: DriverLog) -> int:
    """``vaf-isolation-sweep [<VN_MAD>]``: remove the rules of taps that no longer exist here.

    For VMs that died without clean (host crash, migration away, hook not run); meant for a
    cron job or a systemd timer on each hypervisor, and run by ``vaf isolation sweep``.
    """
    settings = Settings.from_config(_sweep_config(inv))
    removed = Isolation(settings, inv.runner, log).sweep()
    log.info(f"removed the rules of {len(removed)} vanished taps"
             + (f": {', '.join(sorted(removed))}" if removed else ""))
    return 0


# -- the VNM driver ------------------------------------------------------------------------

def _driver_nics(inv: Invocation, log: DriverLog) -> tuple[VM, list[Nic]]:
    """The VM from stdin and its NICs of this VN_MAD (the directory name, as oned runs it)."""
    vm = _vm(inv.read_stdin("VM payload"), log)
    return vm, selected_nics(vm, (inv.driver,))


def post(inv: Invocation, log: DriverLog) -> int:
    """``post <deploy_id> <host>``: the tap exists now; isolate it."""
    expect_args(inv.args, ["DEPLOY_ID", "HOST"], "post")
    vm, nics = _driver_nics(inv, log)
    return isolation_for(inv, log).apply(vm, nics)


def update_nic(inv: Invocation, log: DriverLog) -> int:
    """A NIC's attributes changed (extra MACs, say): re-apply, which is idempotent."""
    vm, nics = _driver_nics(inv, log)
    return isolation_for(inv, log).apply(vm, nics)


def clean(inv: Invocation, log: DriverLog) -> int:
    """``clean <host>``: the VM left this host (or a NIC was detached)."""
    vm, nics = _driver_nics(inv, log)
    return isolation_for(inv, log).clean(vm, nics)


def nothing(inv: Invocation, log: DriverLog) -> int:
    """Actions with nothing to isolate (no tap yet, or about virtual networks, not VMs)."""
    inv.read_stdin()  # oned writes the payload anyway; read it so its write never fails
    return 0


HOOK_ACTIONS = {"vaf-isolation": hook, "vaf-isolation-sweep": sweep}

VNM_ACTIONS = {
    "pre": nothing,
    "post": post,
    "clean": clean,
    "update_sg": nothing,  # security groups are not this driver's business
    "update_nic": update_nic,
    "vnet_create": nothing,
    "vnet_delete": nothing,
}

ACTIONS = {**HOOK_ACTIONS, **VNM_ACTIONS}
