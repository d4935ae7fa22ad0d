"""The login service's pure parts, as tables: DNs, grid-mapfile lines, user names, argv,
authorized_keys edits, lifetimes, settings. The real openssl/ssh-keygen parts run in
test_login_e2e.py."""

from __future__ import annotations

import base64
import calendar
import ssl
import struct

import pytest

from vaf.errors import ConfigError
from vaf.host.runner import Runner
from vaf.login import grants
from vaf.login.accounts import AccountPolicy, useradd_argv
from vaf.login.client import explain_tls_error, is_encrypted, ssh_argv
from vaf.login.mapping import GridMapfile, MappingError, check_user_name, parse_grid_mapfile
from vaf.login.server import Refusal, requested_lifetime
from vaf.login.settings import load_settings
from vaf.login.x509 import CertificateError, end_entity_dn, escape_dn, parse_openssl_output

JANE = "/DC=org/DC=test/OU=Users/CN=Jane Doe"


@pytest.mark.parametrize("subject, issuer, expected", [
    (JANE + "/CN=123456", JANE, JANE),
    (JANE + "/CN=777/CN=123456", JANE + "/CN=777", JANE),
    (JANE + "/CN=proxy", JANE, JANE),
    (JANE + "/CN=limited proxy/CN=42", JANE + "/CN=limited proxy", JANE),
    # an end-entity DN that itself ends in digits is kept once the issuer is reached
    ("/DC=org/CN=robot/CN=42/CN=9", "/DC=org/CN=robot/CN=42", "/DC=org/CN=robot"),
])
def test_end_entity_dn_strips_proxy_components(subject, issuer, expected):
    assert end_entity_dn(subject, issuer) == expected


def test_a_proxy_that_does_not_extend_its_issuer_is_refused():
    with pytest.raises(CertificateError):
        end_entity_dn("/DC=org/CN=Mallory/CN=1", JANE)


@pytest.mark.parametrize("dn, escaped", [
    (JANE, JANE),
    ("/CN=a\nb", "/CN=a\\x0ab"),
    ("/CN=back\\slash", "/CN=back\\\\slash"),
    ("/CN=J\u00f6rg \u2603", "/CN=J\\xf6rg \\u2603"),
    ("", "-"),
])
def test_escape_dn(dn, escaped):
    assert escape_dn(dn) == escaped


def test_parse_openssl_output_reads_subject_issuer_proxy_and_key():
    text = ("subject=/DC=org/CN=A/CN=1\nissuer=/DC=org/CN=A\n"
            "notAfter=Dec  1 11:19:17 2026 GMT\n"
            "Proxy Certificate Information: critical\n    Policy Language: Inherit all\n"
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    cert = parse_openssl_output(text)
    assert (cert.subject, cert.issuer, cert.is_proxy, cert.identity) == (
        "/DC=org/CN=A/CN=1", "/DC=org/CN=A", True, "/DC=org/CN=A")
    assert cert.not_after == calendar.timegm((2026, 12, 1, 11, 19, 17, 0, 0, 0))
    assert cert.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(CertificateError):
        parse_openssl_output("garbage")


GRID_MAPFILE = r'''
# comment
"/DC=org/CN=Jane Doe" jdoe
"/DC=org/CN=Pool User" .dteam
"/DC=org/CN=Many" first,second
  "/DC=org/CN=Quote \" Inside" quoted
"/DC=org/CN=x\/y" slashy
no quotes here
"/DC=org/CN=Jane Doe" later-duplicate
"/DC=org/CN=Hostile" bad;name
'''


def test_parse_grid_mapfile():
    assert parse_grid_mapfile(GRID_MAPFILE) == {
        "/DC=org/CN=Jane Doe": "jdoe",
        "/DC=org/CN=Many": "first",
        '/DC=org/CN=Quote " Inside': "quoted",
        "/DC=org/CN=x\\/y": "slashy",
        "/DC=org/CN=Hostile": "bad;name",  # parsed, then refused by check_user_name
    }


@pytest.mark.parametrize("name, valid", [
    ("jdoe", True), ("_svc", True), ("a-b_1", True), ("x" * 32, True),
    ("x" * 33, False), ("Root", False), ("1abc", False), ("bad;name", False),
    ("../root", False), ("a b", False), ("", False), ("jdoe\n", False), ("-rf", False),
])
def test_check_user_name(name, valid):
    if valid:
        assert check_user_name(name) == name
    else:
        with pytest.raises(MappingError):
            check_user_name(name)


def test_useradd_argv():
    policy = AccountPolicy(True, "/etc/skel.vaf", "/bin/bash", "/home", ("useradd",))
    assert useradd_argv(policy, "jdoe") == [
        "useradd", "--create-home", "--skel", "/etc/skel.vaf", "--shell", "/bin/bash",
        "--base-dir", "/home", "--user-group", "--password", "*", "--comment", "vaf login",
        "--", "jdoe"]


def test_certificate_argv():
    assert grants.certificate_argv("/ca", "/DC=org/CN=A", "jdoe", 3600, 7, "/t/user.pub") == [
        "ssh-keygen", "-q", "-s", "/ca", "-I", "/DC=org/CN=A", "-n", "jdoe",
        "-V", "-1m:+3600s", "-z", "7", "/t/user.pub"]


def _rsa_blob(bits: int) -> str:
    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data
    modulus = b"\x00" + (1 << (bits - 1)).to_bytes(bits // 8, "big")
    return base64.b64encode(field(b"ssh-rsa") + field(b"\x01\x00\x01") + field(modulus)).decode()


@pytest.mark.parametrize("kind, blob, problem", [
    ("ssh-rsa", _rsa_blob(2048), None),
    ("ssh-rsa", _rsa_blob(1024), "shorter than 2048 bits"),
    ("ssh-ed25519", "AAAA", None),
    ("ecdsa-sha2-nistp256", "AAAA", None),
    ("ssh-dss", "AAAA", "cannot be used by ssh"),
])
def test_check_key(kind, blob, problem):
    key = grants.SshKey(kind, blob)
    if problem is None:
        assert grants.check_key(key) == key
    else:
        with pytest.raises(grants.GrantError, match=problem):
            grants.check_key(key)


NOW = calendar.timegm((2026, 12, 1, 12, 0, 0, 0, 0, 0))
KEY = grants.SshKey("ssh-ed25519", "AAAAkey")


def test_expiry_stamp_is_utc_with_seconds():
    assert grants.expiry_stamp(NOW + 5) == "20261201120005Z"


@pytest.mark.parametrize("existing, expected", [
    ("", ['expiry-time="20261201120100Z",restrict,pty ssh-ed25519 AAAAkey vaf-login']),
    # the same key again: the older entry is replaced
    ('expiry-time="20261201130000Z",restrict,pty ssh-ed25519 AAAAkey vaf-login\n',
     ['expiry-time="20261201120100Z",restrict,pty ssh-ed25519 AAAAkey vaf-login']),
    # an expired grant of another key is swept; a live one and the user's own lines stay
    ('ssh-rsa AAAAown me@laptop\n'
     'expiry-time="20261201115959Z",restrict,pty ssh-ed25519 AAAAold vaf-login\n'
     'expiry-time="20261201130000Z",restrict,pty ssh-ed25519 AAAAlive vaf-login\n'
     'expiry-time="20200101000000Z" ssh-ed25519 AAAAusers-own-expired me\n',
     ['ssh-rsa AAAAown me@laptop',
      'expiry-time="20261201130000Z",restrict,pty ssh-ed25519 AAAAlive vaf-login',
      'expiry-time="20200101000000Z" ssh-ed25519 AAAAusers-own-expired me',
      'expiry-time="20261201120100Z",restrict,pty ssh-ed25519 AAAAkey vaf-login']),
])
def test_updated_authorized_keys(existing, expected):
    assert grants.updated_authorized_keys(existing, KEY, NOW + 60, NOW).splitlines() == expected


@pytest.mark.parametrize("body, lifetime", [
    (b"", 600), (b"{}", 600), (b'{"lifetime": 5}', 5), (b'{"lifetime": 3600}', 3600),
])
def test_requested_lifetime(body, lifetime):
    assert requested_lifetime(body, 600, 3600) == lifetime


@pytest.mark.parametrize("body, message", [
    (b'{"lifetime": 3601}', "over the maximum of 3600 s"),
    (b'{"lifetime": 0}', "positive"),
    (b'{"lifetime": true}', "positive"),
    (b'{"lifetime": 1.5}', "positive"),
    (b'{"user": "root"}', "must be"),
    (b"[1]", "must be"),
    (b"\xff\x00", "not JSON"),
])
def test_requested_lifetime_refusals(body, message):
    with pytest.raises(Refusal, match=message):
        requested_lifetime(body, 600, 3600)


def test_is_encrypted():
    assert is_encrypted("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert is_encrypted("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n")
    assert not is_encrypted("-----BEGIN PRIVATE KEY-----")


def test_ssh_argv():
    answer = {"user": "jdoe", "certificate": "ssh-rsa-cert-v01@openssh.com AAAA",
              "ssh_host": "", "ssh_port": 2222}
    assert ssh_argv(answer, "/h/.ssh/vaf/node", "node.example", ("ForwardAgent=no",),
                    ("id",)) == [
        "ssh", "-i", "/h/.ssh/vaf/node", "-o", "IdentitiesOnly=yes",
        "-o", "CertificateFile=/h/.ssh/vaf/node-cert.pub", "-p", "2222", "-l", "jdoe",
        "-o", "ForwardAgent=no", "--", "node.example", "id"]


def test_settings_defaults_and_errors(tmp_path):
    defaults = load_settings(str(tmp_path / "missing.conf"))
    assert (defaults.grant, defaults.allow_proxies, defaults.lifetime) == (
        "certificate", False, 43200)
    conf = tmp_path / "login.conf"
    conf.write_text("GRANT=authorized_keys\nALLOW_PROXIES=yes\nLIFETIME=60\n"
                    "USERADD='sudo -n useradd'\n")
    settings = load_settings(str(conf))
    assert (settings.grant, settings.allow_proxies, settings.lifetime,
            settings.accounts.useradd) == ("authorized_keys", True, 60,
                                           ("sudo", "-n", "useradd"))
    for bad in ("GRANT=password\n", "LIFETIME=90000\n", "HOME_BASE=home\n"):
        conf.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings(str(conf))



def test_grid_mapfile_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "grid-mapfile"
    path.write_text('"/DC=org/CN=A" alice\n')
    mapper = GridMapfile(str(path))
    assert (mapper.lookup("/DC=org/CN=A"), mapper.lookup("/DC=org/CN=B")) == ("alice", None)
    path.write_text('"/DC=org/CN=B" bob\n"/DC=org/CN=C" Bad;Name\n')
    assert (mapper.lookup("/DC=org/CN=A"), mapper.lookup("/DC=org/CN=B")) == (None, "bob")
    with pytest.raises(MappingError, match="not a valid user name"):
        mapper.lookup("/DC=org/CN=C")
    path.unlink()
    with pytest.raises(MappingError, match="cannot read the grid-mapfile"):
        mapper.lookup("/DC=org/CN=B")


def _alert(reason: str) -> ssl.SSLError:
    err = ssl.SSLError(1, f"[SSL: {reason}] alert")
    err.reason = reason
    return err


@pytest.mark.parametrize("reason, message", [
    ("SSLV3_ALERT_CERTIFICATE_REVOKED", "your certificate has been revoked"),
    ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "your certificate has expired"),
    ("TLSV1_ALERT_UNKNOWN_CA", "not issued by a CA the service trusts"),
    ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "a proxy, where proxies are off?"),
    ("SSLV3_ALERT_BAD_CERTIFICATE", "not valid yet, or malformed"),
    ("WRONG_VERSION_NUMBER", "TLS with the login service failed: WRONG_VERSION_NUMBER"),
])
def test_tls_alerts_become_sentences(tmp_path, reason, message):
    missing_cert = str(tmp_path / "none.pem")  # no own-validity hint without a readable cert
    assert message in explain_tls_error(_alert(reason), missing_cert, Runner())
