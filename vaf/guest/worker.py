"""A worker VM joins the batch system: the boot steps, all through the runner.

Run by OpenNebula's guest agent as ``/etc/one-context.d/net-95-vaf-worker`` (after the
network is up) or by cloud-init's ``runcmd``. Steps, each idempotent:

1. host name (``SET_HOSTNAME``), 2. swap disks, 3. the XFS scratch disk, 4. batch client
configuration for the head node, 5. **one** ssh call to the head node's gate
(``join <hostname> <cpus> [<properties>]``), retried with back-off while the head is
unreachable or its batch system fails, skipped when the state marker says it is done,
6. start the batch client, 7. OneGate ``READY=YES``.

Secrets (the join key, the munge key, the OneGate token) are root's alone: the context CD is
mounted only while it is read, in a directory only root can enter, and unmounted before any
step runs; each secret file is created with its owner and mode before its content is written.

Every path is taken under ``root`` (``/`` on a VM, a scratch directory in tests) and every
command goes through the runner, so a test observes exactly what a VM would do.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import pwd
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vaf.errors import VafError
from vaf.gate.grammar import JoinRequest, Refused, validate_hostname
from vaf.guest.context import ContextError, read_context
from vaf.host.runner import CommandError, CommandTimeout, Runner

#: where addon-context-linux keeps the context it ran with, then the CD itself
CONTEXT_CANDIDATES = ("run/one-context/context.sh.network",
                      "var/run/one-context/context.sh.network",
                      "run/one-context/context.sh.local", "var/run/one-context/context.sh.local")
#: where vaf before 1.1 left the CD mounted (world-readable): unmounted when found
OLD_CONTEXT_MOUNT = "run/vaf/context"
STATE_DIR = "var/lib/vaf"
RUN_DIR = "run/vaf"  # root only (0700): the CD's mount point and the secrets live here
MUNGE_KEY = "/etc/munge/munge.key"
#: how slurmd claims its node: ``dynamic`` (``-Z``: the node the gate created) or ``cloud``
#: (a ``State=CLOUD`` node slurm.conf defines, resumed by power saving: ``-Z`` refuses it)
SLURMD_MODES = ("dynamic", "cloud")
JOINED_MARKER = "joined"

# gate exit codes (vaf.gate.gate): which ones are worth another attempt
GATE_REFUSED, GATE_DENIED = 2, 3
SSH_UNREACHABLE = 255
ONEGATE_ATTEMPTS = 3
_HOST_KEY_RE = re.compile(r"[a-z0-9@.-]+ [A-Za-z0-9+/]+={0,3}", re.ASCII)


class GuestError(VafError):
    """A step cannot be done; the reason is one line for the context log."""


@dataclass(frozen=True)
class Settings:
    """What the worker reads from the context (docs/contextualization.md lists each key)."""

    hostname: str
    head: str
    batch: str
    cpus: int
    properties: tuple[str, ...]
    join_key: bytes
    head_user: str = "vafgate"
    head_port: int = 22
    head_host_key: str = ""
    scratch_mount: str = "/scratch"
    scratch_label: str = ""
    pbs_home: str = "/var/spool/torque"
    munge_key: bytes = b""
    slurmd_mode: str = "dynamic"
    join_attempts: int = 8
    join_backoff: float = 5.0
    onegate_endpoint: str = ""
    onegate_token: str = ""
    vmid: str = ""

    @property
    def request(self) -> JoinRequest:
        return JoinRequest(self.hostname, self.cpus, self.properties)


def settings_from_context(ctx: Mapping[str, str], context_dir: Path | None = None,
                          current_hostname: str = "") -> Settings:
    """Validate the context; a bad or missing value is a :class:`GuestError`."""
    def get(key: str, default: str = "") -> str:
        return ctx.get(key, default).strip()

    try:
        # VAF_NODE: the node the elastic daemon started this VM for (its name is the node's)
        hostname = validate_hostname((get("SET_HOSTNAME") or get("VAF_HOSTNAME")
                                      or get("VAF_NODE") or current_hostname).lower())
        request = JoinRequest(hostname, _int(get("VAF_CPUS") or str(os.cpu_count() or 1),
                                              "VAF_CPUS"),
                              tuple(p for p in get("VAF_PROPERTIES").split(",") if p))
    except Refused as err:
        raise GuestError(f"context: {err.reason}") from None
    head = get("VAF_HEAD")
    if not head or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]*", head):
        raise GuestError("context: VAF_HEAD must name the head node (host name or address)")
    batch = get("VAF_BATCH", "torque").lower()
    if batch not in ("torque", "slurm"):
        raise GuestError(f"context: VAF_BATCH must be torque or slurm, got {batch!r}")
    slurmd_mode = get("VAF_SLURMD_MODE", "dynamic").lower()
    if slurmd_mode not in SLURMD_MODES:
        raise GuestError("context: VAF_SLURMD_MODE must be dynamic or cloud, "
                         f"got {slurmd_mode!r}")
    node = get("VAF_NODE").lower()
    if slurmd_mode == "cloud" and node and node != hostname:  # slurmd would claim another
        raise GuestError(f"context: VAF_NODE {node} is not the host name {hostname}: "
                         "set SET_HOSTNAME=\"$NAME\" in the template")
    host_key = get("VAF_HEAD_HOST_KEY")
    if host_key and (not host_key.isprintable()
                     or not _HOST_KEY_RE.fullmatch(" ".join(host_key.split()[:2]))):
        raise GuestError("context: VAF_HEAD_HOST_KEY must be '<type> <base64>'")
    return Settings(
        hostname=request.hostname, head=head, batch=batch, cpus=request.cpus,
        properties=request.properties, join_key=_join_key(ctx, context_dir),
        head_user=get("VAF_HEAD_USER", "vafgate"),
        head_port=_int(get("VAF_HEAD_PORT", "22"), "VAF_HEAD_PORT"),
        head_host_key=" ".join(host_key.split()[:2]),
        scratch_mount=get("VAF_SCRATCH_MOUNT", "/scratch"), scratch_label=get("VAF_SCRATCH_LABEL"),
        pbs_home=get("VAF_PBS_HOME", "/var/spool/torque"),
        munge_key=_b64(get("VAF_MUNGE_KEY_BASE64"), "VAF_MUNGE_KEY_BASE64"),
        slurmd_mode=slurmd_mode,
        join_attempts=_int(get("VAF_JOIN_ATTEMPTS", "8"), "VAF_JOIN_ATTEMPTS"),
        join_backoff=float(_int(get("VAF_JOIN_BACKOFF", "5"), "VAF_JOIN_BACKOFF", minimum=0)),
        onegate_endpoint=get("ONEGATE_ENDPOINT"), vmid=get("VMID"),
        onegate_token=get("ONEGATE_TOKEN") or _token_file(context_dir))


def _int(text: str, key: str, minimum: int = 1) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < minimum:
        raise GuestError(f"context: {key} must be an integer >= {minimum}, got {text!r}")
    return int(text)


def _b64(text: str, key: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise GuestError(f"context: {key} is not valid base64") from None


def _join_key(ctx: Mapping[str, str], context_dir: Path | None) -> bytes:
    if ctx.get("VAF_JOIN_KEY_BASE64", "").strip():
        key = _b64(ctx["VAF_JOIN_KEY_BASE64"], "VAF_JOIN_KEY_BASE64")
    elif ctx.get("VAF_JOIN_KEY_FILE", "").strip() and context_dir is not None:
        # a FILES entry lands next to context.sh on the CD; only a plain name is accepted
        name = ctx["VAF_JOIN_KEY_FILE"].strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise GuestError("context: VAF_JOIN_KEY_FILE must be a file name from FILES")
        try:
            key = (context_dir / name).read_bytes()
        except OSError as err:
            raise GuestError(f"context: cannot read the join key {name}: {err.strerror}") from None
    else:
        raise GuestError("context: no join key (VAF_JOIN_KEY_BASE64 or VAF_JOIN_KEY_FILE)")
    if b"PRIVATE KEY-----" not in key:
        raise GuestError("context: the join key is not an OpenSSH private key")
    return key


def _token_file(context_dir: Path | None) -> str:
    try:
        return (context_dir / "token.txt").read_text().strip() if context_dir else ""
    except OSError:
        return ""


Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    sys.stderr.write(f"vaf-worker: {message}\n")
    sys.stderr.flush()


@dataclass
class Worker:
    """The boot steps for one VM, under ``root`` with ``runner``."""

    settings: Settings
    root: Path
    runner: Runner = field(default_factory=Runner)
    log: Log = stderr_log
    sleep: Callable[[float], None] = time.sleep
    #: one ssh call may take this long (connect, gate, qmgr/scontrol) before it is retried
    ssh_timeout: float = 120.0

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def run_all(self) -> None:
        self.install_secrets()
        self.set_hostname()
        self.enable_swap()
        self.mount_scratch()
        self.configure_batch_client()
        self.join()
        self.start_batch_client()
        self.report_ready()

    # 0. secrets ---------------------------------------------------------------------
    @property
    def join_key_path(self) -> Path:
        return self.path(RUN_DIR) / "join_key"

    @property
    def onegate_headers_path(self) -> Path:
        return self.path(RUN_DIR) / "onegate-headers"

    def install_secrets(self) -> None:
        """Each secret in its file, readable by its owner only (root, munge for its key)."""
        s = self.settings
        private_dir(self.path(RUN_DIR))
        _write_if_changed(self.join_key_path, s.join_key, mode=0o600)
        if s.onegate_token and s.vmid:
            # curl reads the headers from a file: the token must not show in the process list
            _write_if_changed(self.onegate_headers_path, f"X-ONEGATE-TOKEN: {s.onegate_token}\n"
                                                         f"X-ONEGATE-VMID: {s.vmid}\n", mode=0o600)
        if s.batch == "slurm" and s.munge_key:
            try:
                owner = pwd.getpwnam("munge")
                ids = (owner.pw_uid, owner.pw_gid)
            except KeyError:
                self.log("no munge account yet: install munge in the image")
                ids = None
            _write_if_changed(self.path(MUNGE_KEY), s.munge_key, mode=0o400, owner=ids)

    # 1. host name -------------------------------------------------------------------
    def set_hostname(self) -> None:
        name = self.settings.hostname
        if self.runner.output(["hostname"]).strip() != name:
            self.runner.run(["hostname", name])
            self.log(f"host name set to {name}")
        _write_if_changed(self.path("/etc/hostname"), name + "\n")

    # 2. swap ------------------------------------------------------------------------
    def enable_swap(self) -> None:
        active = _first_column(self.path("/proc/swaps"))
        for disk in self.disks("swap"):
            if disk["DEVNAME"] not in active:
                self.runner.run(["swapon", disk["DEVNAME"]])
                self.log(f"swap enabled on {disk['DEVNAME']}")
            self.add_fstab(disk, "none", "swap", "sw,nofail")

    # 3. scratch ---------------------------------------------------------------------
    def mount_scratch(self) -> None:
        mount_point = self.settings.scratch_mount
        mounts = _mounts(self.path("/proc/mounts"))
        if mount_point in mounts.values():
            return
        disk = self.scratch_disk(mounts)
        if disk is None:
            self.log("no unmounted XFS disk for scratch: skipped")
            return
        target = self.path(mount_point)
        target.mkdir(parents=True, exist_ok=True)
        self.runner.run(["mount", "-t", "xfs", "-o", "noatime,nodev,nosuid",
                         disk["DEVNAME"], str(target)])
        # jobs of every user write there, like /tmp
        target.chmod(0o1777)
        self.add_fstab(disk, mount_point, "xfs", "noatime,nodev,nosuid,nofail")
        self.log(f"scratch {disk['DEVNAME']} mounted on {mount_point}")

    def scratch_disk(self, mounts: dict[str, str]) -> dict[str, str] | None:
        """By label when the context names one, else the first unmounted XFS disk."""
        candidates = [d for d in self.disks("xfs") if d["DEVNAME"] not in mounts]
        if self.settings.scratch_label:
            candidates = [d for d in candidates if d.get("LABEL") == self.settings.scratch_label]
        return candidates[0] if candidates else None

    def disks(self, fstype: str) -> list[dict[str, str]]:
        """Block devices with ``fstype``, in device order (``blkid`` exits 2 for none)."""
        result = self.runner.run(["blkid", "-o", "export", "-t", f"TYPE={fstype}"], check=False)
        if result.returncode not in (0, 2):
            raise CommandError(result.argv, None, result.returncode, result.stdout, result.stderr)
        disks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                 for block in result.stdout.split("\n\n")]
        return sorted((d for d in disks if d.get("DEVNAME")), key=lambda d: _natural(d["DEVNAME"]))

    def add_fstab(self, disk: dict[str, str], mount_point: str, fstype: str, options: str) -> None:
        """Persist across reboots: the guest agent re-runs only when the context changes."""
        source = f"UUID={disk['UUID']}" if disk.get("UUID") else disk["DEVNAME"]
        fstab = self.path("/etc/fstab")
        lines = fstab.read_text().splitlines() if fstab.exists() else []
        if any(line.split()[:1] == [source] for line in lines if line.strip()):
            return
        lines.append(f"{source} {mount_point} {fstype} {options} 0 0")
        _write_if_changed(fstab, "\n".join(lines) + "\n")

    # 4. batch client configuration --------------------------------------------------
    def configure_batch_client(self) -> None:
        if self.settings.batch == "torque":
            self.configure_torque()
        else:
            self.configure_slurm()

    def configure_torque(self) -> None:
        home = self.settings.pbs_home
        _write_if_changed(self.path(f"{home}/server_name"), self.settings.head + "\n")
        _write_if_changed(self.path(f"{home}/mom_priv/config"),
                          f"$pbsserver {self.settings.head}\n$logevent 255\n"
                          f"$usecp *:{self.settings.scratch_mount} {self.settings.scratch_mount}\n")

    def configure_slurm(self) -> None:
        """Configless slurmd that claims its node (started only at the end, step 6)."""
        s = self.settings
        options = slurmd_options(s.slurmd_mode, s.hostname, s.head, s.properties)
        # systemd splits $SLURMD_OPTIONS on blanks without quote handling: one word per option
        _write_if_changed(self.path("/etc/default/slurmd"),
                          f"SLURMD_OPTIONS=\"{' '.join(options)}\"\n")

    # 5. join ------------------------------------------------------------------------
    def join(self) -> None:
        marker = self.path(f"{STATE_DIR}/{JOINED_MARKER}")
        done = f"{self.settings.head} {self.settings.request.command()}\n"
        if marker.exists() and marker.read_text() == done:
            self.log("already joined (state marker): no ssh call")
            return
        argv = self.ssh_argv()
        for attempt in range(1, self.settings.join_attempts + 1):
            try:
                result = self.runner.run(argv, check=False, timeout=self.ssh_timeout)
            except CommandTimeout as err:  # a hung head node is retried like a dead one
                code, said = SSH_UNREACHABLE, err.reason
            else:
                code = result.returncode
                said = (result.stderr.strip().splitlines() or [f"exit {code}"])[-1]
            if code == 0:
                _write_if_changed(marker, done)
                self.log(f"joined {self.settings.head}: {result.stdout.strip()}")
                return
            if code in (GATE_REFUSED, GATE_DENIED):
                raise GuestError(f"the head node refused the join: {said}")
            if attempt < self.settings.join_attempts:
                delay = min(self.settings.join_backoff * 2 ** (attempt - 1), 300.0)
                self.log(f"join attempt {attempt} failed ({said}); retrying in {delay:g} s")
                self.sleep(delay)
        raise GuestError(f"could not join {self.settings.head} after "
                         f"{self.settings.join_attempts} attempts: {said}")

    def ssh_argv(self) -> list[str]:
        key = self.join_key_path
        if not key.exists():
            self.install_secrets()
        known_hosts = self.path(RUN_DIR) / "known_hosts"
        checking = "accept-new"
        if self.settings.head_host_key:
            host = self.settings.head
            if self.settings.head_port != 22:
                host = f"[{host}]:{self.settings.head_port}"
            _write_if_changed(known_hosts, f"{host} {self.settings.head_host_key}\n")
            checking = "yes"
        return ["ssh", "-F", "none", "-i", str(key), "-p", str(self.settings.head_port),
                "-l", self.settings.head_user, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", f"StrictHostKeyChecking={checking}",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=20",
                "-o", "ServerAliveInterval=15", "-T", "--", self.settings.head,
                self.settings.request.command()]

    # 6. batch client ----------------------------------------------------------------
    def start_batch_client(self) -> None:
        units = ["pbs_mom"] if self.settings.batch == "torque" else ["munge", "slurmd"]
        self.runner.run(["systemctl", "enable", "--now", *units])
        self.log(f"started {' '.join(units)}")

    # 7. OneGate ---------------------------------------------------------------------
    def report_ready(self) -> None:
        s = self.settings
        if not (s.onegate_endpoint and s.onegate_token and s.vmid):
            self.log("no OneGate endpoint/token in the context: readiness not reported")
            return
        headers = self.onegate_headers_path
        if not headers.exists():
            self.install_secrets()
        argv = ["curl", "-sS", "--fail", "--max-time", "20", "-X", "PUT", "-H", f"@{headers}",
                "--data", "READY=YES", f"{s.onegate_endpoint.rstrip('/')}/vm"]
        for attempt in range(1, ONEGATE_ATTEMPTS + 1):
            if self.runner.succeeds(argv):
                self.log("OneGate: READY=YES")
                return
            if attempt < ONEGATE_ATTEMPTS:
                self.sleep(2.0 * attempt)
        raise GuestError("OneGate did not accept READY=YES")


def slurmd_options(mode: str, node: str, head: str, properties: tuple[str, ...]) -> list[str]:
    """slurmd's options: ``-Z`` claims a dynamic node (the gate's ``scontrol create``) and
    ``--conf`` gives its features; a ``State=CLOUD`` node is defined in slurm.conf (features
    included) and ``-Z`` refuses such a name, so it is claimed with ``-N`` alone."""
    if mode == "cloud":
        return ["-N", node, "--conf-server", head]
    options = ["-Z", "-N", node, "--conf-server", head]
    if properties:
        options += ["--conf", f"Feature={','.join(properties)}"]
    return options


def _write_if_changed(path: Path, content: str | bytes, mode: int = 0o644,
                      owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` atomically; the new file has its owner and mode before any byte of
    the content is in it (a secret is never readable by someone else, not even briefly)."""
    data = content.encode() if isinstance(content, str) else content
    current = _stat(path)
    if current is not None and stat.S_IMODE(current.st_mode) == mode \
            and (owner is None or (current.st_uid, current.st_gid) == owner) \
            and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.vaf-tmp")
    try:
        temporary.unlink()  # a leftover of an interrupted run, or someone's trap
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)  # whatever the umask
        with open(fd, "wb", closefd=False) as handle:
            handle.write(data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner (root on a VM) can enter; refused when it is
    a symlink or belongs to someone else."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise GuestError(f"{path} is not a directory of this user: refusing it")
    os.chmod(path, 0o700)
    return path


def _first_column(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line.split()[0] for line in path.read_text().splitlines()[1:] if line.split()}


def _mounts(path: Path) -> dict[str, str]:
    """device -> mount point from /proc/mounts."""
    if not path.exists():
        return {}
    return {w[0]: w[1] for w in (line.split() for line in path.read_text().splitlines())
            if len(w) >= 2}


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --- locating the context -------------------------------------------------------------

@contextmanager
def open_context(root: Path, runner: Runner) -> Iterator[Path]:
    """The context.sh to read: the guest agent's copy, else the CONTEXT CD's (cloud-init).

    The CD is mounted read-only in a fresh directory under the root-only RUN_DIR, for as
    long as the ``with`` block reads it, then unmounted: its files (the join key, the OneGate
    token) are world-readable on the CD, so no one else may ever reach them.
    """
    for candidate in CONTEXT_CANDIDATES:
        if (root / candidate).is_file():
            yield root / candidate
            return
    _unmount_old_context(root, runner)
    device = runner.run(["blkid", "-l", "-o", "device", "-t", "LABEL=CONTEXT"],
                        check=False).stdout.strip()
    if not device:
        raise ContextError("no context: no context.sh from the guest agent, no CONTEXT CD")
    mount_point = Path(tempfile.mkdtemp(prefix="context.", dir=private_dir(root / RUN_DIR)))
    try:
        runner.run(["mount", "-o", "ro,nosuid,nodev,noexec", device, str(mount_point)])
        try:
            yield mount_point / "context.sh"
        finally:
            runner.run(["umount", str(mount_point)])
    finally:
        mount_point.rmdir()


def _unmount_old_context(root: Path, runner: Runner) -> None:
    old = str(root / OLD_CONTEXT_MOUNT)
    if old in _mounts(root / "proc/mounts").values():
        runner.run(["umount", old])


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaf-worker", description=__doc__.split("\n")[0])
    parser.add_argument("stage", nargs="*", help="one-contextd's type and command (ignored)")
    parser.add_argument("--context", help="context.sh to read (default: find it)")
    parser.add_argument("--root", default="/", help="file-system root (tests: a scratch dir)")
    args = parser.parse_args(argv)
    runner = runner or Runner()
    root = Path(args.root)
    try:
        with _given(args.context) if args.context else open_context(root, runner) as context:
            # the context is parsed (and refused if it is not data) before anything runs
            values = read_context(str(context))
            named = values.get("SET_HOSTNAME") or values.get("VAF_HOSTNAME")
            current = "" if named else runner.output(["hostname"]).strip()
            settings = settings_from_context(values, context.parent, current)
        Worker(settings, root, runner).run_all()
    except (VafError, OSError) as err:
        reason = err.reason if isinstance(err, VafError) else f"{err.filename}: {err.strerror}"
        stderr_log(f"failed: {reason}")
        return getattr(err, "exit_code", 1)
    return 0


@contextmanager
def _given(path: str) -> Iterator[Path]:
    yield Path(path)
