"""The forced command: ``vaf gate serve`` reads ``SSH_ORIGINAL_COMMAND`` and adds one node.

Order of business (gitolite-shell's): log who asks and what, refuse anything that is not
exactly the join grammar, check that the name belongs to the connecting address, then run
the batch command as an argv list with a timeout. Every decision goes to syslog
(``LOG_AUTH``, ident ``vaf-gate``) and optionally to a file; the client gets one line.

Exit codes (the guest relies on them to decide whether retrying makes sense):

====  ==========================================================  ================
code  meaning                                                     guest retries?
====  ==========================================================  ================
0     node added, or it was already there                         -
1     internal error of the gate                                  yes
2     refused: the command is not ``join <host> <cpus> [<props>]``  no
3     denied: the name does not belong to the connecting address  no
4     the batch system failed or timed out                        yes
5     the gate is misconfigured (bad gate.conf)                   yes
====  ==========================================================  ================
"""

from __future__ import annotations

import os
import sys
import syslog
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vaf.batch.base import ADDED, BatchFailed, NodeRequest
from vaf.batch.slurm import Slurm
from vaf.batch.torque import Torque
from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError, VafError, one_line
from vaf.gate.grammar import JoinRequest, Refused, parse
from vaf.gate.identity import (
    Address,
    Denied,
    HostsFileResolver,
    Resolver,
    SystemResolver,
    check_binding,
    client_address,
)
from vaf.host.runner import Runner

DEFAULT_CONFIG = "/etc/vaf/gate.conf"
OK, INTERNAL, REFUSED, DENIED, BATCH_FAILED, MISCONFIGURED = 0, 1, 2, 3, 4, 5
#: how much of a hostile command the log quotes (repr() keeps control characters visible)
LOGGED_COMMAND_CHARS = 300

class GateMisconfigured(ConfigError):
    exit_code = MISCONFIGURED


Sink = Callable[[int, str], None]


def syslog_sink(priority: int, message: str) -> None:
    syslog.openlog("vaf-gate", syslog.LOG_PID, syslog.LOG_AUTH)
    syslog.syslog(priority, message)


def file_sink(path: str) -> Sink:
    def write(priority: int, message: str) -> None:
        level = {syslog.LOG_INFO: "info", syslog.LOG_WARNING: "warning"}.get(priority, "error")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} vaf-gate[{os.getpid()}] {level}: {message}\n")
    return write


@dataclass(frozen=True)
class GateLog:
    sinks: tuple[Sink, ...] = (syslog_sink,)

    def _emit(self, priority: int, message: str) -> None:
        for sink in self.sinks:
            sink(priority, one_line(message, 1000))

    def info(self, message: str) -> None:
        self._emit(syslog.LOG_INFO, message)

    def warning(self, message: str) -> None:
        self._emit(syslog.LOG_WARNING, message)

    def error(self, message: str) -> None:
        self._emit(syslog.LOG_ERR, message)


@dataclass(frozen=True)
class Gate:
    backend: Torque | Slurm  # anything with add_node(NodeRequest) and a name
    resolver: Resolver
    check_reverse: bool = True


def gate_from_config(config: DriverConfig, runner: Runner | None = None) -> Gate:
    """Build the gate from ``gate.conf`` settings (see docs/contextualization.md)."""
    runner = runner or Runner()
    try:
        backend_name = config.choice("BACKEND", "torque", ("torque", "slurm"))
        timeout = config.float("TIMEOUT", 30.0, minimum=1.0)
        if backend_name == "torque":
            backend = Torque(runner, config.argv("QMGR", ("qmgr",)), timeout)
        else:
            backend = Slurm(runner, config.argv("SCONTROL", ("scontrol",)), timeout)
        hosts_file = config.str("HOSTS_FILE", "")
        resolver = HostsFileResolver(hosts_file) if hosts_file else SystemResolver()
        return Gate(backend, resolver, config.bool("CHECK_REVERSE", True))
    except ConfigError as err:
        raise GateMisconfigured(err.reason) from None
    except OSError as err:
        raise GateMisconfigured(f"HOSTS_FILE in {config.source}: {err.strerror}") from None


def log_from_config(config: DriverConfig) -> GateLog:
    log_file = config.str("LOG_FILE", "")
    return GateLog((syslog_sink, file_sink(log_file)) if log_file else (syslog_sink,))


def handle(environ: Mapping[str, str], gate: Gate, log: GateLog) -> tuple[int, str]:
    """Decide on one request; return the exit code and the one line for the client."""
    command = environ.get("SSH_ORIGINAL_COMMAND", "")
    connection = environ.get("SSH_CONNECTION", "")
    source = connection.split(" ", 1)[0] if connection else "?"
    log.info(f"request from {source!r}: {command[:LOGGED_COMMAND_CHARS]!r}")
    try:
        request = parse(command)
        client = client_address(connection)
        check_binding(request.hostname, client, gate.resolver, gate.check_reverse)
        outcome = gate.backend.add_node(node_request(request, client))
    except Refused as err:
        log.warning(f"refused from {source!r}: {err.reason}")
        return REFUSED, f"vaf-gate: refused: {err.reason}"
    except Denied as err:
        log.warning(f"denied from {source!r}: {err.reason}")
        return DENIED, f"vaf-gate: denied: {err.reason}"
    except BatchFailed as err:
        log.error(f"batch system failed for {source!r}: {err.reason}")
        return BATCH_FAILED, f"vaf-gate: batch system failed: {err.reason}"
    verb = "joined" if outcome == ADDED else f"{outcome.split(',')[0]}:"
    log.info(f"{gate.backend.name}: {request.hostname} ({client}) {outcome}")
    return OK, f"vaf-gate: {verb} {request.hostname}"


def node_request(request: JoinRequest, address: Address) -> NodeRequest:
    """What the batch system is asked for: the validated request at the proven address."""
    return NodeRequest(request.hostname, request.cpus, request.properties, str(address))


def serve(config_path: str | None, environ: Mapping[str, str] | None = None,
          write: Callable[[int, str], None] | None = None) -> int:
    """The forced command's whole life; never raises, always one line for the client."""
    env = os.environ if environ is None else environ
    emit = write or _write_line
    log = GateLog()
    try:
        config = load_config(config_path or DEFAULT_CONFIG, environ={})
        log = log_from_config(config)
        code, line = handle(env, gate_from_config(config), log)
    except VafError as err:
        code = MISCONFIGURED if isinstance(err, ConfigError) else err.exit_code
        log.error(f"gate error: {err.reason}")
        line = f"vaf-gate: misconfigured: {err.reason}"
    except Exception as err:  # noqa: BLE001 - the client gets one line, syslog the detail
        log.error(f"internal error: {type(err).__name__}: {err}")
        code, line = INTERNAL, "vaf-gate: internal error (see the server's syslog)"
    emit(code, line)
    return code


def _write_line(code: int, line: str) -> None:
    """Success on stdout, refusals and failures on stderr, like any command."""
    stream = sys.stdout if code == OK else sys.stderr
    stream.write(line + "\n")
    stream.flush()
