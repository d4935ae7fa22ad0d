"""From an executable's place in OpenNebula's remotes tree to the Python code of the action.

Every executable under ``remotes/`` is the same tiny launcher (``remotes/vaf/dispatch``),
installed under the name oned calls: ``remotes/tm/lvmsnap/clone``,
``remotes/hooks/ebtables/vaf-isolation``, ``remotes/vnm/<drv>/post.d/vaf-cpu-priority``...
The launcher hands its own path and argv to :func:`main`, which finds the driver module in
the registry's ``DRIVERS`` (or ``EXTENSIONS`` for ``<action>.d/`` programs) and runs the
action named by the file name. ``vaf/drivers/registry.py`` is the one place that says which
code serves which file oned runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from vaf.config import DriverConfig, load_config
from vaf.errors import ProtocolError
from vaf.host.runner import DEFAULT_SSH, DEFAULT_SUDO, Runner
from vaf.one.log import DriverLog, run_main
from vaf.one.runtime import load_runtime

#: the registry the launchers pass (module names, see vaf/drivers/registry.py); named here,
#: never imported at module level, so this layer stays below the drivers
REGISTRY = "vaf.drivers.registry"

STDIN_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Invocation:
    """One run of a driver executable: where it lives, what it was called as, its argv."""

    remotes: str  # the remotes root (/var/lib/one/remotes, or /var/tmp/one on hosts)
    kind: str  # tm, vnm, vmm, hooks, datastore, ...
    driver: str  # the directory under remotes/<kind>/
    action: str  # the file name (for extensions: the <action> of <action>.d)
    args: tuple[str, ...]
    program: str | None = None  # extension program name, if any
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    @property
    def origin(self) -> str:
        return f"{self.driver}/{self.action}"

    @property
    def config_path(self) -> str:
        """``remotes/etc/<kind>/<driver>/<driver>.conf``, the place OpenNebula uses."""
        return os.path.join(self.remotes, "etc", self.kind, self.driver, f"{self.driver}.conf")

    @cached_property
    def config(self) -> DriverConfig:
        return load_config(self.config_path, self.environ)

    @cached_property
    def runner(self) -> Runner:
        return Runner(ssh=self.config.argv("SSH", DEFAULT_SSH),
                      sudo_prefix=self.config.argv("SUDO", DEFAULT_SUDO))

    def read_stdin(self, what: str = "stdin payload") -> bytes:
        """The payload oned writes on stdin (base64 XML), bounded in size."""
        data = sys.stdin.buffer.read(STDIN_LIMIT + 1)
        if len(data) > STDIN_LIMIT:
            raise ProtocolError(f"{what} is larger than {STDIN_LIMIT} bytes")
        return data


Action = Callable[[Invocation, DriverLog], "int | None"]


def locate(script: str, argv: Sequence[str],
           environ: Mapping[str, str] | None = None) -> Invocation:
    """Derive kind, driver and action from the script's path inside the remotes tree."""
    path = os.path.abspath(script)
    parent, name = os.path.split(path)
    program = None
    if parent.endswith(".d"):
        program = name
        parent, name = os.path.split(parent)
        name = name[: -len(".d")]
    kind_dir, driver = os.path.split(parent)
    remotes, kind = os.path.split(kind_dir)
    return Invocation(remotes=remotes, kind=kind, driver=driver, action=name,
                      args=tuple(argv), program=program,
                      environ=dict(os.environ if environ is None else environ))


def resolve(inv: Invocation, registry=None) -> Action:
    """The function serving ``inv``; a :class:`ProtocolError` if nothing does."""
    registry = registry or importlib.import_module(REGISTRY)
    module_name = (registry.EXTENSIONS.get(inv.program) if inv.program
                   else registry.DRIVERS.get((inv.kind, inv.driver)))
    if module_name is None:
        where = f"{inv.kind}/{inv.driver}" + (f"/{inv.action}.d/{inv.program}"
                                              if inv.program else "")
        raise ProtocolError(f"no vaf driver is registered for remotes/{where}")
    actions: Mapping[str, Action] = importlib.import_module(module_name).ACTIONS
    try:
        return actions[inv.action]
    except KeyError:
        raise ProtocolError(f"{inv.kind}/{inv.driver} has no action {inv.action!r} "
                            f"(known: {', '.join(sorted(actions))})") from None


def main(script: str, argv: Sequence[str], registry=None) -> int:
    """Entry point of the launcher: run the action and return the exit code for oned."""
    inv = locate(script, argv)
    log = DriverLog(inv.origin)

    def run(lg: DriverLog) -> int | None:
        # The runtime's release decides how this action's stderr is read (vaf/one/runtime.py).
        lg.use(inv.kind, load_runtime(inv.remotes, inv.environ))
        return resolve(inv, registry)(inv, lg)

    return run_main(run, log)
