"""``vaf login``: the physicist's side. HTTPS with the Grid certificate, then ssh.

The key ssh uses is the certificate's own private key. ssh reads PEM keys, but an encrypted
one would make ssh ask for the passphrase a second time; so the client asks once (getpass),
uses the passphrase for the TLS step, and writes a decrypted copy that only the user can read
(``~/.ssh/vaf/<host>``, mode 0600 in a 0700 directory) with the returned certificate beside it
(``<host>-cert.pub``), where ssh looks for it; the next login replaces both. See docs/login.md
for why not ssh-agent.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import shlex
import ssl
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from vaf.host.runner import CommandError, Runner
from vaf.login.x509 import openssl_time

# TLS alerts the server sends when the handshake refuses the certificate -> what they mean.
_ALERTS = {
    "CERTIFICATE_REVOKED": "your certificate has been revoked",
    "CERTIFICATE_EXPIRED": "your certificate has expired",
    "UNKNOWN_CA": "your certificate is not issued by a CA the service trusts",
    "CERTIFICATE_UNKNOWN": "the service does not accept this certificate "
                           "(a proxy, where proxies are off?)",
    "BAD_CERTIFICATE": "the service rejected your certificate (not valid yet, or malformed)",
}


class LoginError(Exception):
    """One clear reason why the login did not happen."""


@dataclass(frozen=True)
class Credentials:
    cert: str
    key: str
    passphrase: str | None


def is_encrypted(key_pem: str) -> bool:
    return "ENCRYPTED PRIVATE KEY" in key_pem or "Proc-Type: 4,ENCRYPTED" in key_pem


def read_credentials(cert: str, key: str, ask=getpass.getpass) -> Credentials:
    try:
        with open(key, encoding="ascii", errors="replace") as handle:
            key_pem = handle.read()
    except OSError as err:
        raise LoginError(f"cannot read the key {key}: {err.strerror}") from None
    if not os.path.exists(cert):
        raise LoginError(f"cannot read the certificate {cert}: no such file")
    passphrase = ask(f"Passphrase for {key}: ") if is_encrypted(key_pem) else None
    return Credentials(cert, key, passphrase)


def client_context(creds: Credentials, ca_dir: str | None, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_file, capath=ca_dir)
    try:
        context.load_cert_chain(creds.cert, creds.key, password=creds.passphrase)
    except ssl.SSLError as err:
        raise LoginError("cannot load the certificate and key: "
                         f"{load_problem(err, creds.passphrase is not None)}") from None
    return context


def load_problem(err: ssl.SSLError, encrypted: bool) -> str:
    reason = getattr(err, "reason", "") or ""
    if encrypted and reason in ("", "PEM_LIB"):  # all OpenSSL says when decryption fails
        return "wrong passphrase"
    if reason == "EE_KEY_TOO_SMALL":
        return "its key is too small for TLS (at least 2048 bits for RSA)"
    if reason in ("BAD_DECRYPT", "BAD_PASSWORD_READ") or "decrypt" in reason.lower():
        return "wrong passphrase"
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    return reason or str(err)


def explain_tls_error(err: ssl.SSLError, cert: str, runner: Runner) -> str:
    reason = getattr(err, "reason", "") or ""
    for alert, meaning in _ALERTS.items():
        if reason.endswith(alert):
            return f"the login service refused the handshake: {meaning}{own_validity(cert, runner)}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"the login service's certificate is not trusted: {err.verify_message}"
    return f"TLS with the login service failed: {reason or err}"


def own_validity(cert: str, runner: Runner) -> str:
    """`` (valid from ... to ...)`` when the user's own certificate is outside its window."""
    try:
        lines = runner.output(["openssl", "x509", "-in", cert, "-noout", "-startdate",
                               "-enddate"], timeout=30).splitlines()
        start, end = (openssl_time(line.split("=", 1)[1]) for line in lines[:2])
    except (CommandError, ValueError, IndexError):
        return ""
    now = time.time()
    if now < start:
        return f" (your certificate is valid only from {time.ctime(start)})"
    if now > end:
        return f" (your certificate expired on {time.ctime(end)})"
    return ""


def request_grant(url: str, context: ssl.SSLContext, lifetime: int | None,
                  timeout: float = 60.0) -> dict:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise LoginError(f"the login service must be an https:// URL, got {url!r}")
    body = json.dumps({"lifetime": lifetime} if lifetime else {}).encode()
    connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443,
                                             context=context, timeout=timeout)
    try:
        connection.request("POST", "/grant", body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read(1 << 20)
    finally:
        connection.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        raise LoginError(f"the login service answered {response.status} without JSON") from None
    if response.status != 200:
        raise LoginError(f"the login service refused: {answer.get('error', response.status)}")
    return answer


def private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: str, data: str, mode: int = 0o600) -> None:
    """Write ``path`` atomically; the temporary file is created 0600 (mkstemp), so the key
    is never readable by others, not even for a moment."""
    fd, temporary = tempfile.mkstemp(prefix=".vaf-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def ssh_key_pem(creds: Credentials, runner: Runner) -> str:
    """The private key, decrypted, as PEM (PKCS#8) that ssh reads without a prompt."""
    argv = ["openssl", "pkey", "-in", creds.key]
    if creds.passphrase is not None:
        argv += ["-passin", "stdin"]
    try:
        return runner.output(argv, input=(creds.passphrase or "") + "\n", timeout=30) + "\n"
    except CommandError as err:
        raise LoginError(f"cannot read the private key: {err.reason}") from None


def store_grant(answer: dict, creds: Credentials, directory: str, name: str,
                runner: Runner) -> str:
    """Write the key (and certificate) for ssh; returns the key file's path."""
    private_dir(directory)
    key_path = os.path.join(directory, name)
    write_private(key_path, ssh_key_pem(creds, runner))
    cert_path = key_path + "-cert.pub"
    if answer.get("certificate"):
        write_private(cert_path, answer["certificate"] + "\n", 0o644)
    elif os.path.exists(cert_path):
        os.unlink(cert_path)  # a stale certificate would be offered before the plain key
    return key_path


def ssh_argv(answer: dict, key_path: str, host: str, options: tuple[str, ...] = (),
             command: tuple[str, ...] = ()) -> list[str]:
    argv = ["ssh", "-i", key_path, "-o", "IdentitiesOnly=yes"]
    if answer.get("certificate"):
        argv += ["-o", f"CertificateFile={key_path}-cert.pub"]
    argv += ["-p", str(answer.get("ssh_port") or 22), "-l", answer["user"]]
    for option in options:
        argv += ["-o", option]
    return [*argv, "--", answer.get("ssh_host") or host, *command]


def describe(answer: dict) -> str:
    return (f"granted: ssh as {answer['user']} for {answer['lifetime']} s "
            f"(until {answer['valid_until']}, {answer['mode']})")


def login(url: str, cert: str, key: str, ca_dir: str | None, ca_file: str | None,
          lifetime: int | None, directory: str, runner: Runner | None = None,
          ask=getpass.getpass) -> tuple[dict, str, str]:
    """Do the HTTPS step and store the grant; returns (answer, key path, ssh host)."""
    runner = runner or Runner()
    creds = read_credentials(cert, key, ask)
    context = client_context(creds, ca_dir, ca_file)
    host = urlsplit(url).hostname or ""
    try:
        answer = request_grant(url, context, lifetime)
    except ssl.SSLError as err:
        raise LoginError(explain_tls_error(err, cert, runner)) from None
    except (OSError, http.client.HTTPException) as err:
        raise LoginError(f"cannot reach the login service at {url}: {err}") from None
    name = (answer.get("ssh_host") or host).replace("/", "_")
    return answer, store_grant(answer, creds, directory, name, runner), host


def print_line(argv: list[str]) -> str:
    return shlex.join(argv)
