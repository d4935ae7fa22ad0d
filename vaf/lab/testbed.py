"""A real hypervisor for tests: a small Debian guest under qemu, reached by ssh on 127.0.0.1.

This machine's kernel has no device-mapper, so LVM, snapshots, thin pools and bridge filtering
are exercised inside a guest built by ``testbed/build.sh`` (see
docs/testbed.md).  One guest serves a whole pytest session (fixture ``testbed``).

Each session gets its own run dir (port, qmp socket, console log, a fresh sparse 128 GiB
``pv.img`` as /dev/vdb, the shared dir), while all sessions boot the same ``root.img`` with
``snapshot=on`` so it stays pristine: several engineers can run suites concurrently.

Environment: ``TESTBED=0`` skips the tests that use the fixture; ``VAF_TESTBED_DIR`` is the
build dir; ``VAF_TESTBED_ACCEL=kvm`` uses real KVM where it exists (never on PVM hosts);
``VAF_TESTBED_KEEP=1`` keeps the run dir after the session for post-mortems;
``VAF_TESTBED_HOST_SETUP=install.sh`` boots the guest without the image's blanket sudo rule
for oneadmin and sets it up with ``install.sh host`` alone (what an admin does on a
hypervisor), so the tests run against exactly the rules vaf installs.

Importing this module has no side effects: nothing runs until ``Testbed.start``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "testbed" / "build.sh"
DEFAULT_BUILD_DIR = "/var/cache/vaf-testbed"
HOST_ALIAS = "testhv"
ONEADMIN_UID = 9869
READY_MARKER = "vaf-init: READY"
SHARE_TAG = "vafshare"
PV_SIZE = "128G"
POWEROFF = "/sbin/vaf-poweroff"
BLANKET_SUDO = "/etc/sudoers.d/oneadmin"  # testbed/build.sh: oneadmin ALL=(ALL) NOPASSWD: ALL
HOST_SETUPS = ("image", "install.sh")  # who grants oneadmin its sudo in the guest

BUILD_TIMEOUT = 1800  # from nothing it takes ~1-2 min; a slow mirror may take much longer
BOOT_TIMEOUT = 240
SHUTDOWN_TIMEOUT = 60
PORT_ATTEMPTS = 3  # another session may grab the port between our probe and qemu's bind
RUN_DIR_PREFIX = "vaf-tb-"
STALE_AFTER = 120  # seconds; a younger run dir may belong to a session still setting up

# LVM's rule for VG names, checked before a name reaches a remote command or a /dev path.
VG_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")


class TestbedError(RuntimeError):
    """The test hypervisor could not be built, booted or cleaned up."""

    __test__ = False  # not a test class, whatever its name


class SshError(subprocess.CalledProcessError):
    """A command in the guest failed; unlike CalledProcessError, str() shows its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {_tail(self.stdout)}\nstderr: {_tail(self.stderr)}"


@dataclass(frozen=True)
class LoopVG:
    """A volume group on a loop device in the guest; str() is the VG name."""

    name: str
    device: str
    image: str

    def __str__(self) -> str:
        return self.name


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


def _read_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except FileNotFoundError:
        return f"({path.name} missing)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn for qemu: SIGKILL it when pytest dies, even by SIGKILL (Linux only)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# --- safety net: never leave a qemu behind, even when pytest is interrupted -----------------

_LIVE: set[Testbed] = set()
_NET_INSTALLED = False


def _kill_live_guests() -> None:
    for tb in list(_LIVE):
        tb.kill()


def _on_fatal_signal(signum, _frame) -> None:
    _kill_live_guests()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_safety_net() -> None:
    global _NET_INSTALLED
    if _NET_INSTALLED:
        return
    _NET_INSTALLED = True
    atexit.register(_kill_live_guests)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        # Only where nobody else handles it (pytest leaves both at the default).
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _on_fatal_signal)


def qemu_processes_of(run_dir: str) -> list[int]:
    """PIDs of qemu processes whose command line names run_dir (i.e. belong to that run)."""
    pids = []
    needle = run_dir.rstrip("/").encode() + b"/"  # /tmp/vaf-tb-x/..., never /tmp/vaf-tb-xy
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if b"qemu" in argv[0] and any(needle in a for a in argv):
            pids.append(int(entry.name))
    return pids


def sweep_stale_run_dirs() -> None:
    """Remove run dirs left by sessions that were killed (SIGKILL leaves pv.img, which grows
    to GBs).  A live session holds an flock on its alive.lock; VAF_TESTBED_KEEP dirs stay."""
    for run_dir in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if time.time() - run_dir.stat().st_mtime < STALE_AFTER:
                continue
            if (run_dir / "keep").exists() or qemu_processes_of(str(run_dir)):
                continue
            with open(run_dir / "alive.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while alive
                shutil.rmtree(run_dir)


# --- the test hypervisor --------------------------------------------------------------------


class Testbed:
    """One booted guest: start() / stop(), or use it as a context manager."""

    __test__ = False  # not a test class, whatever its name
    host = HOST_ALIAS

    def __init__(self, build_dir: str | None = None, memory_mb: int = 2048, cpus: int = 2,
                 accel: str | None = None, boot_timeout: float = BOOT_TIMEOUT):
        self.build_dir = Path(build_dir or os.environ.get("VAF_TESTBED_DIR") or DEFAULT_BUILD_DIR)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.accel = accel or os.environ.get("VAF_TESTBED_ACCEL", "tcg")
        self.boot_timeout = boot_timeout
        self.run_dir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self.shutdown_seconds: float | None = None
        self._alive_lock = None  # open file holding the run dir's flock while we live
        self.host_setup = os.environ.get("VAF_TESTBED_HOST_SETUP", "image")
        if self.host_setup not in HOST_SETUPS:
            raise TestbedError(f"VAF_TESTBED_HOST_SETUP must be one of {HOST_SETUPS}, "
                               f"got {self.host_setup!r}")

    # -- paths --------------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return str(self.build_dir / "id_ed25519")

    @property
    def ssh_config(self) -> str:
        return str(self._run_path("ssh_config"))

    @property
    def shared_dir(self) -> str:
        return str(self._run_path("shared"))

    @property
    def console_log(self) -> Path:
        return self._run_path("console.log")

    def _run_path(self, name: str) -> Path:
        if self.run_dir is None:
            raise TestbedError("the testbed is not started")
        return self.run_dir / name

    # -- build ----------------------------------------------------------------------------------

    def build(self) -> str:
        """Run testbed/build.sh (cheap when current: it only re-checks stamps); return its log."""
        env = dict(os.environ, VAF_TESTBED_DIR=str(self.build_dir))
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=BUILD_TIMEOUT)
        if proc.returncode != 0:
            raise TestbedError(f"testbed build failed:\n{_tail(proc.stdout)}")
        return proc.stdout

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> Testbed:
        sweep_stale_run_dirs()
        self._make_run_dir()
        _install_safety_net()
        try:
            self._boot_with_free_port()
            if self.host_setup == "install.sh":
                self.drop_blanket_sudo()
                self.install_role("host")
        except BaseException:
            self.stop()
            raise
        return self

    def _make_run_dir(self) -> None:
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        self._alive_lock = open(run_dir / "alive.lock", "w")  # held until stop()
        fcntl.flock(self._alive_lock, fcntl.LOCK_EX)
        # Both paths go on qemu's option lines (',' separates options), the run dir also on
        # the kernel command line (whitespace separates parameters).
        for path in (run_dir, self.build_dir):
            if re.search(r"[\s,]", str(path)):
                shutil.rmtree(run_dir)
                raise TestbedError(f"path {path} must not contain whitespace or ','")
        run_dir.chmod(0o755)
        self.run_dir = run_dir
        shared = run_dir / "shared"
        shared.mkdir()
        # Owned by oneadmin, as a datastore is, so the guest's oneadmin can write into it.
        if os.geteuid() == 0:
            os.chown(shared, ONEADMIN_UID, ONEADMIN_UID)
        shared.chmod(0o775)

    def _boot_with_free_port(self) -> None:
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self._write_ssh_config()
            started = time.monotonic()
            try:
                self._launch_and_wait()
            except TestbedError:
                if attempt + 1 < PORT_ATTEMPTS and self._lost_port_race():
                    self.kill()
                    continue
                raise
            self.boot_seconds = time.monotonic() - started
            return

    def _lost_port_race(self) -> bool:
        log = self._run_path("qemu.log")
        # qemu: "Could not set up host forwarding rule 'tcp:127.0.0.1:...'"
        return log.exists() and "forwarding rule" in log.read_text(errors="replace")

    def _write_ssh_config(self) -> None:
        # ControlMaster: one TCP+ssh handshake (~1 s under TCG) per user, then cheap sessions.
        # %C is a hash, keeping the socket path short (unix sockets allow 108 bytes).
        text = f"""\
Host {HOST_ALIAS}
    HostName 127.0.0.1
    Port {self.port}
    User oneadmin
    IdentityFile {self.key}
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 30
    ControlMaster auto
    ControlPath {self.run_dir}/cm-%C
    ControlPersist 60
"""
        Path(self.ssh_config).write_text(text)

    def _qemu_argv(self) -> list[str]:
        b, r = self.build_dir, self.run_dir
        accel = ["-accel", "tcg,thread=multi", "-cpu", "max"]
        if self.accel == "kvm":  # real KVM only: PVM hosts abort with it (testbed.md 1)
            accel = ["-accel", "kvm", "-cpu", "host"]
        # mitigations=off: cheaper syscalls under TCG; acpi=noirq: IRQ routing from the
        # BIOS table instead of ACPI link objects, whose evaluation under TCG cost ~1 s.
        cmdline = ("root=/dev/vda rw console=ttyS0 panic=-1 quiet loglevel=4 net.ifnames=0 "
                   f"mitigations=off acpi=noirq vaf.share={r}/shared")
        disk = "if=virtio,format=raw,cache=unsafe,discard=unmap"
        return [
            "qemu-system-x86_64", *accel, "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-name", "vaf-testbed", "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", f"file:{r}/console.log",
            "-qmp", f"unix:{r}/qmp.sock,server=on,wait=off",
            "-pidfile", f"{r}/qemu.pid",
            "-kernel", str(self._kernel()), "-initrd", f"{b}/initrd.img", "-append", cmdline,
            "-drive", f"file={b}/root.img,{disk},snapshot=on",
            "-drive", f"file={r}/pv.img,{disk}",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=n0",
            "-virtfs", f"local,path={r}/shared,mount_tag={SHARE_TAG},security_model=none",
        ]

    def _launch_and_wait(self) -> None:
        # Hold the build lock (shared) until the guest is up: a concurrent rebuild (exclusive
        # lock) then waits until qemu has opened the images, and replaces them by rename,
        # which open files survive.
        with self._build_lock(shared=True):
            self._launch_qemu()
            self._wait_for(self._console_says_ready, self.boot_timeout,
                           "the guest's READY marker")
        self._wait_for(self._ssh_answers, 60, "ssh")

    def _kernel(self) -> Path:
        # The uncompressed ELF kernel boots through PVH and skips the bzImage decompression,
        # 4-15 s of every boot under TCG; build.sh only makes it for kernels that can.
        vmlinux = self.build_dir / "vmlinux"
        return vmlinux if vmlinux.exists() else self.build_dir / "vmlinuz"

    def _launch_qemu(self) -> None:
        for name in ("console.log", "qemu.log", "qemu.pid"):
            self._run_path(name).unlink(missing_ok=True)
        with open(self._run_path("pv.img"), "wb") as pv:  # a fresh, empty, sparse PV
            pv.truncate(_size_bytes(PV_SIZE))
        # snapshot=on puts its overlay in $TMPDIR: keep it in the run dir, removed with it.
        env = dict(os.environ, TMPDIR=str(self.run_dir))
        with open(self._run_path("qemu.log"), "wb") as log:
            # Not -daemonize: as our child, qemu can be tied to our life (PDEATHSIG); its own
            # session keeps a terminal's Ctrl-C from killing it before a clean power-off.
            self.proc = subprocess.Popen(self._qemu_argv(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=env,
                                         preexec_fn=_die_with_parent, start_new_session=True)
        _LIVE.add(self)

    @contextlib.contextmanager
    def _build_lock(self, shared: bool):
        self.build_dir.mkdir(parents=True, exist_ok=True)
        with open(self.build_dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise TestbedError(f"qemu exited ({self.proc.returncode}) during {what}\n"
                                   + self._diagnostics())
            if time.monotonic() > deadline:
                raise TestbedError(f"timeout ({timeout:.0f}s) waiting for {what}\n"
                                   + self._diagnostics())
            time.sleep(0.2)

    def _diagnostics(self) -> str:
        return (f"--- qemu.log ---\n{_read_tail(self._run_path('qemu.log'))}\n"
                f"--- console.log (tail) ---\n{_read_tail(self.console_log)}")

    def _console_says_ready(self) -> bool:
        # Polling the console is cheap; an ssh handshake tried while the guest still boots
        # takes seconds under TCG and slows the boot itself.
        try:
            return READY_MARKER in self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    def _ssh_answers(self) -> bool:
        # Also starts the root ControlMaster that later calls reuse.
        try:
            return self.ssh("true", check=False, timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    # -- use ------------------------------------------------------------------------------------

    def ssh_argv(self, user: str = "oneadmin") -> list[str]:
        """ssh argv up to and including the host; append "--" and the remote command."""
        return ["ssh", "-F", self.ssh_config, "-l", user, HOST_ALIAS]

    def ssh(self, cmd: str | list[str], user: str = "root", check: bool = True,
            timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd in the guest (a list is shlex-joined for the remote shell); text mode."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = [*self.ssh_argv(user), "--", remote]
        # Never let ssh read pytest's stdin.
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **stdin)
        if check and proc.returncode != 0:
            raise SshError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def sync_remotes(self, local_remotes_dir: str | os.PathLike,
                     dest: str = "/var/tmp/one") -> None:
        """Replace dest in the guest with a copy of local_remotes_dir, as `onehost sync` does:
        a tar stream over ssh as oneadmin (so oneadmin owns it), symlinks kept as symlinks."""
        src = Path(local_remotes_dir)
        if not src.is_dir():
            raise TestbedError(f"{src} is not a directory")
        q = shlex.quote(dest)
        remote = f"rm -rf {q} && mkdir -p {q} && tar -xf - -C {q}"
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        with tar:
            ssh = subprocess.run([*self.ssh_argv("oneadmin"), "--", remote], stdin=tar.stdout,
                                 capture_output=True, text=True, timeout=300)
        if tar.returncode != 0 or ssh.returncode != 0:
            raise TestbedError(f"sync_remotes {src} -> {dest} failed (tar {tar.returncode}, "
                               f"ssh {ssh.returncode}): {_tail(ssh.stderr)}")

    # -- vaf installed as an admin installs it ---------------------------------------------------

    def drop_blanket_sudo(self) -> None:
        """Remove the image's ``oneadmin ALL=(ALL) NOPASSWD: ALL`` (root.img stays pristine:
        snapshot=on), and check that oneadmin really lost it."""
        self.ssh(["rm", "-f", BLANKET_SUDO])
        if self.ssh("sudo -n true", user="oneadmin", check=False).returncode == 0:
            raise TestbedError("oneadmin still has blanket sudo in the guest")

    def copy_repo(self, repo: str | os.PathLike = REPO) -> str:
        """The repo's files (no .git, venvs or caches) in the shared dir, the same path in
        the guest; returns that path."""
        dest = Path(self.shared_dir) / "vaf-repo"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(repo, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"))
        return str(dest)

    def install_role(self, role: str, *args: str, check: bool = True,
                     timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``install.sh <role> <args>`` as root in the guest, from a copy of the repo made
        at the first call (``install.sh host`` installs the sudoers file, vaf-privileged...)."""
        # one copy per guest: a tree edited between two runs would look like a change
        if getattr(self, "_repo_copy", None) is None:
            self._repo_copy = self.copy_repo()
        repo = self._repo_copy
        return self.ssh(["bash", f"{repo}/install.sh", role, *args], check=check,
                        timeout=timeout)

    @contextlib.contextmanager
    def loop_vg(self, name: str, size_mb: int):
        """A VG `name` on a loop device over a sparse file in the guest (e.g. to fill it up);
        removed with its LVs, PV, loop device and file afterwards."""
        if not VG_NAME.fullmatch(name):
            raise ValueError(f"bad VG name {name!r}")
        image = f"/var/tmp/vaf-loop-{name}.img"
        setup = ('truncate -s "$2M" "$1"; dev=$(losetup --find --show "$1"); '
                 'pvcreate -q "$dev" >&2; vgcreate -q "$3" "$dev" >&2; echo "$dev"')
        try:
            proc = self.ssh(["sh", "-euc", setup, "sh", image, str(int(size_mb)), name])
            vg = LoopVG(name, proc.stdout.strip(), image)
            yield vg
        finally:
            self._remove_loop_vg(name, image)

    def _remove_loop_vg(self, name: str, image: str) -> None:
        # Each step may have nothing to do (setup failed half-way): carry on, then verify.
        teardown = ('dev=$(losetup -j "$1" -O NAME -n | head -n1); '
                    'lvremove -qfy "$2" >/dev/null 2>&1; vgremove -qfy "$2" >/dev/null 2>&1; '
                    'if [ -n "$dev" ]; then pvremove -qfy "$dev" >/dev/null 2>&1; '
                    'losetup -d "$dev"; fi; rm -f "$1"; '
                    'if vgs "$2" >/dev/null 2>&1; then echo "VG $2 still exists"; exit 1; fi; '
                    'if [ -n "$(losetup -j "$1")" ]; then echo "loop device left"; exit 1; fi')
        self.ssh(["sh", "-uc", teardown, "sh", image, name])

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Power the guest off (falling back to signals), check that no qemu of this run is
        left, and remove the run dir (unless VAF_TESTBED_KEEP=1)."""
        if self.proc is not None and self.proc.poll() is None:
            started = time.monotonic()
            grace = 0.0
            if self.boot_seconds is not None:  # ssh worked: power off cleanly
                self._request_poweroff()
                grace = SHUTDOWN_TIMEOUT
            self._wait_or_kill(grace)
            self.shutdown_seconds = time.monotonic() - started
        self._close_masters()
        self._assert_no_qemu_left()
        _LIVE.discard(self)
        if self.run_dir is not None:
            if os.environ.get("VAF_TESTBED_KEEP") == "1":
                (self.run_dir / "keep").touch()
            else:
                shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._alive_lock is not None:
            self._alive_lock.close()
            self._alive_lock = None

    def _request_poweroff(self) -> None:
        # Detached: the program kills sshd, so an attached session would hang (testbed.md 4).
        with contextlib.suppress(subprocess.TimeoutExpired, TestbedError):
            self.ssh(f"nohup {POWEROFF} >/dev/null 2>&1 &", check=False, timeout=20)

    def _wait_or_kill(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Stop qemu now, without a clean power-off (safety net, failed boots)."""
        if self.proc is not None and self.proc.poll() is None:
            self._wait_or_kill(0)
        _LIVE.discard(self)

    def _close_masters(self) -> None:
        if self.run_dir is None or not Path(self.ssh_config).exists():
            return
        for user in ("root", "oneadmin"):
            subprocess.run(["ssh", "-F", self.ssh_config, "-l", user, "-O", "exit", HOST_ALIAS],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)

    def _assert_no_qemu_left(self) -> None:
        if self.run_dir is None:
            return
        left = qemu_processes_of(str(self.run_dir))
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left:
            raise TestbedError(f"qemu processes {left} of {self.run_dir} were left behind")

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
