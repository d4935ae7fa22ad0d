"""CPU priority of a running KVM VM: nice of every qemu thread plus the cgroup CPU weight.

Stdlib only: this runs on the hypervisor, as root, in the privileged entry point
(``vaf-privileged cpu-<verb>``, :mod:`vaf.host.cpu_verbs`).

* A VM is found from its libvirt domain name ``one-<vmid>`` (:mod:`vaf.host.proc`).
* Nice is set per thread: vCPUs are threads, and renicing the main PID misses them.
* The weight is the CPU controller of the domain's cgroup: ``cpu.shares`` on cgroup v1,
  ``cpu.weight`` on v2, the file libvirt's ``cpu_shares`` writes. Under cgroups, nice only
  arbitrates between threads of the *same* cgroup; between VMs (one cgroup each under libvirt)
  the weight decides, so both are set.
* The values found before vaf first touched a VM are saved in a state file per VM, so release
  restores them exactly and a second squeeze does not overwrite them.
* A priority is applied in one of two layers: ``deploy`` (the template's class, set after
  deploy) and ``squeeze`` (the admin's command). Release drops the squeeze layer and goes back
  to the deploy class, or to the saved original values when there is none.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from vaf.errors import ConfigError, DriverError
from vaf.host import proc

# cgroup v1 cpu.shares and v2 cpu.weight ranges (kernel: sched_group_set_shares, cgroup-v2.rst)
SHARES_DEFAULT, SHARES_MIN, SHARES_MAX = 1024, 2, 262144
WEIGHT_DEFAULT, WEIGHT_MIN, WEIGHT_MAX = 100, 1, 10000
NICE_MIN, NICE_MAX = -20, 19
LAYERS = ("deploy", "squeeze")
#: renice passes: a thread created during a pass is caught by the next one
NICE_PASSES = 5
#: libvirt puts the qemu main thread in ``<domain cgroup>/emulator`` and each vCPU thread in
#: ``<domain cgroup>/vcpuN``; the weight that competes with other VMs is the domain's. With
#: systemd on cgroup v2 the domain is the ``machine-qemu…scope`` and libvirt works in a
#: ``libvirt`` child of it (``…scope/libvirt/emulator``), so that level is skipped too: it
#: is what ``virsh schedinfo cpu_shares`` changes there (the scope's CPUWeight).
LIBVIRT_LEAVES = ("emulator", "libvirt")


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value)))


def shares_to_weight(shares: int) -> int:
    """v1 ``cpu.shares`` → v2 ``cpu.weight`` keeping the scheduler weight the kernel uses
    (weight × 1024 / 100 = shares, so 1024 ↔ 100). Not the OCI formula
    ``1 + (shares - 2) × 9999 / 262142``, which maps the default 1024 to 39."""
    return _clamp(shares * WEIGHT_DEFAULT / SHARES_DEFAULT, WEIGHT_MIN, WEIGHT_MAX)


def weight_to_shares(weight: int) -> int:
    return _clamp(weight * SHARES_DEFAULT / WEIGHT_DEFAULT, SHARES_MIN, SHARES_MAX)


@dataclass(frozen=True)
class Priority:
    """A priority class: a nice value for every thread and a weight specification.

    ``weight`` is ``"<P>%"`` (P percent of the VM's original weight, so OpenNebula's
    CPU-proportional shares keep their ratio), ``"<N>"`` (an absolute libvirt ``cpu_shares``
    value, v1 scale, converted on v2) or ``""`` (leave the weight alone).
    """

    label: str
    nice: int
    weight: str = ""

    def __post_init__(self) -> None:
        if not NICE_MIN <= self.nice <= NICE_MAX:
            raise ConfigError(f"priority {self.label}: nice must be between {NICE_MIN} and "
                              f"{NICE_MAX}, got {self.nice}")
        if self.weight and not re.fullmatch(r"[0-9]+(\.[0-9]+)?%|[0-9]+", self.weight):
            raise ConfigError(f"priority {self.label}: weight must be a percentage (50%) or "
                              f"libvirt cpu_shares (512), got {self.weight!r}")

    def target_weight(self, version: int, original: int) -> int | None:
        """The value to write in the cgroup file, given its original value."""
        if not self.weight:
            return None
        low, high = (SHARES_MIN, SHARES_MAX) if version == 1 else (WEIGHT_MIN, WEIGHT_MAX)
        if self.weight.endswith("%"):
            return _clamp(original * float(self.weight[:-1]) / 100, low, high)
        shares = int(self.weight)
        return _clamp(shares, low, high) if version == 1 else shares_to_weight(shares)


# --- cgroups -------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuCgroup:
    version: int  # 1 or 2
    path: str  # the domain's cgroup directory

    @property
    def file(self) -> str:
        return os.path.join(self.path, "cpu.shares" if self.version == 1 else "cpu.weight")

    def read(self) -> int:
        with open(self.file, encoding="ascii") as handle:
            return int(handle.read().strip())

    def write(self, value: int) -> None:
        with open(self.file, "w", encoding="ascii") as handle:
            handle.write(f"{value}\n")


@dataclass(frozen=True)
class _Mount:
    version: int
    root: str
    point: str


def _cgroup_mounts(proc_root: str) -> list[_Mount]:
    """cgroup v1 hierarchies carrying the ``cpu`` controller, and cgroup2 mounts."""
    mounts = []
    with open(f"{proc_root}/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, fs = left.split(), right.split()
            if len(fields) < 5 or len(fs) < 3:
                continue
            root, point = _unescape(fields[3]), _unescape(fields[4])
            if fs[0] == "cgroup2":
                mounts.append(_Mount(2, root, point))
            elif fs[0] == "cgroup" and "cpu" in fs[2].split(","):
                mounts.append(_Mount(1, root, point))
    return mounts


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _process_cgroups(pid: int, proc_root: str) -> dict[int, str]:
    """{1: path in the v1 cpu hierarchy, 2: path in the unified hierarchy} of ``pid``."""
    found: dict[int, str] = {}
    with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8") as handle:
        for line in handle:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and not controllers:
                found[2] = path
            elif "cpu" in controllers.split(","):
                found[1] = path
    return found


def _directory(mount: _Mount, path: str) -> str | None:
    """Where the cgroup ``path`` (as /proc/<pid>/cgroup shows it) is under ``mount``."""
    if mount.root != "/":
        if path != mount.root and not path.startswith(mount.root + "/"):
            return None  # that part of the hierarchy is not mounted here
        path = path[len(mount.root):]
    return os.path.join(mount.point, path.lstrip("/"))


def domain_cgroup(pid: int, proc_root: str = proc.PROC) -> tuple[CpuCgroup | None, str]:
    """The cgroup whose CPU weight is the VM's, or None and why not.

    v1 wins when the host is "hybrid" (cpu on v1, an empty unified tree beside it, as on
    Debian 10 hosts or this test machine): the controller is wherever it is attached.
    """
    try:
        paths = _process_cgroups(pid, proc_root)
        mounts = _cgroup_mounts(proc_root)
    except FileNotFoundError:
        return None, "the process has gone away"
    for version in (1, 2):
        if version not in paths:
            continue
        for mount in (m for m in mounts if m.version == version):
            directory = _directory(mount, paths[version])
            if directory is None or not os.path.isdir(directory):
                continue
            while os.path.basename(directory) in LIBVIRT_LEAVES:
                directory = os.path.dirname(directory)
            if version == 2 and not os.path.exists(os.path.join(directory, "cpu.weight")):
                # the parent has not enabled the cpu controller for its children
                return None, f"cgroup v2 {directory} has no cpu controller (cpu.weight)"
            if os.path.realpath(directory) == os.path.realpath(mount.point):
                return None, "the process is in the root cgroup"
            others = _other_processes(directory, pid)
            if others:
                return None, (f"cgroup {directory} is shared with other processes "
                              f"({', '.join(map(str, others[:5]))}); its weight is left alone")
            return CpuCgroup(version, directory), ""
    return None, "no cgroup with a cpu controller"


def _other_processes(directory: str, pid: int) -> list[int]:
    """Processes other than ``pid`` in ``directory`` or below: changing the weight of a shared
    cgroup would change theirs too."""
    others: set[int] = set()
    for here, _, files in os.walk(directory):
        if "cgroup.procs" not in files:
            continue
        with contextlib.suppress(OSError), open(os.path.join(here, "cgroup.procs")) as handle:
            others.update(int(line) for line in handle if line.strip().isdigit())
    others.discard(pid)
    return sorted(others)


# --- saved state -----------------------------------------------------------------------------

@dataclass
class VmState:
    """What vaf saved about one VM's qemu process (JSON in ``<state dir>/<vmid>.json``)."""

    vmid: int
    pid: int
    start_time: int
    nice_default: int  # the main thread's original nice, for threads born later
    nice: dict[str, int]  # tid -> original nice
    weight_file: str | None = None
    weight_value: str | None = None  # exactly as read, so restore writes it back verbatim
    autogroup_nice: int | None = None  # set when the autogroup nice stands in for a weight
    layers: dict[str, dict] = field(default_factory=dict)  # layer -> asdict(Priority)

    def effective(self) -> Priority | None:
        for layer in reversed(LAYERS):
            if layer in self.layers:
                return Priority(**self.layers[layer])
        return None


class StateStore:
    """One JSON file per VM, written atomically, under a host-wide lock."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, vmid: int) -> str:
        return os.path.join(self.directory, f"{vmid}.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        # One lock per host: the post.d step and an admin squeeze may race on the same VM.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(os.path.join(self.directory, ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def load(self, vmid: int) -> VmState | None:
        try:
            with open(self.path(vmid), encoding="utf-8") as handle:
                return VmState(**json.load(handle))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as err:
            # Never guess originals: the admin decides (restore by hand, or remove the file).
            raise DriverError(f"{self.path(vmid)} is not a vaf CPU state file ({err}); "
                              f"remove it to start afresh") from None

    def save(self, state: VmState) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{state.vmid}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(state), handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path(state.vmid))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def delete(self, vmid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(vmid))

    def vmids(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


# --- operations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """Where things are on this hypervisor (all overridable for tests and odd installs)."""

    state_dir: str = "/run/vaf-cpu"
    pid_dir: str = proc.LIBVIRT_PID_DIR
    proc: str = proc.PROC

    @property
    def store(self) -> StateStore:
        return StateStore(self.state_dir)


@dataclass(frozen=True)
class Qemu:
    pid: int
    start_time: int


def _running(vmid: int, host: Host) -> Qemu | None:
    pid = proc.find_domain_pid(proc.domain_name(vmid), host.pid_dir, host.proc)
    stat = proc.process_stat(pid, host.proc) if pid else None
    return Qemu(pid, stat.start_time) if pid and stat else None


def _current_state(vmid: int, qemu: Qemu, host: Host, notes: list[str]) -> VmState | None:
    """The saved state if it belongs to this very process; a state left by an earlier qemu
    (VM restarted, PID recycled) is dropped: its values mean nothing for the new process."""
    state = host.store.load(vmid)
    if state and (state.pid, state.start_time) != (qemu.pid, qemu.start_time):
        notes.append(f"dropped the state saved for an earlier qemu process (pid {state.pid})")
        host.store.delete(vmid)
        return None
    return state


def _snapshot(vmid: int, qemu: Qemu, host: Host, notes: list[str]) -> VmState:
    """The values before vaf changes anything: every thread's nice and the cgroup weight."""
    nice = {}
    for tid in proc.threads(qemu.pid, host.proc):
        stat = proc.thread_stat(qemu.pid, tid, host.proc)
        if stat:
            nice[str(tid)] = stat.nice
    main = proc.process_stat(qemu.pid, host.proc)
    state = VmState(vmid=vmid, pid=qemu.pid, start_time=qemu.start_time,
                    nice_default=main.nice if main else 0, nice=nice)
    cgroup, why = domain_cgroup(qemu.pid, host.proc)
    if cgroup:
        with open(cgroup.file, encoding="ascii") as handle:
            state.weight_file, state.weight_value = cgroup.file, handle.read().strip()
        return state
    state.autogroup_nice, autogroup_why = _autogroup_nice(qemu.pid, host.proc)
    also = "and of its autogroup" if state.autogroup_nice is not None else f"only ({autogroup_why})"
    notes.append(f"no CPU weight: {why}; nice of every thread {also}")
    return state


# --- autogroups: the weight of processes outside any cgroup ----------------------------------
# With CONFIG_SCHED_AUTOGROUP (Debian's default) every session of the root cgroup is its own
# scheduling group, and nice then only arbitrates *inside* a session. libvirt starts each qemu
# in a session of its own, so without cgroups a renice of the threads alone does nothing
# against another VM; /proc/<pid>/autogroup holds the session's nice, which does.

def _autogroup_nice(pid: int, proc_root: str) -> tuple[int | None, str]:
    """The nice of ``pid``'s autogroup if it is the process's own, else None and why."""
    enabled = proc.read_text(f"{proc_root}/sys/kernel/sched_autogroup_enabled")
    if not enabled or enabled.strip() != "1":
        return None, "autogroups are off"
    mine = _autogroup(pid, proc_root)
    if mine is None:
        return None, "no autogroup"
    for name in os.listdir(proc_root):
        if name.isdigit() and int(name) != pid:
            theirs = _autogroup(int(name), proc_root)
            if theirs and theirs[0] == mine[0]:
                return None, f"autogroup shared with process {name}"
    return mine[1], ""


def _autogroup(pid: int, proc_root: str) -> tuple[str, int] | None:
    text = proc.read_text(f"{proc_root}/{pid}/autogroup")  # "/autogroup-16 nice 0"
    fields = text.split() if text else []
    if len(fields) != 3 or fields[1] != "nice":
        return None
    return fields[0], int(fields[2])


def _set_autogroup_nice(pid: int, proc_root: str, nice: int) -> None:
    with open(f"{proc_root}/{pid}/autogroup", "w", encoding="ascii") as handle:
        handle.write(f"{nice}\n")


def _renice_all(qemu: Qemu, host: Host, nice_for) -> list[int]:
    """Set every thread's nice (``nice_for(tid)``), again for threads born meanwhile."""
    done: set[int] = set()
    for _ in range(NICE_PASSES):
        new = [tid for tid in proc.threads(qemu.pid, host.proc) if tid not in done]
        if not new:
            break
        for tid in new:
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                proc.set_thread_nice(tid, nice_for(tid))
            done.add(tid)
    return sorted(done)


def _weight_cgroup(state: VmState) -> CpuCgroup | None:
    if not state.weight_file:
        return None
    version = 1 if state.weight_file.endswith("cpu.shares") else 2
    return CpuCgroup(version, os.path.dirname(state.weight_file))


def _enforce(state: VmState, priority: Priority, qemu: Qemu, host: Host) -> dict:
    tids = _renice_all(qemu, host, lambda tid: priority.nice)
    result = {"nice": priority.nice, "threads": len(tids)}
    if state.autogroup_nice is not None:
        _set_autogroup_nice(qemu.pid, host.proc, priority.nice)
        result["autogroup_nice"] = priority.nice
    cgroup = _weight_cgroup(state)
    if cgroup:
        # A class without a weight means the original one, not whatever a previous layer set.
        original = int(state.weight_value)
        target = priority.target_weight(cgroup.version, original) or original
        cgroup.write(target)
        result["weight"] = {"file": cgroup.file, "value": target}
    return result


def _restore(state: VmState, qemu: Qemu, host: Host) -> dict:
    tids = _renice_all(qemu, host, lambda tid: state.nice.get(str(tid), state.nice_default))
    result = {"nice": state.nice_default, "threads": len(tids)}
    if state.autogroup_nice is not None:
        _set_autogroup_nice(qemu.pid, host.proc, state.autogroup_nice)
        result["autogroup_nice"] = state.autogroup_nice
    cgroup = _weight_cgroup(state)
    if cgroup:
        with open(cgroup.file, "w", encoding="ascii") as handle:
            handle.write(f"{state.weight_value}\n")
        result["weight"] = {"file": cgroup.file, "value": int(state.weight_value)}
    return result


def _gone(vmid: int, host: Host) -> dict:
    host.store.delete(vmid)  # nothing to restore on a process that no longer exists
    return {"vmid": vmid, "status": "gone",
            "notes": [f"domain {proc.domain_name(vmid)} is not running on this host"]}


def _save_and_enforce(vmid: int, state, qemu, host: Host, notes: list[str]) -> dict:
    """Save the state first (a crash must not lose the originals), then enforce its class."""
    host.store.save(state)
    effective = state.effective()
    result = _enforce(state, effective, qemu, host)
    return {"vmid": vmid, "status": "applied", "pid": qemu.pid, "class": effective.label,
            "layers": sorted(state.layers), "notes": notes, **result}


def apply(vmid: int, priority: Priority, layer: str, host: Host) -> dict:
    """Give VM ``vmid`` the ``priority`` in ``layer``; save the originals the first time."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}")
    with host.store.locked():
        qemu = _running(vmid, host)
        if qemu is None:
            return _gone(vmid, host)
        notes: list[str] = []
        state = _current_state(vmid, qemu, host, notes) or _snapshot(vmid, qemu, host, notes)
        state.layers[layer] = asdict(priority)
        return _save_and_enforce(vmid, state, qemu, host, notes)


def release(vmid: int, host: Host) -> dict:
    """Drop the squeeze layer: back to the deploy class, or to the saved original values."""
    with host.store.locked():
        qemu = _running(vmid, host)
        if qemu is None:
            return _gone(vmid, host)
        notes: list[str] = []
        state = _current_state(vmid, qemu, host, notes)
        if state is None:
            return {"vmid": vmid, "status": "untouched", "pid": qemu.pid,
                    "notes": notes + ["vaf has not changed this VM's priority"]}
        state.layers.pop("squeeze", None)
        effective = state.effective()
        if effective is None:
            result = _restore(state, qemu, host)
            host.store.delete(vmid)
            return {"vmid": vmid, "status": "restored", "pid": qemu.pid, "class": None,
                    "layers": [], "notes": notes, **result}
        return _save_and_enforce(vmid, state, qemu, host, notes)


def status(vmid: int, host: Host) -> dict:
    """What is in force now, read back from /proc and the cgroup file."""
    with host.store.locked():
        qemu = _running(vmid, host)
        if qemu is None:
            return _gone(vmid, host)
        notes: list[str] = []
        state = _current_state(vmid, qemu, host, notes)
    nices = {}
    for tid in proc.threads(qemu.pid, host.proc):
        stat = proc.thread_stat(qemu.pid, tid, host.proc)
        if stat:
            nices[stat.nice] = nices.get(stat.nice, 0) + 1
    cgroup, why = domain_cgroup(qemu.pid, host.proc)
    effective = state.effective() if state else None
    return {"vmid": vmid, "status": "squeezed" if state and "squeeze" in state.layers
            else ("classified" if state else "untouched"), "pid": qemu.pid,
            "class": effective.label if effective else None,
            "layers": sorted(state.layers) if state else [],
            "thread_nice": {str(k): v for k, v in sorted(nices.items())},
            "weight": ({"file": cgroup.file, "value": cgroup.read()} if cgroup else None),
            "notes": notes + ([] if cgroup else [f"no CPU weight: {why}"])}


def known_vmids(host: Host) -> list[int]:
    """VMs vaf holds a state for on this host (``status`` without ids shows these)."""
    return host.store.vmids()
