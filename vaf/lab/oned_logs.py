"""What an admin of the stand-in oned sees: VM log files, oned.log, the ERROR attribute, syslog.

The runtime stand-in (:mod:`vaf.lab.oned`) returns the MAD's reply lines; this module does what
oned does with them, so tests can assert on what a person reads rather than on the protocol:

* ``LOG <sev> <vmid> <text>`` is appended to ``<dir>/<vmid>.log`` in oned's FileLog format
  (``<ctime> [Z0][TrM][I]: <text>``; the file is opened for every line, in append mode), and a
  ``LOG`` with id -1 to ``<dir>/oned.log``;
* ``TRANSFER FAILURE <id> <info>`` logs ``Error executing image transfer script: <info>`` as an
  error and sets the VM's ``ERROR`` attribute to that text cut at 100 characters (oned adds
  ``... see more details in VM log`` to a longer one, and a timestamp in front, left out here);
* a unix datagram socket stands for the machine's ``/dev/log``.

:meth:`OnedLogs.configure` points a remotes tree's ``etc/vaf/runtime.conf`` at these files, so
the drivers' own 6.10 lines (vaf/one/log.py) land in the same VM log as oned's.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import NamedTuple

from vaf.lab import oned

#: VirtualMachine::MAX_ERROR_MSG_LENGTH
MAX_ERROR = 100
TRUNCATED = "... see more details in VM log"
TRANSFER_ERROR = "Error executing image transfer script"
_RECORD = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} "
                     r"\[Z(\d+)\]\[(\w+)\]\[(\w+)\]: (.*)$")


class Record(NamedTuple):
    module: str  # TrM, VMM, ...
    severity: str  # E W I D
    text: str


class SyslogReceiver:
    """A local syslog socket: the datagrams vaf sends, in order."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with_dir = Path(self.path).parent
        with_dir.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self._sock.settimeout(0.1)
        self._closed = False
        self._seen: list[str] = []
        self._lock = threading.Lock()
        # read all the time, as a syslog daemon does: a datagram socket's queue holds ~10
        self._reader = threading.Thread(target=self._read, name="syslog", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._seen.append(data.decode("ascii", "replace"))

    def messages(self, settle: float = 0.2) -> list[str]:
        """Every message received so far: ``<pri>stamp tag[pid]: text`` as sent."""
        time.sleep(settle)  # datagrams already sent may still be in the socket's queue
        with self._lock:
            return list(self._seen)

    def texts(self) -> list[str]:
        """The part after ``tag[pid]: `` of each message."""
        return [message.split("]: ", 1)[1] for message in self.messages()]

    def close(self) -> None:
        self._closed = True
        self._reader.join()
        self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class OnedLogs:
    """oned's log directory (``/var/log/one``) and the VMs' ERROR attributes."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.syslog = SyslogReceiver(self.dir / "syslog.sock")
        self.errors: dict[int, str] = {}

    def vm_log_path(self, vmid: int) -> Path:
        return self.dir / f"{vmid}.log"

    def configure(self, remotes: str | os.PathLike, front_end: bool = True) -> None:
        """Write ``<remotes>/etc/vaf/runtime.conf`` for these files (a host has no VM log)."""
        conf = Path(remotes) / "etc" / "vaf" / "runtime.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"SYSLOG_SOCKET={self.syslog.path}",
                 f"VM_LOG={self.dir}/{{vmid}}.log" if front_end else "VM_LOG=syslog"]
        conf.write_text("\n".join(lines) + "\n")

    # -- what oned does with the MAD's lines -----------------------------------------------------

    def _append(self, path: Path, module: str, severity: str, text: str) -> None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.ctime()} [Z0][{module}][{severity}]: {text}\n")

    def log(self, line: str, module: str = "TrM") -> None:
        """One ``LOG`` line of a MAD (TransferManager::_log and its VMM/ImM siblings)."""
        _action, severity, ident, text = oned.parse_message(line)
        vmid = int(ident)
        path = self.dir / "oned.log" if vmid < 0 else self.vm_log_path(vmid)
        self._append(path, module, severity, text)

    def set_error(self, vmid: int, message: str) -> None:
        """VirtualMachine::set_template_error_message, without its timestamp."""
        cut = message[:MAX_ERROR]
        self.errors[vmid] = cut + TRUNCATED if len(message) >= MAX_ERROR else cut

    def record_transfer(self, vmid: int, lines: list[str]) -> None:
        """One action's reply lines of one_tm.rb (or a VMM TM step): logs, then the result."""
        for line in lines:
            action, result, _ident, info = oned.parse_message(line)
            if action == "LOG":
                self.log(line)
            elif result == "FAILURE":
                message = TRANSFER_ERROR
                if info and not info.startswith("-"):
                    message += f": {info}"
                    self.set_error(vmid, message)
                self._append(self.vm_log_path(vmid), "TrM", "E", message)

    def record_logs(self, lines: list[str], module: str = "VMM") -> None:
        """LOG lines of another MAD (the VMM's network steps)."""
        for line in lines:
            self.log(line, module)

    # -- what the admin reads ------------------------------------------------------------------

    def vm_log(self, vmid: int) -> list[Record]:
        """The VM's log file, timestamps and zone left out; lines vaf wrote itself included."""
        path = self.vm_log_path(vmid)
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _RECORD.match(line)
            if match is None:
                raise AssertionError(f"{path}: not in oned's log format: {line!r}")
            records.append(Record(match.group(2), match.group(3), match.group(4)))
        return records

    def vm_log_texts(self, vmid: int) -> list[str]:
        return [record.text for record in self.vm_log(vmid)]

    def error(self, vmid: int) -> str | None:
        return self.errors.get(vmid)

    def close(self) -> None:
        self.syslog.close()
