"""``vaf``: the admin's command line (click). Each area adds its commands to :data:`main`.

Subcommand modules are listed in :data:`SUBCOMMANDS` and imported lazily, so
``vaf --help`` stays fast and a missing optional dependency only breaks its own command.
"""

from __future__ import annotations

import importlib

import click

from vaf import __version__

#: command name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, str] = {
    "isolation": "vaf.drivers.isolation_cli:isolation",
    "gate": "vaf.gate.cli:gate",
    "cpu": "vaf.drivers.cpu_cli:cpu",
    "login-server": "vaf.login.cli:login_server",
    "login": "vaf.login.cli:login",
    "elastic": "vaf.elastic.cli:elastic",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in SUBCOMMANDS:
            module, _, attribute = SUBCOMMANDS[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup)
@click.version_option(version=__version__, prog_name="vaf")
def main() -> None:
    """Virtual Analysis Facility drivers for OpenNebula."""
