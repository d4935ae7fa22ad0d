"""Host monitoring and the scheduler's datastore check, as OpenNebula 6.10 and 7.x do them.

For a system datastore that is **not shared** (lvmsnap's: each host has its own volume group)
oned never runs the TM's ``monitor``: the free space the scheduler sees is per host, from the
host's monitoring. This module reproduces that path:

1. **Probes.** ``monitord-client.rb`` runs, on the host, every executable regular file of
   ``<remotes>/im/<hypervisor>-probes.d/host/system/`` in sorted name order, with the host's
   monitoring configuration XML on stdin, and concatenates their stdout. A probe that exits
   non-zero fails the whole run (``Error executing <probe>: <stderr>``): the host's
   monitoring then fails, so a probe must never exit non-zero for a passing condition.
2. **Host share.** oned (``HostShareDatastore::set_monitorization``) takes
   ``DS_LOCATION_FREE_MB`` as the host's ``FREE_DISK`` and every ``DS = [ ID, USED_MB,
   TOTAL_MB, FREE_MB ]`` vector as ``HOST_SHARE/DATASTORES/DS``. The stock probe
   (``monitor_ds.rb``) reports a DS only where ``<ds dir>/.monitor`` exists, with ``df``.
3. **Scheduler.** For a non-shared system DS, ``HostXML::test_ds_capacity`` lets a VM on a
   host only when ``vm_disk_mb < FREE_MB`` of that DS on that host (the host's ``FREE_DISK``
   when the host reports no entry for it; the last entry of an ID wins). ``vm_disk_mb`` is the
   VM's system-DS usage: the SIZE of each volatile disk and of each disk whose TM target is
   SYSTEM (``VirtualMachineDisk::system_ds_size``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vaf.host.runner import Runner

PROBES_DIR = "im/{hypervisor}-probes.d/host/system"

# Runs on the host: ProbeRunner#run_probes, in Python so that it needs only the host's python3.
_RUN_PROBES = r"""
import os, subprocess, sys
path, stdin = sys.argv[1], sys.stdin.buffer.read()
data = b""
for probe in sorted(os.listdir(path)):
    probe_path = os.path.join(path, probe)
    if not os.path.isfile(probe_path) or not os.access(probe_path, os.X_OK):
        continue
    done = subprocess.run([probe_path], input=stdin, capture_output=True)
    data += done.stdout
    if done.returncode != 0:
        sys.stdout.write("Error executing %s: %s" % (probe, done.stderr.decode("ascii", "replace")))
        sys.exit(255)
sys.stdout.buffer.write(data)
"""

_TOKEN = re.compile(r'\s*(?:(?P<name>[A-Za-z0-9_]+)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<sym>[=\[\],]))')


class ProbeFailure(RuntimeError):
    """The host's probes failed: its monitoring fails (the host goes to ERROR in oned)."""


def run_system_probes(runner: Runner, remotes: str, config_xml: str = "<HOST_MONITORING/>",
                      hypervisor: str = "kvm") -> str:
    """The concatenated stdout of the host's system probes, as monitord-client collects it."""
    probes = f"{remotes.rstrip('/')}/{PROBES_DIR.format(hypervisor=hypervisor)}"
    result = runner.run(["python3", "-c", _RUN_PROBES, probes], input=config_xml.encode(),
                        check=False)
    if result.returncode != 0:
        raise ProbeFailure(result.stdout.strip() or result.stderr.strip())
    return result.stdout


def parse_template(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """OpenNebula template text → ``[(NAME, value or {KEY: value})]`` in document order."""
    tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKEN.finditer(text)]
    items: list[tuple[str, str | dict[str, str]]] = []
    i = 0
    while i < len(tokens):
        kind, name = tokens[i]
        if kind != "name" or i + 2 >= len(tokens) or tokens[i + 1] != ("sym", "="):
            raise ValueError(f"not an OpenNebula template near token {i}: {name!r}")
        if tokens[i + 2] == ("sym", "["):
            vector, i = _vector(tokens, i + 3)
            items.append((name.upper(), vector))
        else:
            items.append((name.upper(), _value(tokens[i + 2])))
            i += 3
    return items


def _vector(tokens: Sequence[tuple[str, str]], i: int) -> tuple[dict[str, str], int]:
    vector: dict[str, str] = {}
    while tokens[i] != ("sym", "]"):
        if tokens[i] == ("sym", ","):
            i += 1
            continue
        key = tokens[i][1]
        if tokens[i + 1] != ("sym", "="):
            raise ValueError(f"vector attribute {key!r} without '='")
        vector[key.upper()] = _value(tokens[i + 2])
        i += 3
    return vector, i + 1


def _value(token: tuple[str, str]) -> str:
    kind, text = token
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "name":
        return text
    raise ValueError(f"unexpected {text!r} where a value belongs")


@dataclass(frozen=True)
class HostShare:
    """What the scheduler reads of one host: ``FREE_DISK`` and each local system DS's FREE_MB."""

    free_disk: int = 0
    ds_free: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def from_monitoring(cls, text: str) -> HostShare:
        free_disk, ds_free = 0, {}
        for name, value in parse_template(text):
            if name == "DS_LOCATION_FREE_MB" and isinstance(value, str):
                free_disk = int(value)
            elif name == "DS" and isinstance(value, dict) and "ID" in value:
                ds_free[int(value["ID"])] = int(value.get("FREE_MB", "0"))  # last one wins
        return cls(free_disk, ds_free)


@dataclass(frozen=True)
class Disk:
    size_mb: int
    volatile: bool = False
    tm_target: str = "SYSTEM"  # CLONE_TARGET or LN_TARGET of the TM_MAD_CONF, by persistence


def system_ds_usage(disks: Iterable[Disk]) -> int:
    """VirtualMachineDisks's system-DS usage: volatile disks and disks targeted at SYSTEM."""
    return sum(d.size_mb for d in disks if d.volatile or d.tm_target == "SYSTEM")


def test_ds_capacity(share: HostShare, ds_id: int, vm_disk_mb: int) -> bool:
    """HostXML::test_ds_capacity for a non-shared system datastore."""
    return vm_disk_mb < share.ds_free.get(ds_id, share.free_disk)


test_ds_capacity.__test__ = False  # a model of the scheduler, not a pytest test


def eligible_hosts(shares: Mapping[str, HostShare], ds_id: int, vm_disk_mb: int) -> list[str]:
    """The hosts the scheduler may dispatch the VM to, as far as system-DS space goes."""
    return [host for host, share in shares.items() if test_ds_capacity(share, ds_id, vm_disk_mb)]
