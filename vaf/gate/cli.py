"""``vaf gate``: the forced command (``serve``) and the admin's ``authorized-keys`` printer."""

from __future__ import annotations

import shlex
import sys

import click

from vaf.errors import VafError
from vaf.gate.gate import DEFAULT_CONFIG, serve
from vaf.gate.keys import authorized_keys_line

#: how the forced command starts the gate unless the admin says otherwise: this Python with
#: this package, so the line works wherever ``vaf`` itself is installed
DEFAULT_PROGRAM = (sys.executable, "-m", "vaf.gate")


@click.group(name="gate")
def gate() -> None:
    """Workers join the batch system over ssh through this restricted gate."""


@gate.command(name="serve")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              help="gate.conf with BACKEND, QMGR/SCONTROL, TIMEOUT, HOSTS_FILE, ...")
def serve_command(config_path: str) -> None:
    """Forced command: handle SSH_ORIGINAL_COMMAND (join <hostname> <cpus> [<properties>])."""
    sys.exit(serve(config_path))


@gate.command(name="authorized-keys")
@click.option("--key", "key_file", type=click.File("r"), required=True,
              help="the workers' public key (the private half goes into the VM context)")
@click.option("--from", "from_patterns", multiple=True, required=True,
              help="address, network or host pattern the workers connect from (repeatable)")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True)
@click.option("--program", default=shlex.join(DEFAULT_PROGRAM), show_default=True,
              help="command that runs the gate's click group on the head node")
def authorized_keys_command(key_file, from_patterns, config_path: str, program: str) -> None:
    """Print the authorized_keys line for the restricted account."""
    try:
        line = authorized_keys_line(key_file.read(), from_patterns, shlex.split(program),
                                    config_path)
    except VafError as err:
        raise click.ClickException(err.reason) from None
    click.echo(line)
