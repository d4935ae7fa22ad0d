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
    "cpu": "vaf.drivers.cpu_host",
}

#: verb prefix of ``/usr/lib/vaf/vaf-privileged <provider>-<action>`` (root, request on stdin,
#: served by :func:`vaf.one.host_command.serve_privileged`) -> module with ``REQUEST_VERSION``
#: and ``COMMANDS = {"action": function(params, log, privileged)}``
PRIVILEGED_COMMANDS: dict[str, str] = {
    "lvmsnap": "vaf.drivers.lvmsnap.host",
}

#: host probes: ``remotes/im/<hypervisor>-probes.d/host/system/<name>`` -> module whose
#: ``PROBE(inv, log)`` prints monitoring lines (a probe never exits non-zero: a failing probe
#: fails the host's whole monitoring)
PROBES: dict[str, str] = {
    "vaf-lvmsnap": "vaf.drivers.lvmsnap.probe",
}
