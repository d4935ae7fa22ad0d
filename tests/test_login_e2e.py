"""End to end: a Grid PKI made here, the login service on 127.0.0.1, a real sshd trusting it.

Accounts are real (``useradd`` through the service, homes under a temporary base directory)
because sshd needs them; every account made here carries a random prefix and is removed with
``userdel -r`` at the end. sshd runs without PAM, reads ``TrustedUserCAKeys`` (the service's
ssh CA) and, for the authorized_keys mode, ``~/.ssh/authorized_keys``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from vaf.host.runner import Runner
from vaf.lab import sshd as sshd_support
from vaf.lab.daemons import free_port
from vaf.lab.grid_pki import GridCA
from vaf.login import client
from vaf.login.accounts import AccountPolicy
from vaf.login.server import make_server, serve_in_thread
from vaf.login.settings import LoginSettings
from vaf.login.x509 import escape_dn

pytestmark = pytest.mark.skipif(
    not sshd_support.available() or os.geteuid() != 0 or not shutil.which("useradd"),
    reason="needs root, useradd and openssh-server (scripts/deps/apt-login.txt)")

PREFIX = "vl" + "".join(secrets.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(4))
NAMES = ["jane", "proxy2", "hostile", "keys", "many", "cli", "enc"]
USERS = {label: f"{PREFIX}{label}"[:32] for label in NAMES}
HOSTILE_CN = "x$(touch /tmp/vaf-pwn);`id`/../../etc/passwd"
HOSTILE_DN = "/DC=org/DC=vaf-lab/CN=" + HOSTILE_CN
PASSPHRASE = "correct horse battery"
SSH_OPTIONS = ("-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=10", "-T")


class Site:
    """Everything one test module shares: PKI, ssh CA, sshd, account base, servers."""

    def __init__(self, root: Path):
        self.root = root
        self.runner = Runner()
        self.ca = GridCA(root / "ca").create()
        self.other_ca = GridCA(root / "other-ca", name="/DC=org/DC=elsewhere/CN=Other CA").create()
        self.server_cert = self.ca.issue("server", "/DC=org/DC=vaf-lab/CN=127.0.0.1",
                                         extensions="server")
        base = "/DC=org/DC=vaf-lab/OU=Users/CN="
        now = time.time()
        issue = self.ca.issue
        self.creds = {
            "jane": issue("jane", base + "Jane Doe"),
            "enc": issue("enc", base + "Enc Rypted", passphrase=PASSPHRASE),
            "keys": issue("keys", base + "Key Holder"),
            "many": issue("many", base + "Many Requests"),
            "cli": issue("cli", base + "Command Line"),
            "hostile": issue("hostile", "/DC=org/DC=vaf-lab/CN="
                             + HOSTILE_CN.replace("/", "\\/")),
            "expired": issue("expired", base + "Old Timer", start=now - 7200, end=now - 3600),
            "notyet": issue("notyet", base + "Early Bird", start=now + 3600,
                            end=now + 7200),
            "revoked": issue("revoked", base + "Re Voked"),
            "unmapped": issue("unmapped", base + "Nobody Knows"),
            "ed448": issue("ed448", base + "Ed Fourfortyeight", kind="ed448"),
            "rsa1024": issue("rsa1024", base + "Short Key", kind="rsa1024"),
            "badname": issue("badname", base + "Bad Name"),
            "stranger": self.other_ca.issue("stranger", base + "Jane Doe"),
        }
        self.creds["proxy"] = self.ca.proxy("proxy", self.creds["jane"])
        self.creds["proxy2"] = self.ca.proxy("proxy2", self.creds["jane"],
                                             parent=self.creds["proxy"], serial=777)
        self.creds["revoked_proxy"] = self.ca.proxy("revoked_proxy", self.creds["revoked"])
        self.ca.revoke(self.creds["revoked"])
        mapped = {"jane": USERS["jane"], "enc": USERS["enc"], "keys": USERS["keys"],
                  "many": USERS["many"], "cli": USERS["cli"], "hostile": USERS["hostile"],
                  "expired": USERS["jane"], "notyet": USERS["jane"], "revoked": USERS["jane"],
                  "ed448": USERS["jane"], "rsa1024": USERS["jane"], "badname": "jd;reboot"}
        lines = ["# made by the test", "bad line without quotes"]
        lines += [f'"{self.creds[label].dn}" {user}' for label, user in mapped.items()]
        self.gridmap = root / "grid-mapfile"
        self.gridmap.write_text("\n".join(lines) + "\n")
        self.ssh_ca = root / "ssh_user_ca"
        self.runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vaf login CA",
                         "-f", str(self.ssh_ca)])
        self.homes = root / "homes"
        self.homes.mkdir(mode=0o755)
        root.chmod(0o755)
        self.skel = root / "skel"
        self.skel.mkdir()
        (self.skel / ".vaf-welcome").write_text("welcome\n")
        self.sshd = sshd_support.Sshd(root / "sshd", extra_config=(
            f"TrustedUserCAKeys {self.ssh_ca}.pub\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            f"AllowUsers {PREFIX}*\n")).start()
        self.servers = {}

    def settings(self, **changes) -> LoginSettings:
        values = dict(listen="127.0.0.1", port=0, server_cert=str(self.server_cert.cert),
                      server_key=str(self.server_cert.key), ca_dir=str(self.ca.certificates),
                      grid_mapfile=str(self.gridmap), ssh_ca_key=str(self.ssh_ca),
                      lifetime=600, max_lifetime=3600,
                      accounts=AccountPolicy(True, str(self.skel), "/bin/sh", str(self.homes)),
                      lock_dir=str(self.root / "locks"), ssh_host="127.0.0.1",
                      ssh_port=self.sshd.port, request_timeout=10.0)
        values.update(changes)
        return LoginSettings(**values)

    def server(self, name: str, **changes) -> str:
        """The URL of a login service with these settings (started once per module)."""
        if name not in self.servers:
            server = make_server(self.settings(**changes))
            serve_in_thread(server)
            self.servers[name] = server
        return f"https://127.0.0.1:{self.servers[name].server_address[1]}"

    def login(self, url: str, label: str, lifetime: int | None = None,
              passphrase: str | None = None, cred=None):
        cred = cred or self.creds[label]
        return client.login(url, str(cred.cert), str(cred.key), None, str(self.ca.cert),
                            lifetime, str(self.root / "client" / label),
                            ask=lambda prompt: passphrase)

    def ssh(self, answer: dict, key_path: str, user: str | None = None):
        argv = client.ssh_argv(dict(answer, user=user or answer["user"]), key_path,
                               "127.0.0.1", command=("id", "-un"))
        argv = [argv[0], *SSH_OPTIONS, *argv[1:]]
        return self.runner.run(argv, check=False, timeout=60)

    def ssh_with_key_only(self, cred, user: str):
        """What sshd says to the bare X.509 key, without any grant."""
        key = self.root / "bare" / f"{user}-{cred.key.name}"
        key.parent.mkdir(exist_ok=True, mode=0o700)
        key.write_text(client.ssh_key_pem(client.Credentials(str(cred.cert), str(cred.key),
                                                             None), self.runner))
        key.chmod(0o600)
        argv = ["ssh", *SSH_OPTIONS, "-i", str(key), "-o", "IdentitiesOnly=yes",
                "-p", str(self.sshd.port), "-l", user, "--", "127.0.0.1", "id", "-un"]
        return self.runner.run(argv, check=False, timeout=60)

    def close(self) -> None:
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        self.sshd.stop()
        for user in USERS.values():
            try:
                pwd.getpwnam(user)
            except KeyError:
                continue
            self.runner.run(["userdel", "--remove", user], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def site():
    root = Path(tempfile.mkdtemp(prefix="vaf-login-"))
    try:
        made = Site(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    yield made
    made.close()
    assert not [u for u in pwd.getpwall() if u.pw_name.startswith(PREFIX)]


def disk_state(site: Site) -> dict[str, str]:
    """What a refusal must leave unchanged: the account databases and every home."""
    state = {}
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group"):
        state[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    for directory, dirs, files in os.walk(site.homes):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            digest = ""
            if os.path.isfile(path):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            state[path] = f"{info.st_mode:o} {info.st_uid} {info.st_size} {digest}"
    return state


def wait_past(answer: dict) -> None:
    until = time.mktime(time.strptime(answer["valid_until"], "%Y-%m-%dT%H:%M:%SZ")) \
        - time.timezone
    time.sleep(max(0.0, until - time.time()) + 1.5)


# -- grants that work, inside and after their window ---------------------------------------

def test_certificate_login_works_inside_the_window_and_not_after(site, caplog):
    caplog.set_level(logging.INFO, logger="vaf-login")
    url = site.server("certificate")
    answer, key_path, _ = site.login(url, "jane", lifetime=4)
    user = USERS["jane"]
    assert (answer["user"], answer["mode"], answer["lifetime"]) == (user, "certificate", 4)
    assert answer["certificate"].startswith("ssh-rsa-cert-v01@openssh.com ")
    entry = pwd.getpwnam(user)
    assert entry.pw_dir == str(site.homes / user) and entry.pw_shell == "/bin/sh"
    assert (site.homes / user / ".vaf-welcome").read_text() == "welcome\n"
    assert not (site.homes / user / ".ssh").exists()  # nothing written into the home
    result = site.ssh(answer, key_path)
    assert result.returncode == 0, result.stderr + site.sshd.log()[-2000:]
    assert result.stdout.strip() == user
    messages = [r.getMessage() for r in caplog.records]
    grant = next(i for i, m in enumerate(messages) if m.startswith("grant "))
    granted = next(i for i, m in enumerate(messages) if m.startswith("granted "))
    assert grant < granted
    assert 'dn="/DC=org/DC=vaf-lab/OU=Users/CN=Jane Doe"' in messages[grant]
    assert f"user={user} client=127.0.0.1" in messages[grant]
    wait_past(answer)
    late = site.ssh(answer, key_path)
    assert late.returncode != 0 and late.stdout.strip() == ""


def test_authorized_keys_login_works_inside_the_window_and_not_after(site):
    url = site.server("authorized_keys", grant="authorized_keys")
    user = USERS["keys"]
    first, key_path, _ = site.login(url, "keys", lifetime=600)
    assert "certificate" not in first and first["mode"] == "authorized_keys"
    keys_file = site.homes / user / ".ssh" / "authorized_keys"
    entry = pwd.getpwnam(user)
    info = keys_file.stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o600, entry.pw_uid)
    assert (keys_file.parent.stat().st_mode & 0o777) == 0o700
    # the user's own lines survive; the same key asked for again replaces its older entry
    keys_file.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMyOwnKey own@laptop\n"
                         + keys_file.read_text())
    answer, key_path, _ = site.login(url, "keys", lifetime=3)
    lines = keys_file.read_text().splitlines()
    assert lines[0].endswith("own@laptop") and len(lines) == 2
    assert lines[1].startswith('expiry-time="') and ",restrict," in lines[1]
    result = site.ssh(answer, key_path)
    assert result.returncode == 0, result.stderr + site.sshd.log()[-2000:]
    assert result.stdout.strip() == user
    wait_past(answer)
    late = site.ssh(answer, key_path)
    assert late.returncode != 0 and late.stdout.strip() == ""
    assert "expired" in site.sshd.log()


def test_proxy_login_maps_to_the_end_entity_and_works(site):
    url = site.server("proxies", allow_proxies=True)
    for label in ("proxy", "proxy2"):
        answer, key_path, _ = site.login(url, label, lifetime=60)
        assert answer["user"] == USERS["jane"]
        result = site.ssh(answer, key_path)
        assert result.returncode == 0 and result.stdout.strip() == USERS["jane"], result.stderr
    # with proxies on, a plain certificate still works (CRLs checked along the chain)
    answer, _, _ = site.login(url, "keys", lifetime=60)
    assert answer["user"] == USERS["keys"]


def test_hostile_dn_goes_only_into_the_key_id_and_the_log(site, caplog):
    caplog.set_level(logging.INFO, logger="vaf-login")
    answer, key_path, _ = site.login(site.server("certificate"), "hostile", lifetime=60)
    assert answer["user"] == USERS["hostile"]
    assert not os.path.exists("/tmp/vaf-pwn")
    cert = Path(key_path + "-cert.pub")
    shown = site.runner.output(["ssh-keygen", "-L", "-f", str(cert)])
    escaped = escape_dn(site.creds["hostile"].dn)
    assert "\\\\/tmp\\\\/vaf-pwn" in escaped  # OpenSSL's \/ with the backslash escaped
    assert f'Key ID: "{escaped}"' in shown
    assert any(f'dn="{escaped}"' in r.getMessage() for r in caplog.records)
    assert site.ssh(answer, key_path).stdout.strip() == USERS["hostile"]


# -- refusals: a clear message, nothing changed, sshd still refuses the key ----------------

REFUSALS = [
    # (server, credential, lifetime, what the user is told)
    ("certificate", "stranger", None, "not issued by a CA the service trusts"),
    ("certificate", "expired", None, "has expired"),
    ("certificate", "notyet", None, "valid only from"),
    ("certificate", "revoked", None, "has been revoked"),
    ("certificate", "proxy", None, "a proxy, where proxies are off"),
    ("proxies", "revoked_proxy", None, "has been revoked"),
    ("certificate", "unmapped", None, "is not mapped to an account here"),
    ("certificate", "ed448", None, "key type cannot be used by ssh"),
    # TLS itself (security level 2) refuses short RSA keys: the client says so, before HTTPS
    ("certificate", "rsa1024", None, "key is too small for TLS"),
    ("certificate", "badname", None, "is not a valid user name"),
    ("authorized_keys", "jane", 7200, "over the maximum of 3600 s"),
]


@pytest.mark.parametrize("server, label, lifetime, message", REFUSALS,
                         ids=[f"{r[1]}-{r[0]}" for r in REFUSALS])
def test_refusals_change_nothing(site, server, label, lifetime, message):
    url = site.server(server, **({"allow_proxies": True} if server == "proxies" else
                                 {"grant": "authorized_keys"} if server == "authorized_keys"
                                 else {}))
    site.login(site.server("certificate"), "jane", lifetime=60)  # jane's account exists
    before = disk_state(site)
    with pytest.raises(client.LoginError, match=message):
        site.login(url, label, lifetime=lifetime)
    assert disk_state(site) == before
    refused = site.ssh_with_key_only(site.creds[label], USERS["jane"])
    assert refused.returncode != 0 and refused.stdout.strip() == ""


def _https(url: str, cred=None, body: bytes = b"{}", headers=None) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cred is not None:
        context.load_cert_chain(str(cred.cert), str(cred.key))
    port = int(url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    try:
        connection.request("POST", "/grant", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_no_client_certificate_is_refused_with_a_reason(site):
    before = disk_state(site)
    status, answer = _https(site.server("certificate"))
    assert (status, answer) == (403, {"error": "a client certificate is required"})
    assert disk_state(site) == before


def test_hostile_requests_are_refused_and_the_service_keeps_serving(site):
    url = site.server("certificate")
    port = int(url.rsplit(":", 1)[1])
    site.login(url, "jane", lifetime=60)  # jane's account exists
    before = disk_state(site)
    jane = site.creds["jane"]
    status, answer = _https(url, jane, body=b"x" * 100_000)
    assert status == 413 and "larger than" in answer["error"]
    status, answer = _https(url, jane, body=b"\xff\xfe garbage")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = _https(url, jane, body=b'{"lifetime": "forever"}')
    assert status == 400
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        # a client that connects and says nothing holds only its own thread
        answer, _, _ = site.login(url, "jane", lifetime=60)
        assert answer["user"] == USERS["jane"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:  # not even TLS
        raw.sendall(os.urandom(4096))
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(100)[:1] in (b"", b"\x15")  # closed, or a TLS alert record
    assert disk_state(site) == before
    answer, _, _ = site.login(url, "jane", lifetime=60)
    assert answer["user"] == USERS["jane"]


def test_concurrent_requests_for_one_user_make_one_account_and_one_entry(site):
    url = site.server("authorized_keys", grant="authorized_keys")
    user = USERS["many"]
    results, errors = [], []

    def one():
        try:
            results.append(site.login(url, "many", lifetime=60)[0])
        except Exception as err:  # collected, asserted below
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 6
    assert [u.pw_name for u in pwd.getpwall()].count(user) == 1
    lines = (site.homes / user / ".ssh" / "authorized_keys").read_text().splitlines()
    assert len(lines) == 1


def test_cli_with_an_encrypted_key_asks_once_and_keeps_the_key_private(site):
    url = site.server("certificate")
    cred = site.creds["enc"]
    directory = site.root / "cli-home" / ".ssh" / "vaf"
    base = [sys.executable, "-c", "from vaf.cli import main; main()", "login", "--server", url,
            "--cert", str(cred.cert), "--key", str(cred.key), "--ca-file", str(site.ca.cert),
            "--dir", str(directory), "--lifetime", "60"]
    env_runner = Runner()
    printed = env_runner.run(base + ["--print"], input=PASSPHRASE + "\n", timeout=60,
                             check=False)
    assert printed.returncode == 0, printed.stderr
    assert printed.stderr.count("Passphrase for") == 1
    assert f"granted: ssh as {USERS['enc']} for 60 s" in printed.stderr
    key = directory / "127.0.0.1"
    assert (directory.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o700, 0o600)
    assert "ENCRYPTED" not in key.read_text()
    options = [word for option in SSH_OPTIONS[2:] if option != "-o" and option != "-T"
               for word in ("-o", option)]
    ran = env_runner.run(base + options + ["--", "id", "-un"], input=PASSPHRASE + "\n",
                         timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == USERS["enc"]
    wrong = env_runner.run(base, input="wrong\n", timeout=60, check=False)
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr


def test_login_server_command_reads_its_config_and_tells_systemd_it_is_ready(site):
    """``vaf login-server`` as the unit runs it (Type=notify), from a real config file."""
    port = free_port()
    conf = site.root / "login.conf"
    conf.write_text("\n".join([
        "LISTEN=127.0.0.1", f"PORT={port}", f"SERVER_CERT={site.server_cert.cert}",
        f"SERVER_KEY={site.server_cert.key}", f"CA_DIR={site.ca.certificates}",
        f"GRID_MAPFILE={site.gridmap}", f"SSH_CA_KEY={site.ssh_ca}", "LIFETIME=60",
        f"SKELETON={site.skel}", "SHELL=/bin/sh", f"HOME_BASE={site.homes}",
        f"LOCK_DIR={site.root / 'locks'}", "SSH_HOST=127.0.0.1", f"SSH_PORT={site.sshd.port}",
    ]) + "\n")
    notify_path = site.root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        daemon = subprocess.Popen(  # a daemon under test, stopped below by its pid
            [sys.executable, "-c", "from vaf.cli import main; main()", "login-server",
             "--config", str(conf), "--foreground"], env=env, stderr=subprocess.PIPE)
        try:
            assert notify.recv(100) == b"READY=1"
            answer, key_path, _ = site.login(f"https://127.0.0.1:{port}", "jane")
            assert (answer["user"], answer["lifetime"]) == (USERS["jane"], 60)
            assert site.ssh(answer, key_path).stdout.strip() == USERS["jane"]
        finally:
            daemon.terminate()
            _, errors = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    log = errors.decode()
    assert f"listening on 127.0.0.1:{port} (grant=certificate, proxies refused)" in log
    assert f"grant dn=\"{site.creds['jane'].dn}\" user={USERS['jane']} client=127.0.0.1" in log


def test_a_symlinked_ssh_directory_is_refused_and_its_target_untouched(site):
    """The user owns the home: ~/.ssh pointing at someone else's directory must not be
    followed by the root service."""
    url = site.server("authorized_keys", grant="authorized_keys")
    site.login(url, "cli", lifetime=60)
    home = site.homes / USERS["cli"]
    victim = site.root / "victim"
    victim.mkdir()
    shutil.rmtree(home / ".ssh")
    (home / ".ssh").symlink_to(victim)
    with pytest.raises(client.LoginError, match="the grant failed"):
        site.login(url, "cli", lifetime=60)
    assert list(victim.iterdir()) == []
