"""A real OpenSSH server on 127.0.0.1 for the gate's end-to-end tests.

Its own host key, sshd_config, pid and log file, all in a temporary directory; started
through the runner (sshd daemonises itself and writes its pid file) and stopped by pid.

The restricted key logs in as **root** with ``PermitRootLogin forced-commands-only``: the
tests run as root and the gate needs the package importable, which a fresh account could not
reach under /root. A production head node uses a dedicated account instead (see
docs/contextualization.md). ``StrictModes no`` because the authorized_keys file sits under
/tmp, which is world-writable; production keeps the default.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vaf.host.runner import Runner
from vaf.lab.daemons import free_port, port_open, read_pid, stop_pid, wait_for

SSHD = "/usr/sbin/sshd"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
PermitRootLogin forced-commands-only
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitUserEnvironment no
X11Forwarding no
LogLevel VERBOSE
"""


def available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None


@dataclass
class Sshd:
    dir: Path
    runner: Runner = field(default_factory=Runner)
    port: int = 0
    #: sshd_config lines placed before the defaults: sshd keeps the first value it reads for
    #: a keyword, so these override (e.g. TrustedUserCAKeys, AuthorizedKeysFile)
    extra_config: str = ""

    @property
    def host_public_key(self) -> list[str]:
        return (self.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]

    @property
    def known_hosts_line(self) -> str:
        kind, blob = self.host_public_key
        return f"[127.0.0.1]:{self.port} {kind} {blob}"

    def start(self) -> Sshd:
        self.dir.mkdir(parents=True, exist_ok=True)
        # sshd's privilege separation directory; systemd-tmpfiles makes it on a real host
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                         "-f", str(self.dir / "ssh_host_ed25519_key")])
        (self.dir / "authorized_keys").touch(mode=0o600)
        self.port = free_port()
        config = self.dir / "sshd_config"
        extra = self.extra_config.strip()
        config.write_text((extra + "\n" if extra else "") + CONFIG.format(port=self.port,
                                                                          dir=self.dir))
        self.runner.run([SSHD, "-t", "-f", str(config)])
        self.runner.run([SSHD, "-f", str(config), "-E", str(self.dir / "sshd.log")])
        wait_for(lambda: port_open(self.port), f"sshd on port {self.port}")
        return self

    def authorize(self, line: str) -> None:
        (self.dir / "authorized_keys").write_text(line + "\n")

    def stop(self) -> None:
        stop_pid(read_pid(self.dir / "sshd.pid"))
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text() if path.exists() else ""


def make_client_key(runner: Runner, directory: Path, name: str = "join_key") -> Path:
    key = directory / name
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vaf-join",
                "-f", str(key)])
    return key
