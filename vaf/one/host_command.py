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
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

from vaf.config import load_config
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


# --- the privileged channel: ``sudo -n /usr/lib/vaf/vaf-privileged <provider>-<action>`` ---

STDIN_LIMIT = 1024 * 1024
PAYLOAD_LIMIT = 64 * 1024 * 1024


class Channel:
    """The front-end at the other end of stdin: request line, payload, then silence.

    stdin carries one JSON line (the request), then ``payload_bytes`` raw bytes (the context
    ISO), then stays open for as long as the front-end waits for us. EOF after that means the
    front-end is gone (killed, cancelled by oned, its ssh cut): :meth:`cancelled` turns true,
    and the action stops at its next step and undoes what it made. SIGTERM and SIGHUP (which
    sudo relays) mean the same.
    """

    def __init__(self, stream, params: dict[str, object], payload: bytes):
        self.stream = stream
        self.params = params
        self.payload = payload
        self._gone = threading.Event()

    @classmethod
    def read(cls, stream) -> Channel:
        line = stream.readline(STDIN_LIMIT + 1)
        if len(line) > STDIN_LIMIT or not line.endswith(b"\n"):
            raise ProtocolError("the request must be one JSON line on stdin "
                                f"(at most {STDIN_LIMIT} bytes)")
        params = parse_params(line.decode("utf-8", "replace"))
        size = params.pop("payload_bytes", 0)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= PAYLOAD_LIMIT:
            raise ProtocolError("payload_bytes must be a size up to 64 MiB")
        payload = stream.read(size) if size else b""
        if len(payload) != size:
            raise ProtocolError(f"the request announced {size} payload bytes, "
                                f"{len(payload)} came")
        return cls(stream, params, payload)

    def watch(self) -> None:
        """Start noticing the front-end's departure (a daemon thread reading to EOF)."""
        fd = self.stream.fileno()

        def drain() -> None:
            # the raw fd, not the buffered stream: a daemon thread blocked inside a buffered
            # read makes the interpreter abort at exit (the buffer's lock is held)
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            self._gone.set()

        threading.Thread(target=drain, name="front-end-watch", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self._gone.set())

    def cancelled(self) -> bool:
        return self._gone.is_set()


class _Stderr:
    """stderr that never raises: once the front-end is gone its pipe breaks, and a log
    line must not abort the undo of a cancelled action half-way."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


class Privileged:
    """What a privileged host function gets besides the request: its root-owned conf, the
    front-end channel (payload, cancellation)."""

    def __init__(self, conf, channel: Channel | None):
        self.conf = conf
        self.channel = channel

    @property
    def payload(self) -> bytes:
        return self.channel.payload if self.channel else b""

    def cancelled(self) -> bool:
        return self.channel is not None and self.channel.cancelled()


def check_version(module, params: Mapping[str, object]) -> None:
    """Both halves must speak the request version of ``module`` (its ``REQUEST_VERSION``)."""
    ours, theirs = getattr(module, "REQUEST_VERSION", None), params.get("version")
    if ours != theirs:
        host = os.uname().nodename
        raise ProtocolError(f"vaf on {host} speaks request version {ours}, the front-end "
                            f"sent {theirs!r}: run install.sh host on {host}")


def serve_privileged(argv: Sequence[str], conf_path: str, registry=None, stdin=None) -> int:
    """Main of ``vaf-privileged <provider>-<action>`` for the providers of
    ``PRIVILEGED_COMMANDS``: the request on stdin, paths from ``conf_path``."""
    command = argv[0] if len(argv) == 1 else ""
    log = DriverLog(_origin(command) if command else "vaf-privileged",
                    stream=_Stderr(sys.stderr))

    def run(lg: DriverLog) -> int | None:
        if len(argv) != 1:
            raise ProtocolError("usage: vaf-privileged <provider>-<action> < request")
        module, function = resolve_privileged(command, registry)
        channel = Channel.read(stdin or sys.stdin.buffer)
        vmid = channel.params.get("vmid")
        lg.vmid = vmid if isinstance(vmid, int) and not isinstance(vmid, bool) else None
        check_version(module, channel.params)
        conf = load_config(conf_path, environ={})
        channel.watch()
        return function(channel.params, lg, Privileged(conf, channel))

    return run_main(run, log)


def resolve_privileged(command: str, registry=None):
    provider, _, action = command.partition("-")
    registry = registry or importlib.import_module(REGISTRY)
    module_name = registry.PRIVILEGED_COMMANDS.get(provider)
    if module_name is None or not action:
        host = os.uname().nodename
        raise ProtocolError(f"unknown privileged command {command!r} on {host}: run "
                            f"install.sh host on {host}")
    module = importlib.import_module(module_name)
    function = module.COMMANDS.get(action)
    if function is None:
        host = os.uname().nodename
        raise ProtocolError(f"unknown privileged command {command!r} on {host} (its vaf is "
                            f"older than the front-end's): run install.sh host on {host}")
    return module, function
