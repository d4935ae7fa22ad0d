"""Ethernet isolation of virtual clusters: the ebtables hook and the VNM driver.

Two ways OpenNebula can run the same code on the hypervisor:

* the state hook ``remotes/hooks/ebtables/vaf-isolation`` (``ARGUMENTS="$TEMPLATE apply"`` on
  RUNNING, ``"$TEMPLATE clean"`` when the VM leaves it; templates in ``share/hooks/``);
* the network driver ``remotes/vnm/vaf_isolation/`` (``post`` applies, ``clean`` cleans; stdin
  is the base64 VM XML), a drop-in for the ebtables VN_MAD removed in OpenNebula 7.0.

For each NIC (tap = ``NIC/TARGET``): frames reach the VM only from its network's MAC ranges
and from its extra authorized MACs; the VM may only send with its own source MAC and ARP
sender MAC (and ARP sender IP, when the NIC has one). Everything is validated before any rule
is touched. See ``docs/isolation.md`` for the attributes and the conf file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError, ProtocolError
from vaf.host.ebtables import EbtablesBackend
from vaf.host.netfilter import (
    MacRange,
    PortPolicy,
    check_tap,
    host_lock,
    interfaces,
    normalize_mac,
    parse_macs,
    parse_ranges,
)
from vaf.host.nft import NftBackend
from vaf.host.runner import Runner
from vaf.one.args import expect_args
from vaf.one.dispatch import Invocation
from vaf.one.log import DriverLog
from vaf.one.xml import VM, Nic

#: extra authorized source MACs: in a NIC=[...] for that NIC, in the VM template for all NICs
EXTRA_MACS = "EXTRA_AUTHORIZED_MACS"
#: conf key prefix: NETWORK_MAC_RANGES_<network id>="first-last first-last ..."
RANGES_PREFIX = "NETWORK_MAC_RANGES_"
BACKENDS = ("ebtables", "nft")
LOCK_NAME = ".vaf-isolation.lock"
STATE_NAME = ".vaf-isolation"


@dataclass(frozen=True)
class Settings:
    backend: str
    network_ranges: dict[int, tuple[MacRange, ...]]
    vn_mads: tuple[str, ...]  # hook only: NICs it isolates (empty: every NIC)
    lock_file: str
    state_dir: str
    ebtables: str = "ebtables"
    ebtables_restore: str = "ebtables-restore"
    nft: str = "nft"
    nft_table: str = "vaf_isolation"

    @classmethod
    def from_config(cls, config: DriverConfig, remotes: str) -> Settings:
        return cls(backend=config.choice("BACKEND", "ebtables", BACKENDS),
                   network_ranges=_network_ranges(config),
                   vn_mads=config.list("VN_MADS"),
                   lock_file=config.str("LOCK_FILE", os.path.join(remotes, LOCK_NAME)),
                   state_dir=config.str("STATE_DIR", os.path.join(remotes, STATE_NAME)),
                   ebtables=config.str("EBTABLES", "ebtables"),
                   ebtables_restore=config.str("EBTABLES_RESTORE", "ebtables-restore"),
                   nft=config.str("NFT", "nft"),
                   nft_table=config.str("NFT_TABLE", "vaf_isolation"))

    def backend_for(self, runner: Runner) -> EbtablesBackend | NftBackend:
        if self.backend == "nft":
            return NftBackend(runner, self.nft, self.nft_table, self.state_dir)
        return EbtablesBackend(runner, self.ebtables, self.ebtables_restore)


def _network_ranges(config: DriverConfig) -> dict[int, tuple[MacRange, ...]]:
    ranges = {}
    for key, value in config.values.items():
        if not key.startswith(RANGES_PREFIX):
            continue
        suffix = key[len(RANGES_PREFIX):]
        if not suffix.isdigit():
            raise ConfigError(f"{key} in {config.source}: expected {RANGES_PREFIX}<network id>")
        try:
            ranges[int(suffix)] = parse_ranges(value, f"{key} in {config.source}")
        except ProtocolError as err:
            raise ConfigError(err.reason) from None
    return ranges


def network_of(nic: Nic, mac: str, settings: Settings) -> tuple[str, tuple[MacRange, ...]]:
    """The key and MAC ranges of the NIC's network: configured ranges, else the MAC prefix."""
    if nic.network_id is not None and nic.network_id in settings.network_ranges:
        return f"n{nic.network_id}", settings.network_ranges[nic.network_id]
    prefix = MacRange.prefix_of(mac)
    return f"p{prefix.first >> 8:010x}", (prefix,)


def port_policy(vm: VM, nic: Nic, settings: Settings) -> PortPolicy:
    where = f"VM {vm.vm_id} NIC {nic.nic_id}"
    if not nic.target:
        raise ProtocolError(f"{where} has no TARGET (tap device): cannot isolate it")
    tap = check_tap(nic.target, f"{where}: TARGET")
    mac = normalize_mac(nic.mac or "", f"{where}: MAC")
    key, ranges = network_of(nic, mac, settings)
    extra = parse_macs(vm.attribute(EXTRA_MACS), f"VM {vm.vm_id}: {EXTRA_MACS} item")
    extra += parse_macs(nic.attrs.get(EXTRA_MACS), f"{where}: {EXTRA_MACS} item")
    ip = nic.ip or None
    if ip is not None:
        _check_ipv4(ip, where)
    return PortPolicy(tap=tap, mac=mac, ip=ip, network=key, ranges=ranges,
                      extra_macs=tuple(dict.fromkeys(extra)))


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

    def clean(self, vm: VM, nics: Sequence[Nic]) -> int:
        """Remove the rules of the VM's taps: its TARGETs, and ``one-<vmid>-<n>`` taps that
        have rules (a NIC detached while the driver was not told). On hot-detach only the
        detached NIC."""
        detaching = attaching(nics)
        targets = {check_tap(nic.target) for nic in detaching or nics if nic.target}
        with host_lock(self.settings.lock_file):
            cleaned = self.backend.clean(targets, None if detaching else vm.vm_id)
        self.log.info(f"removed the rules of {', '.join(sorted(cleaned)) or 'no tap'}")
        return 0

    def sweep(self) -> set[str]:
        with host_lock(self.settings.lock_file):
            return self.backend.sweep(interfaces(self.runner))


def isolation_for(inv: Invocation, log: DriverLog) -> Isolation:
    return Isolation(Settings.from_config(inv.config, inv.remotes), inv.runner, log)


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
    return isolation.apply(vm, nics) if mode == "apply" else isolation.clean(vm, nics)


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
    settings = Settings.from_config(_sweep_config(inv), inv.remotes)
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
