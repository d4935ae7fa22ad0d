"""``vaf elastic``: the daemon, its status, and Slurm's power-saving entry points.

``resume``, ``suspend`` and ``resume-fail`` are what slurm.conf's ResumeProgram,
SuspendProgram and ResumeFailProgram run (through the ``vaf-elastic-resume`` ... scripts,
since Slurm passes only the node list). They write the request into the state store, nudge
the daemon and return at once: the daemon owns the cloud calls, the quotas and the state.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import click

from vaf.elastic.config import Settings, load_settings
from vaf.errors import VafError

CONF_HELP = "config file (default: $VAF_ELASTIC_CONF or /etc/vaf/elastic.conf)"


def _settings(conf: str | None, **overrides) -> Settings:
    try:
        return load_settings(conf, **overrides)
    except VafError as err:
        raise click.ClickException(err.reason) from None


def make_batch(settings: Settings):
    from vaf.host.runner import Runner

    runner = Runner()
    if settings.batch == "torque":
        from vaf.batch.torque import Torque  # the TORQUE adapter (jobs, nodes, watch)

        accounting = (os.path.join(settings.pbs_home, "server_priv", "accounting")
                      if settings.pbs_home else "")
        return Torque(runner, settings.qmgr, 30.0, settings.pbsnodes, settings.qstat,
                      accounting=accounting,
                      accounting_state=os.path.join(settings.state_dir, "accounting.json"),
                      accounting_poll=settings.accounting_poll)
    from vaf.batch.slurm import SlurmQueue

    env = ["env", f"SLURM_CONF={settings.slurm_conf}"] if settings.slurm_conf else []
    return SlurmQueue(runner, scontrol=(*env, "scontrol"), squeue=(*env, "squeue"),
                      sinfo=(*env, "sinfo"), timeout=20.0)


def make_cloud_factory(settings: Settings):
    def factory():
        from vaf.one.api import Cloud, read_session

        return Cloud(settings.one_xmlrpc, read_session(settings.one_auth or None),
                     settings.owner, timeout=settings.one_timeout)
    return factory


@click.group()
def elastic() -> None:
    """Worker VMs from OpenNebula when jobs wait, gone when idle (daemon: vaf-elastic)."""


@elastic.command()
@click.option("--conf", help=CONF_HELP)
@click.option("--dry-run", is_flag=True, help="log what would be done, change nothing")
@click.option("--foreground", is_flag=True, help="log to stderr instead of journald/syslog")
@click.option("--once", is_flag=True, help="one cycle, then exit")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def run(conf, dry_run, foreground, once, verbose) -> None:
    """Run the daemon (what the systemd unit starts)."""
    from vaf.elastic.daemon import Daemon
    from vaf.elastic.store import Store
    from vaf.host.locks import if_free
    from vaf.service.logs import setup_logging
    from vaf.service.systemd import notify

    settings = _settings(conf, dry_run=dry_run or None)
    log = setup_logging("vaf-elastic", logging.DEBUG if verbose else logging.INFO, foreground)
    store = Store(settings.database)
    with if_free(settings.state_dir, "daemon") as free:
        if not free:
            raise click.ClickException(f"another vaf-elastic runs on {settings.state_dir}")
        daemon = Daemon(settings, store, make_batch(settings), make_cloud_factory(settings))
        if once:
            click.echo(daemon.cycle().summary)
            return
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        signal.signal(signal.SIGINT, lambda *_: daemon.stop())

        def ready() -> None:
            log.info("ready: %s mode, %d..%d VMs of template %d, %s", settings.mode,
                     settings.min_vms, settings.max_vms, settings.template_id,
                     "dry run" if settings.dry_run else "acting")
            notify("READY=1")

        daemon.run(ready)
        notify("STOPPING=1")


def _request(kind: str, conf: str | None, hostlist: tuple[str, ...]) -> None:
    from vaf.elastic.power import request

    try:
        request(kind, conf, hostlist)
    except VafError as err:
        raise click.ClickException(err.reason) from None


def _power_command(kind: str, what: str):
    @click.command(kind, help=f"{what} Returns at once; the daemon does the work.")
    @click.option("--conf", help=CONF_HELP)
    @click.argument("hostlist", nargs=-1, required=True)
    def command(conf, hostlist) -> None:
        _request(kind, conf, hostlist)
    return command


elastic.add_command(_power_command(
    "resume", "Slurm's ResumeProgram: start workers for the nodes of HOSTLIST (w[1-3])."))
elastic.add_command(_power_command(
    "suspend", "Slurm's SuspendProgram: the nodes of HOSTLIST are idle, end their workers."))
elastic.add_command(_power_command(
    "resume-fail", "Slurm's ResumeFailProgram: the nodes of HOSTLIST never came up."))


@elastic.command()
@click.option("--conf", help=CONF_HELP)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(conf, as_json) -> None:
    """Each managed node, its state and age; the last decision and why."""
    from vaf.elastic.daemon import status as read_status
    from vaf.elastic.store import Store

    settings = _settings(conf)
    now = time.time()
    shown = read_status(Store(settings.database), now)
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(f"{'NODE':<16} {'STATE':<10} {'AGE':>8} {'VM':>6}  REASON")
    for node in shown["nodes"]:
        vm = "-" if node["vm_id"] is None else str(node["vm_id"])
        click.echo(f"{node['name']:<16} {node['state']:<10} {_age(node['age']):>8} {vm:>6}  "
                   f"{node['reason']}")
    last = shown["last_decision"]
    if last:
        click.echo(f"last decision {_age(now - last['at'])} ago: {last['why']}")
    if shown["streak"]["failures"]:
        click.echo(f"failed joins in a row: {shown['streak']['failures']} "
                   f"(last: {shown['streak']['last_reason']})")
    if shown["pending_requests"]:
        click.echo(f"requests waiting for the daemon: {len(shown['pending_requests'])}")


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def _entry(args: list[str]):
    def main() -> None:
        elastic.main(args=[*args, *sys.argv[1:]], prog_name=f"vaf elastic {' '.join(args)}")
    return main


daemon_main = _entry(["run"])
# Slurm's programs are the lean vaf.elastic.power (no click on ResumeProgram's path)
