"""Host-side entry point: ``python3 <remotes>/vaf/host-command <provider>-<action> <json>``.

A front-end driver action that must act on a hypervisor makes exactly one ssh call running
this (:mod:`vaf.one.remote`), with every parameter in one JSON argument (built by the
front-end, quoted by the runner, so nothing reaches a shell). The host-side function logs
tagged lines and fails with one reason line through :func:`vaf.one.log.run_main`, exactly like
a driver, so the front-end can relay its stderr to oned unchanged.

The registry's ``HOST_COMMANDS`` (``vaf/drivers/registry.py``) says which module serves which
command prefix. stdlib only: this runs with Debian's python3 on hypervisors, on every clone,
so it imports little (no typing, no dataclasses of its own).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence

from vaf.errors import ProtocolError
from vaf.one.log import DriverLog, run_main

#: see vaf.one.dispatch.REGISTRY: the tables the launchers pass, loaded by name if none is
REGISTRY = "vaf.drivers.registry"

HostFunction = Callable[[Mapping[str, object], DriverLog], "int | None"]


def resolve(command: str, registry=None) -> HostFunction:
    provider, _, action = command.partition("-")
    registry = registry or importlib.import_module(REGISTRY)
    module_name = registry.HOST_COMMANDS.get(provider)
    if module_name is None or not action:
        raise ProtocolError(f"unknown host command {command!r}")
    commands: Mapping[str, HostFunction] = importlib.import_module(module_name).COMMANDS
    try:
        return commands[action]
    except KeyError:
        raise ProtocolError(f"unknown host command {command!r} (known: "
                            f"{', '.join(provider + '-' + a for a in sorted(commands))})") from None


def parse_params(text: str) -> dict[str, object]:
    try:
        params = json.loads(text)
    except ValueError as err:
        raise ProtocolError(f"host command parameters are not valid JSON: {err}") from None
    if not isinstance(params, dict):
        raise ProtocolError("host command parameters must be a JSON object")
    return params


def _origin(command: str) -> str:
    return command.replace("-", "/", 1)


def main(argv: Sequence[str], registry=None) -> int:
    command = argv[0] if argv else ""
    log = DriverLog(_origin(command) if command else "host-command")

    def run(lg: DriverLog) -> int | None:
        if len(argv) != 2:
            raise ProtocolError("usage: host-command <provider>-<action> <json parameters>")
        params = parse_params(argv[1])
        vmid = params.get("vmid")
        lg.vmid = vmid if isinstance(vmid, int) else None
        return resolve(command, registry)(params, lg)

    return run_main(run, log)
