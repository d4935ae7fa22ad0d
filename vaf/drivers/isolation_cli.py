"""``vaf isolation show|sweep``: look at and tidy the isolation rules of this hypervisor."""

from __future__ import annotations

import click

from vaf.config import load_config
from vaf.drivers.isolation import Isolation, Settings
from vaf.host.runner import Runner
from vaf.one.log import DriverLog, run_main

DEFAULT_REMOTES = "/var/tmp/one"  # where oned copies the remotes tree on hypervisors
CONF = "etc/vnm/vaf_isolation/vaf_isolation.conf"


def _isolation(remotes: str, conf: str | None, log: DriverLog) -> Isolation:
    path = conf or f"{remotes}/{CONF}"
    settings = Settings.from_config(load_config(path))
    return Isolation(settings, Runner(), log)


@click.group()
def isolation() -> None:
    """Ethernet isolation of virtual clusters (ebtables / nftables rules of this host)."""


_remotes = click.option("--remotes", default=DEFAULT_REMOTES, show_default=True,
                        help="remotes tree whose conf to use")
_conf = click.option("--conf", default=None, help="conf file (default: the VNM driver's)")


@isolation.command()
@_remotes
@_conf
def sweep(remotes: str, conf: str | None) -> None:
    """Remove the rules of taps that no longer exist."""
    log = DriverLog("isolation/sweep")

    def action(lg: DriverLog) -> int:
        removed = _isolation(remotes, conf, lg).sweep()
        click.echo(" ".join(sorted(removed)) or "nothing to remove")
        return 0

    raise SystemExit(run_main(action, log))


@isolation.command()
@_remotes
@_conf
def show(remotes: str, conf: str | None) -> None:
    """Print the isolated taps and the backend's rules."""
    log = DriverLog("isolation/show")

    def action(lg: DriverLog) -> int:
        backend = _isolation(remotes, conf, lg).backend
        taps = backend.isolated_taps()
        click.echo(f"backend: {backend.name}")
        click.echo(f"isolated taps: {' '.join(sorted(taps or ())) or '-'}")
        click.echo(backend.ruleset())
        return 0

    raise SystemExit(run_main(action, log))
