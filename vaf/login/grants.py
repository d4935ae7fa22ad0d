"""The two grants: an OpenSSH user certificate, or an ``authorized_keys`` entry that expires.

Both start from the ssh form of the X.509 certificate's public key (``ssh-keygen -i -m PKCS8``).
Key types sshd accepts by default are RSA (at least :data:`MIN_RSA_BITS`), ECDSA on the NIST
curves and Ed25519; anything else (DSA, Ed448, short RSA) is refused before any change.
"""

from __future__ import annotations

import base64
import calendar
import os
import re
import stat
import struct
import tempfile
import time
from dataclasses import dataclass

from vaf.host.runner import CommandError, Runner
from vaf.login.accounts import Account

USABLE_KEY_TYPES = ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                    "ecdsa-sha2-nistp521")
MIN_RSA_BITS = 2048
#: the comment that marks the lines this service manages in authorized_keys
MARK = "vaf-login"
# ssh-keygen -V starts the window this far in the past: clocks of client and node differ.
CLOCK_SKEW = "-1m"
_EXPIRY_RE = re.compile(r'(?:^|,)expiry-time="([0-9]{14})Z"')


class GrantError(Exception):
    """The key cannot be granted (one clear reason for the user)."""


@dataclass(frozen=True)
class SshKey:
    kind: str
    blob: str

    @property
    def line(self) -> str:
        return f"{self.kind} {self.blob}"


def _rsa_bits(blob: str) -> int:
    data = base64.b64decode(blob)
    fields, offset = [], 0
    while offset < len(data) and len(fields) < 3:
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        fields.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    modulus = fields[2].lstrip(b"\0")
    return len(modulus) * 8 - (8 - modulus[0].bit_length()) if modulus else 0


def check_key(key: SshKey) -> SshKey:
    if key.kind not in USABLE_KEY_TYPES:
        raise GrantError(f"the certificate's key type ({key.kind}) cannot be used by ssh")
    if key.kind == "ssh-rsa" and _rsa_bits(key.blob) < MIN_RSA_BITS:
        raise GrantError(f"the certificate's RSA key is shorter than {MIN_RSA_BITS} bits")
    return key


def ssh_public_key(public_key_pem: str, runner: Runner) -> SshKey:
    """The ssh form of a PEM (SubjectPublicKeyInfo) public key, checked for use by sshd."""
    with tempfile.TemporaryDirectory(prefix="vaf-login-") as work:
        path = os.path.join(work, "key.pem")
        with open(path, "w", encoding="ascii") as handle:
            handle.write(public_key_pem)
        try:
            words = runner.output(["ssh-keygen", "-i", "-m", "PKCS8", "-f", path],
                                  timeout=30).split()
        except CommandError:
            words = []
    if len(words) < 2:
        raise GrantError("the certificate's key type cannot be used by ssh")
    return check_key(SshKey(words[0], words[1]))


def certificate_argv(ca_key: str, key_id: str, user: str, lifetime: int, serial: int,
                     public_key_path: str) -> list[str]:
    return ["ssh-keygen", "-q", "-s", ca_key, "-I", key_id, "-n", user,
            "-V", f"{CLOCK_SKEW}:+{lifetime}s", "-z", str(serial), public_key_path]


def sign_certificate(key: SshKey, ca_key: str, key_id: str, user: str, lifetime: int,
                     runner: Runner) -> str:
    """An OpenSSH user certificate for ``key`` (principal ``user``), as one line of text."""
    serial = time.time_ns() // 1000
    with tempfile.TemporaryDirectory(prefix="vaf-login-") as work:
        path = os.path.join(work, "user.pub")
        with open(path, "w", encoding="ascii") as handle:
            handle.write(key.line + "\n")
        runner.run(certificate_argv(ca_key, key_id, user, lifetime, serial, path), timeout=30)
        with open(os.path.join(work, "user-cert.pub"), encoding="ascii") as handle:
            return handle.read().strip()


# -- authorized_keys mode ---------------------------------------------------------------

def expiry_stamp(moment: float) -> str:
    """sshd's ``expiry-time`` in UTC with seconds (``YYYYMMDDHHMMSSZ``)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(moment)) + "Z"


def _expired(line: str, now: float) -> bool:
    options = line.split(" ", 1)[0]
    match = _EXPIRY_RE.search(options)
    if not match:
        return False
    stamp = match.group(1)
    return calendar.timegm(time.strptime(stamp, "%Y%m%d%H%M%S")) <= now


def grant_line(key: SshKey, until: float) -> str:
    return f'expiry-time="{expiry_stamp(until)}",restrict,pty {key.line} {MARK}'


def updated_authorized_keys(existing: str, key: SshKey, until: float, now: float) -> str:
    """The file with ``key`` granted until ``until``: an older entry of the same key replaced,
    entries past their expiry removed, every other line kept as it was."""
    kept = []
    for line in existing.splitlines():
        words = line.split()
        if key.blob in words:
            continue
        if MARK in words and _expired(line, now):
            continue
        kept.append(line)
    kept.append(grant_line(key, until))
    return "\n".join(kept) + "\n"


def _open_ssh_dir(account: Account) -> int:
    """A descriptor on ``~/.ssh``, made 0700 when missing; a symlink or foreign owner is refused
    (the user owns the home and could point ``.ssh`` anywhere)."""
    home_fd = os.open(account.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.mkdir(".ssh", 0o700, dir_fd=home_fd)
            os.chown(".ssh", account.uid, account.gid, dir_fd=home_fd, follow_symlinks=False)
        except FileExistsError:
            pass
        fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home_fd)
    finally:
        os.close(home_fd)
    info = os.fstat(fd)
    if info.st_uid != account.uid or not stat.S_ISDIR(info.st_mode):
        os.close(fd)
        raise GrantError(f"{account.home}/.ssh is not a directory owned by {account.name}")
    return fd


def _read_at(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return ""
    with os.fdopen(fd, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


def write_authorized_key(account: Account, key: SshKey, until: float, now: float) -> str:
    """Update ``~/.ssh/authorized_keys`` atomically (temp file, fsync, rename), 0600, owned by
    the user; returns the file's path."""
    ssh_fd = _open_ssh_dir(account)
    temporary = f".authorized_keys.vaf-{os.getpid()}-{time.time_ns()}"
    try:
        content = updated_authorized_keys(_read_at(ssh_fd, "authorized_keys"), key, until, now)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=ssh_fd)
        try:
            os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o600)
            os.write(fd, content.encode("utf-8", errors="surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, "authorized_keys", src_dir_fd=ssh_fd, dst_dir_fd=ssh_fd)
        os.fsync(ssh_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=ssh_fd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(ssh_fd)
    return os.path.join(account.home, ".ssh", "authorized_keys")
