"""Processes and threads as Linux shows them in ``/proc`` (stdlib only: runs on hypervisors).

What the CPU priority code needs: the qemu process of a libvirt domain ``one-<vmid>``, its
threads (vCPUs are threads, so is every I/O worker), each thread's nice value, its CPU time,
and a start time that tells a live process from a recycled PID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROC = "/proc"
#: where libvirt's qemu driver writes ``<domain>.pid`` (``/run`` is the same directory)
LIBVIRT_PID_DIR = "/var/run/libvirt/qemu"


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>[/task/<tid>]/stat`` that vaf uses."""

    state: str
    utime: int  # clock ticks
    stime: int
    nice: int
    start_time: int  # clock ticks after boot: with the PID, identifies one process

    @property
    def cpu_ticks(self) -> int:
        return self.utime + self.stime


def parse_stat(text: str) -> Stat:
    """Parse a stat line; the command name may hold spaces and parentheses, so split at the
    last ``)``."""
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 of proc(5): state; utime=14, stime=15, nice=19, starttime=22
    return Stat(state=fields[0], utime=int(fields[11]), stime=int(fields[12]),
                nice=int(fields[16]), start_time=int(fields[19]))


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None


def process_stat(pid: int, proc: str = PROC) -> Stat | None:
    """The process's stat, or None when it has gone away."""
    text = read_text(f"{proc}/{pid}/stat")
    return parse_stat(text) if text else None


def thread_stat(pid: int, tid: int, proc: str = PROC) -> Stat | None:
    text = read_text(f"{proc}/{pid}/task/{tid}/stat")
    return parse_stat(text) if text else None


def threads(pid: int, proc: str = PROC) -> list[int]:
    """The thread ids of ``pid`` (empty when the process has gone away)."""
    try:
        return sorted(int(name) for name in os.listdir(f"{proc}/{pid}/task") if name.isdigit())
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return []


def cmdline(pid: int, proc: str = PROC) -> list[str]:
    text = read_text(f"{proc}/{pid}/cmdline")
    return text.rstrip("\0").split("\0") if text else []


def domain_name(vmid: int) -> str:
    """libvirt's name for an OpenNebula VM's domain (fixed by the KVM driver)."""
    return f"one-{vmid}"


def qemu_guest_name(argv: list[str]) -> str | None:
    """The guest name in a qemu command line, or None if it is not a qemu process.

    libvirt passes ``-name guest=one-7,debug-threads=on``; older versions ``-name one-7``.
    Only the value after ``-name`` counts, so a VM whose *other* arguments mention
    ``guest=one-7`` (a disk path, say) is not mistaken for VM 7.
    """
    if not argv or "qemu" not in os.path.basename(argv[0]):
        return None
    for index, option in enumerate(argv[:-1]):
        if option in ("-name", "--name"):
            for item in argv[index + 1].split(","):
                key, sep, rest = item.partition("=")
                if sep and key == "guest":
                    return rest
                if not sep:
                    return item
    return None


def is_domain_process(pid: int, domain: str, proc: str = PROC) -> bool:
    return qemu_guest_name(cmdline(pid, proc)) == domain


def find_domain_pid(domain: str, pid_dir: str = LIBVIRT_PID_DIR,
                    proc: str = PROC) -> int | None:
    """The PID of the qemu process running ``domain``, or None if it does not run.

    libvirt's pid file is the fast path; it is checked against the process's command line
    because a stale file can name a recycled PID. Without a valid pid file the process list
    is scanned (libvirt may run with another state directory).
    """
    text = read_text(os.path.join(pid_dir, f"{domain}.pid"))
    if text and text.strip().isdigit() and is_domain_process(int(text.strip()), domain, proc):
        return int(text.strip())
    try:
        names = os.listdir(proc)
    except FileNotFoundError:
        return None
    for name in names:
        if name.isdigit() and is_domain_process(int(name), domain, proc):
            return int(name)
    return None


def set_thread_nice(tid: int, nice: int) -> None:
    """Set one thread's nice value. On Linux ``PRIO_PROCESS`` with a TID acts on that thread
    only, which is why renicing the main PID alone leaves the vCPU threads untouched."""
    os.setpriority(os.PRIO_PROCESS, tid, nice)
