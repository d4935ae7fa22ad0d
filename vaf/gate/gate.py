"""The forced command: ``vaf gate serve`` reads ``SSH_ORIGINAL_COMMAND`` and adds one node.

Order of business (gitolite-shell's): log who asks and what, refuse anything that is not
exactly the join grammar or that exceeds what the admin allows workers (``MAX_CPUS``,
``ALLOWED_PROPERTIES``, the batch system's name length), check that the name is the
connecting address's canonical name, take this address's lock (one join per address at a
time, never waiting: a flood cannot queue up on qmgr or slurmctld), ask the batch system
which nodes exist (an address that carries a node of another name is denied; a node of this
name with other cpus or properties is denied, never reported as present), then run the
batch command as an argv list with a timeout. Every decision goes to syslog
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
6     busy: another join from this address is in progress         yes
====  ==========================================================  ================
"""

from __future__ import annotations

import os
import stat
import sys
import syslog
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from vaf.batch import slurm as slurm_adapters
from vaf.batch.base import ADDED, BatchFailed, Node, NodeRequest
from vaf.batch.slurm import Slurm
from vaf.batch.torque import MAX_NODE_NAME, Torque
from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError, VafError, one_line
from vaf.gate.grammar import MAX_CPUS, JoinRequest, Refused, parse, validate_properties
from vaf.gate.identity import (
    Address,
    Denied,
    HostsFileResolver,
    Resolver,
    SystemResolver,
    check_binding,
    client_address,
    normalise_address,
)
from vaf.host.locks import if_free
from vaf.host.runner import Runner

DEFAULT_CONFIG = "/etc/vaf/gate.conf"
DEFAULT_LOCK_DIR = "/run/vaf-gate"
DEFAULT_MAX_CPUS = 64
OK, INTERNAL, REFUSED, DENIED, BATCH_FAILED, MISCONFIGURED, BUSY = 0, 1, 2, 3, 4, 5, 6
#: the longest node name each batch system holds (TORQUE: PBS_MAXNODENAME)
NODE_NAME_LIMITS = {"torque": MAX_NODE_NAME}
#: how much of a hostile command the log quotes (repr() keeps control characters visible)
LOGGED_COMMAND_CHARS = 300

class GateMisconfigured(ConfigError):
    exit_code = MISCONFIGURED


class Busy(VafError):
    """Another join from the same address holds its lock (exit code 6: retry later)."""

    exit_code = BUSY


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
    backend: Torque | Slurm  # anything with nodes(), add_node(NodeRequest) and a name
    resolver: Resolver
    check_reverse: bool = True
    max_cpus: int = DEFAULT_MAX_CPUS
    allowed_properties: frozenset[str] = frozenset()
    lock_dir: str = DEFAULT_LOCK_DIR


def gate_from_config(config: DriverConfig, runner: Runner | None = None) -> Gate:
    """Build the gate from ``gate.conf`` settings (see docs/contextualization.md)."""
    runner = runner or Runner()
    try:
        backend_name = config.choice("BACKEND", "torque", ("torque", "slurm"))
        timeout = config.float("TIMEOUT", 30.0, minimum=1.0)
        if backend_name == "torque":
            backend = Torque(runner, config.argv("QMGR", ("qmgr",)), timeout,
                             config.argv("PBSNODES", ("pbsnodes",)))
        else:
            backend = slurm_backend(runner, config.argv("SCONTROL", ("scontrol",)), timeout,
                                    config.argv("SINFO", ("sinfo",)))
        hosts_file = config.str("HOSTS_FILE", "")
        resolver = HostsFileResolver(hosts_file) if hosts_file else SystemResolver()
        allowed = config.list("ALLOWED_PROPERTIES", ())
        try:
            validate_properties(tuple(allowed))
        except Refused as err:
            raise ConfigError(f"ALLOWED_PROPERTIES in {config.source}: {err.reason}") from None
        return Gate(backend, resolver, config.bool("CHECK_REVERSE", True),
                    config.int("MAX_CPUS", DEFAULT_MAX_CPUS, minimum=1, maximum=MAX_CPUS),
                    frozenset(allowed), config.str("LOCK_DIR", DEFAULT_LOCK_DIR))
    except ConfigError as err:
        raise GateMisconfigured(err.reason) from None
    except OSError as err:
        raise GateMisconfigured(f"HOSTS_FILE in {config.source}: {err.strerror}") from None


def slurm_backend(runner: Runner, scontrol, timeout: float, sinfo) -> Slurm:
    """The Slurm adapter that can also list nodes (the gate asks before it adds one).

    Merge note: the full adapter (``SlurmQueue``: ``sinfo --json`` for nodes) is being
    written beside this branch; until it exists the add-only :class:`Slurm` is returned
    and a join through Slurm fails (an internal error, logged) instead of skipping the check.
    """
    full = getattr(slurm_adapters, "SlurmQueue", None)
    if full is None:
        return Slurm(runner, scontrol, timeout)
    return full(runner, scontrol, timeout, sinfo=sinfo)


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
        check_limits(request, gate)
        client = client_address(connection)
        check_binding(request.hostname, client, gate.resolver, gate.check_reverse)
        with address_lock(gate.lock_dir, client):
            check_occupancy(request, client, gate.backend.nodes(), gate.resolver)
            outcome = gate.backend.add_node(node_request(request, client))
    except Refused as err:
        log.warning(f"refused from {source!r}: {err.reason}")
        return REFUSED, f"vaf-gate: refused: {err.reason}"
    except Denied as err:
        log.warning(f"denied from {source!r}: {err.reason}")
        return DENIED, f"vaf-gate: denied: {err.reason}"
    except Busy as err:
        log.warning(f"busy for {source!r}: {err.reason}")
        return BUSY, f"vaf-gate: busy: {err.reason}"
    except BatchFailed as err:
        log.error(f"batch system failed for {source!r}: {err.reason}")
        return BATCH_FAILED, f"vaf-gate: batch system failed: {err.reason}"
    verb = "joined" if outcome == ADDED else f"{outcome.split(',')[0]}:"
    log.info(f"{gate.backend.name}: {request.hostname} ({client}) {outcome}")
    return OK, f"vaf-gate: {verb} {request.hostname}"


def check_limits(request: JoinRequest, gate: Gate) -> None:
    """Refuse what the admin does not allow workers, or the batch system cannot hold."""
    if request.cpus > gate.max_cpus:
        raise Refused(f"{request.cpus} cpus is more than MAX_CPUS={gate.max_cpus} of gate.conf")
    unknown = [p for p in request.properties if p not in gate.allowed_properties]
    if unknown:
        allowed = ",".join(sorted(gate.allowed_properties)) or "none"
        raise Refused(f"property {unknown[0]!r} is not in ALLOWED_PROPERTIES of gate.conf "
                      f"(allowed: {allowed})")
    limit = NODE_NAME_LIMITS.get(gate.backend.name)
    if limit is not None and len(request.hostname) > limit:
        raise Refused(f"{gate.backend.name} holds node names of at most {limit} characters, "
                      f"{request.hostname[:20]}... has {len(request.hostname)}")


def check_occupancy(request: JoinRequest, client: Address, nodes: Sequence[Node],
                    resolver: Resolver) -> None:
    """One address, one node; a node of this name must be the one asked for.

    A node's address is what the batch system says (Slurm's NodeAddr) or, where it says
    nothing (TORQUE), what the name resolves to with the server's resolver.
    """
    for node in nodes:
        if node.name == request.hostname:
            asked = (request.cpus, frozenset(request.properties))
            if (node.cores, frozenset(node.features)) != asked:
                existing = describe(node.cores, node.features)
                raise Denied(f"{node.name} is already a node with {existing}, not "
                             f"{describe(*asked)}: the admin must remove it first")
            continue
        if client in node_addresses(node, resolver):
            raise Denied(f"{client} already carries node {node.name} (one address, one node)")


def node_addresses(node: Node, resolver: Resolver) -> set[Address]:
    """Where a node lives: its address as the batch system says, else its name resolved."""
    target = node.address or node.name
    try:
        return {normalise_address(target)}
    except ValueError:  # a name (TORQUE nodes, or a Slurm NodeAddr written as a name)
        return resolver.addresses(target)


def describe(cpus: int, properties) -> str:
    listed = ",".join(sorted(properties)) or "none"
    return f"{cpus} cpus and properties {listed}"


@contextmanager
def address_lock(directory: str, client: Address) -> Iterator[None]:
    """Hold this address's join lock, or raise :class:`Busy` at once (never wait)."""
    check_lock_dir(directory)
    with if_free(directory, "join-" + str(client).replace(":", "-")) as held:
        if not held:
            raise Busy(f"another join from {client} is in progress; retry later")
        yield


def check_lock_dir(directory: str) -> None:
    """The lock directory is the gate's alone: created 0700, never a symlink or shared."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise GateMisconfigured(f"LOCK_DIR {directory}: {err.strerror} (create it owned "
                                "by the gate's account, mode 0700)") from None
    info = os.lstat(directory)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o077):
        raise GateMisconfigured(f"LOCK_DIR {directory} must be a directory (not a symlink) "
                                f"owned by uid {os.geteuid()} with mode 0700")


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
