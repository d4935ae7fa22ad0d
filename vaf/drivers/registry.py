"""Which code serves which file oned runs, and which code serves which host command.

The one place to register a driver: the launchers (``remotes/vaf/dispatch`` for every file
oned runs, ``remotes/vaf/host-command`` on hypervisors) hand these tables to
:mod:`vaf.one.dispatch` and :mod:`vaf.one.host_command`. Module names only (strings): a
launcher imports just the module of the action it runs.
"""

from __future__ import annotations

#: (kind, directory under remotes/<kind>/) -> module whose ACTIONS serve that directory
DRIVERS: dict[tuple[str, str], str] = {
    ("tm", "lvmsnap"): "vaf.drivers.lvmsnap.actions",
    ("hooks", "ebtables"): "vaf.drivers.isolation",  # the vaf-isolation state hook
    ("vnm", "vaf_isolation"): "vaf.drivers.isolation",
    ("vnm", "ebtables"): "vaf.drivers.isolation",  # installed under the old VN_MAD name
    ("hooks", "cpu-priority"): "vaf.drivers.cpu",  # the vaf-cpu-priority RUNNING hook
}

#: program name of an extension (remotes/<kind>/<any>/<action>.d/<name>) -> module
EXTENSIONS: dict[str, str] = {
    "vaf-cpu-priority": "vaf.drivers.cpu",  # vnm/<VN_MAD>/post.d/: CPU priority after deploy
}

#: host command prefix -> module with ``COMMANDS = {"action": function(params, log)}``
HOST_COMMANDS: dict[str, str] = {
    "lvmsnap": "vaf.drivers.lvmsnap.host",
    "cpu": "vaf.drivers.cpu_host",
}
