"""``vaf cpu squeeze|release|status``: CPU priority of whole virtual clusters, on every host.

The VMs come from OpenNebula's CLI (``onevm list -x``; ``onevm show -x`` for template
attributes, which the pool listing does not carry in full), selected by user, group, template
attribute and/or id. Then one ssh call per host, all hosts in parallel, runs
``host-command cpu-<verb>`` (:mod:`vaf.one.remote`), which has the privileged entry point do
the work as root; it reports every VM, and a VM that has gone away is skipped, not an error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import click

from vaf.drivers.cpu import CONF, Settings, apply_request, describe
from vaf.drivers.cpu_host import report_of
from vaf.errors import VafError
from vaf.host.runner import Runner
from vaf.one import remote
from vaf.one.xml import VM, parse_xml

DEFAULT_CONF = f"/var/lib/one/remotes/{CONF}"
ACTIVE = 3  # VM STATE ACTIVE: the only state with a qemu process on a host


@dataclass(frozen=True)
class PoolVm:
    """What the pool listing says about one VM."""

    vm_id: int
    uid: str
    gid: str
    uname: str
    gname: str
    state: int
    host: str | None


def _text(node, path: str) -> str:
    found = node.find(path)
    return (found.text or "").strip() if found is not None else ""


def parse_pool(xml: str) -> list[PoolVm]:
    """``onevm list -x`` output: ``<VM_POOL><VM>...`` (the short body oned sends for pools)."""
    root = parse_xml(xml, "onevm list -x output")
    vms = []
    for node in root.iterfind("VM"):
        hosts = [_text(h, "HOSTNAME") for h in node.iterfind("HISTORY_RECORDS/HISTORY")]
        state = _text(node, "STATE")
        vms.append(PoolVm(vm_id=int(_text(node, "ID")), uid=_text(node, "UID"),
                          gid=_text(node, "GID"), uname=_text(node, "UNAME"),
                          gname=_text(node, "GNAME"),
                          state=int(state) if state.isdigit() else -1,
                          host=hosts[-1] if hosts and hosts[-1] else None))
    return vms


@dataclass(frozen=True)
class Selection:
    users: tuple[str, ...]
    groups: tuple[str, ...]
    attrs: tuple[tuple[str, str], ...]
    vmids: tuple[int, ...]

    def __bool__(self) -> bool:
        return bool(self.users or self.groups or self.attrs or self.vmids)

    def listed(self, vm: PoolVm) -> bool:
        """The conditions the pool listing can decide (all given ones must hold)."""
        return ((not self.users or vm.uname in self.users or vm.uid in self.users)
                and (not self.groups or vm.gname in self.groups or vm.gid in self.groups)
                and (not self.vmids or vm.vm_id in self.vmids))


class Cluster:
    """The selected VMs of a virtual cluster and the hosts they run on."""

    def __init__(self, settings: Settings, runner: Runner, echo: Callable[[str], None]):
        self.settings = settings
        self.runner = runner
        self.echo = echo
        self.placement: dict[int, str] = {}  # vmid -> host, of every ACTIVE VM oned lists

    def _onevm(self, *args: str) -> str:
        return self.runner.output([*self.settings.onevm, *args])

    def select(self, selection: Selection) -> dict[str, list[int]]:
        """{host: [vmid, ...]} of the selected VMs that are ACTIVE; the others are reported."""
        pool = parse_pool(self._onevm("list", "-x"))
        self.placement = {vm.vm_id: vm.host for vm in pool if vm.state == ACTIVE and vm.host}
        candidates = [vm for vm in pool if selection.listed(vm)]
        if selection.attrs:
            with ThreadPoolExecutor(self.settings.parallel) as pool:
                keep = list(pool.map(lambda vm: self._has_attrs(vm, selection.attrs),
                                     candidates))
            candidates = [vm for index, vm in enumerate(candidates) if keep[index]]
        by_host: dict[str, list[int]] = {}
        for vm in candidates:
            if vm.state != ACTIVE or not vm.host:
                if selection:  # a plain `status` would list every stopped VM of the cloud
                    self.echo(f"{vm.vm_id:>6}  {'-':<12}  skipped: not active "
                              f"(state {vm.state})")
                continue
            by_host.setdefault(vm.host, []).append(vm.vm_id)
        missing = set(selection.vmids) - {vm.vm_id for vm in candidates}
        for vmid in sorted(missing):
            self.echo(f"{vmid:>6}  {'-':<12}  skipped: no such VM in the selection")
        return by_host

    def _has_attrs(self, vm: PoolVm, attrs: Sequence[tuple[str, str]]) -> bool:
        if vm.state != ACTIVE:
            return True  # reported as not active; no need to ask oned for its template
        full = VM.from_element(parse_xml(self._onevm("show", "-x", str(vm.vm_id)),
                                         f"onevm show -x {vm.vm_id} output"))
        return all(full.attribute(key) == value for key, value in attrs)

    def on_hosts(self, by_host: dict[str, list[int]], verb: str, request: dict | None = None,
                 with_ids: bool = True) -> list[dict]:
        """Run ``verb`` on every host at once; print each VM's line; return all results."""
        def one(host: str) -> tuple[str, list[dict] | str]:
            wanted = {**(request or {}), "vmids": by_host[host] if with_ids else []}
            try:
                result = remote.call(self.runner.on(host), f"cpu-{verb}",
                                     self.settings.host_params(wanted),
                                     remotes=self.settings.host_remotes,
                                     python=(self.settings.python, "-S"), stream=_Quiet())
            except VafError as err:
                return host, err.reason
            report = report_of(result.stdout)
            return host, report if report is not None else "no report from host-command"

        results: list[dict] = []
        with ThreadPoolExecutor(min(self.settings.parallel, max(1, len(by_host)))) as pool:
            for host, outcome in pool.map(one, sorted(by_host)):
                if isinstance(outcome, str):
                    self.echo(f"{'-':>6}  {host:<12}  failed: {outcome}")
                    results.append({"host": host, "status": "error", "reason": outcome})
                    continue
                for vm in outcome:
                    if not with_ids and self.placement.get(vm["vmid"], host) != host:
                        continue  # oned runs it elsewhere now: a left-over, not in force here
                    self.echo(f"{vm['vmid']:>6}  {host:<12}  {describe(vm)}")
                    results.append({"host": host, **vm})
        return results


class _Quiet:
    """The admin command prints one line per VM: the host's tagged log lines are not shown."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# --- click ----------------------------------------------------------------------------------

def _attr(_ctx, _param, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}")
        pairs.append((key, wanted))
    return tuple(pairs)


def _selection_options(function):
    for option in reversed([
        click.option("--conf", default=DEFAULT_CONF, show_default=True,
                     help="vaf CPU priority conf (classes, onevm, ssh, host paths)"),
        click.option("--user", "users", multiple=True, help="VMs of this user (name or id)"),
        click.option("--group", "groups", multiple=True, help="VMs of this group (name or id)"),
        click.option("--attr", "attrs", multiple=True, callback=_attr, metavar="KEY=VALUE",
                     help="VMs whose template has KEY=VALUE (USER_TEMPLATE, then TEMPLATE)"),
        click.option("--json", "as_json", is_flag=True, help="print the results as JSON"),
        click.argument("vmids", nargs=-1, type=click.IntRange(min=0)),
    ]):
        function = option(function)
    return function


def _run(conf: str, as_json: bool, body: Callable[[Cluster], list[dict]]) -> None:
    lines: list[str] = []
    echo = lines.append if as_json else click.echo
    try:
        settings = Settings.load(conf)
        results = body(Cluster(settings, settings.runner, echo))
    except VafError as err:
        click.echo(f"vaf cpu: {err.reason}", err=True)
        sys.exit(err.exit_code)
    if as_json:
        click.echo(json.dumps(results, indent=1, sort_keys=True))
    if any(r["status"] == "error" for r in results):
        sys.exit(1)


def _require(selection: Selection) -> Selection:
    if not selection:
        raise click.UsageError("select VMs with --user, --group, --attr or VM ids "
                               "(refusing to act on every VM)")
    return selection


@click.group()
def cpu() -> None:
    """CPU priority of virtual clusters (nice of every qemu thread + cgroup CPU weight)."""


@cpu.command()
@click.option("--class", "class_name", default=None,
              help="priority class from the conf (default: SQUEEZE_CLASS)")
@_selection_options
def squeeze(class_name, conf, users, groups, attrs, as_json, vmids) -> None:
    """Give the selected VMs a priority class (SQUEEZE_CLASS) on every host at once."""
    selection = _require(Selection(users, groups, attrs, vmids))

    def body(cluster: Cluster) -> list[dict]:
        priority = cluster.settings.priority(class_name or cluster.settings.squeeze_class,
                                             "--class")
        return cluster.on_hosts(cluster.select(selection), "apply",
                                apply_request(priority, "squeeze", []))
    _run(conf, as_json, body)


@cpu.command()
@_selection_options
def release(conf, users, groups, attrs, as_json, vmids) -> None:
    """Undo the squeeze: the template's class again, or the exact original values."""
    selection = _require(Selection(users, groups, attrs, vmids))
    _run(conf, as_json, lambda cluster: cluster.on_hosts(cluster.select(selection), "release"))


@cpu.command()
@_selection_options
def status(conf, users, groups, attrs, as_json, vmids) -> None:
    """What is in force now; without a selection, every VM vaf changed, on every host."""
    selection = Selection(users, groups, attrs, vmids)

    def body(cluster: Cluster) -> list[dict]:
        by_host = cluster.select(selection)
        results = cluster.on_hosts(by_host, "status", with_ids=bool(selection))
        if not results and not selection:
            cluster.echo("no VM has a CPU priority set by vaf")
        return results
    _run(conf, as_json, body)
