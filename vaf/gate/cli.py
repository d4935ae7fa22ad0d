"""``vaf gate``: the forced command (``serve``) and the admin's ``authorized-keys`` printer."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

import click

from vaf.errors import VafError
from vaf.gate.gate import DEFAULT_CONFIG, serve
from vaf.gate.keys import authorized_keys_line

#: the gate's own command, installed beside ``vaf`` by install.sh (head) and by pip
GATE_COMMAND = "vaf-gate"


def default_program() -> list[str]:
    """How the forced command starts the gate unless the admin says otherwise: the
    ``vaf-gate`` beside this ``vaf`` or on PATH (install.sh's wrapper puts the package on the
    path itself: a plain ``python3 -m vaf.gate`` could not import it), else this Python with
    this package (a virtualenv's ``vaf`` run by its full path)."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), GATE_COMMAND)
    for candidate in (beside, shutil.which(GATE_COMMAND)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [os.path.abspath(candidate)]
    return [sys.executable, "-m", "vaf.gate"]


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
@click.option("--program", default=None,
              help="command that runs the gate's click group on the head node "
                   "[default: the installed vaf-gate]")
def authorized_keys_command(key_file, from_patterns, config_path: str,
                            program: str | None) -> None:
    """Print the authorized_keys line for the restricted account."""
    argv = shlex.split(program) if program else default_program()
    try:
        line = authorized_keys_line(key_file.read(), from_patterns, argv, config_path)
    except VafError as err:
        raise click.ClickException(err.reason) from None
    click.echo(line)
