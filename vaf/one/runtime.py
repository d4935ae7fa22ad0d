"""Which OpenNebula driver runtime runs this process, and where oned keeps a VM's log.

OpenNebula installs a ``VERSION`` file at the root of the remotes tree (``/var/lib/one/remotes``
on the front-end; ``onehost sync`` copies it to ``/var/tmp/one`` on hosts). Its release says how
the MAD reads a script's stderr: before 6.99.80 (the 6.10 series) no stderr line is logged on
success and the *whole* stderr becomes the failure reason; from 6.99.80 on (7.x) tagged lines
are LOG lines and only the untagged ones make the reason. :mod:`vaf.one.log` writes what each
runtime expects; this module only finds out which one it is, and where a 6.10 front-end's VM
log lives (``/etc/one/oned.conf``'s ``LOG`` section, the paths oned itself derives).

Overrides, all optional, in ``<remotes>/etc/vaf/runtime.conf``:

* ``ONE_VERSION=6.10.5``: the release, when the ``VERSION`` file is absent or wrong;
* ``VM_LOG=/var/log/one/{vmid}.log``: the VM log file (``syslog`` forces syslog);
* ``ONED_CONF=/etc/one/oned.conf``: where to read oned's ``LOG`` and ``FEDERATION`` sections;
* ``SYSLOG_SOCKET=/dev/log``: the local syslog socket.

stdlib only: hypervisors import this on every VNM action.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError

#: the first release whose runtime turns tagged stderr lines into LOG lines (7.x rules)
TAGGED_LINES_SINCE = (6, 99, 80)
CONF_PATH = ("etc", "vaf", "runtime.conf")
VERSION_FILE = "VERSION"
SYSLOG = "syslog"
DEFAULT_SYSLOG_SOCKET = "/dev/log"
#: oned's DEBUG_LEVEL default (0 ERROR, 1 WARNING, 2 INFO, 3 DEBUG)
DEFAULT_DEBUG_LEVEL = 3
#: the log systems oned writes VM logs to as files (oned.conf LOG/SYSTEM)
FILE_SYSTEMS = ("file", "file_ts")

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\s*$")
_SECTION_RE = r"^\s*{name}\s*=\s*\[(.*?)\]"
_PAIR_RE = re.compile(r"([A-Za-z_]+)\s*=\s*(\"[^\"]*\"|[^,\s\]]+)")


@dataclass(frozen=True)
class OnedRuntime:
    """The runtime facts a driver's log depends on."""

    version: tuple[int, int, int] | None  # None: no VERSION file (7.x rules)
    vm_log: str  # a path with {vmid}, or "" when oned logs VMs to syslog/std
    syslog_socket: str = DEFAULT_SYSLOG_SOCKET
    zone_id: int = 0
    debug_level: int = DEFAULT_DEBUG_LEVEL

    @property
    def legacy(self) -> bool:
        """True for the 6.10 rules: no stderr logged on success, all of it is the reason."""
        return self.version is not None and self.version < TAGGED_LINES_SINCE

    def vm_log_path(self, vmid: int) -> str | None:
        return self.vm_log.replace("{vmid}", str(vmid)) if self.vm_log else None


#: the runtime assumed where nothing is known (tests, the admin CLI): today's 7.x rules
CURRENT = OnedRuntime(version=None, vm_log="")


def parse_version(text: str, where: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(text)
    if not match:
        raise ConfigError(f"{where}: expected an OpenNebula release such as 6.10.5, "
                          f"got {text.strip()[:40]!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def _version(remotes: str, config: DriverConfig) -> tuple[int, int, int] | None:
    override = config.str("ONE_VERSION", "")
    if override:
        return parse_version(override, f"ONE_VERSION in {config.source}")
    path = os.path.join(remotes, VERSION_FILE)
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    return parse_version(text, path)


def oned_section(text: str, name: str) -> dict[str, str]:
    """``NAME = [ KEY = value, ... ]`` of oned.conf as upper-case keys, quotes removed."""
    match = re.search(_SECTION_RE.format(name=name), text, re.MULTILINE | re.DOTALL)
    if not match:
        return {}
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    return {key.upper(): value.strip('"') for key, value in _PAIR_RE.findall(body)}


def default_vm_log(log: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Where oned writes a VM's log (Nebula::get_vm_log_filename), "" when not to a file."""
    if log.get("SYSTEM", "file").lower() not in FILE_SYSTEMS:
        return ""
    location = environ.get("ONE_LOCATION")
    if location:
        return os.path.join(location, "var", "vms", "{vmid}", "vm.log")
    if log.get("USE_VMS_LOCATION", "no").lower() in ("yes", "true"):
        return "/var/lib/one/vms/{vmid}/vm.log"
    return "/var/log/one/{vmid}.log"


def _int(values: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(values.get(key, default))
    except ValueError:
        return default  # oned itself would not have started: keep its default


def load_runtime(remotes: str, environ: Mapping[str, str] | None = None) -> OnedRuntime:
    """The runtime of the remotes tree ``remotes`` (its VERSION file, runtime.conf, oned.conf)."""
    env = os.environ if environ is None else environ
    config = load_config(os.path.join(remotes, *CONF_PATH), env)
    version = _version(remotes, config)
    location = env.get("ONE_LOCATION")
    default_conf = os.path.join(location, "etc", "oned.conf") if location else \
        "/etc/one/oned.conf"
    oned_conf = config.str("ONED_CONF", default_conf)
    try:
        with open(oned_conf, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""  # a hypervisor: no oned here, VM logs are out of reach
    log = oned_section(text, "LOG") if text else {"SYSTEM": SYSLOG}
    vm_log = config.str("VM_LOG", default_vm_log(log, env))
    return OnedRuntime(
        version=version,
        vm_log="" if vm_log == SYSLOG else vm_log,
        syslog_socket=config.str("SYSLOG_SOCKET", DEFAULT_SYSLOG_SOCKET),
        zone_id=_int(oned_section(text, "FEDERATION"), "ZONE_ID", 0),
        debug_level=_int(log, "DEBUG_LEVEL", DEFAULT_DEBUG_LEVEL),
    )
