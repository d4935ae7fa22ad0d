"""What the service needs from an X.509 certificate, read with the openssl command.

The TLS handshake has already verified the chain (:mod:`vaf.login.tls`); here we only read the
verified leaf: subject and issuer in the slash form grid-mapfiles use, whether it is an RFC 3820
proxy (the proxyCertInfo extension), its public key and its end of validity.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from vaf.host.runner import CommandError, Runner

# Trailing CN components of proxies: RFC 3820 (a serial number) and the legacy Globus forms.
_PROXY_CN_RE = re.compile(r"/CN=(?:[0-9]+|proxy|limited proxy)$")


class CertificateError(Exception):
    """The certificate cannot be read or used (one clear reason)."""


@dataclass(frozen=True)
class Certificate:
    subject: str
    issuer: str
    is_proxy: bool
    public_key_pem: str
    not_after: float  # seconds since the epoch

    @property
    def identity(self) -> str:
        """The end-entity DN: the subject, with a proxy's own CN components removed."""
        return end_entity_dn(self.subject, self.issuer) if self.is_proxy else self.subject


def end_entity_dn(subject: str, issuer: str) -> str:
    """A proxy's subject is its issuer's plus one CN; strip proxy CNs back to the EEC's DN.

    The handshake only exposes the leaf, so for a proxy of a proxy the further levels are
    recognised by their CN form (digits, ``proxy``, ``limited proxy``), as grid tools do.
    """
    if not subject.startswith(issuer + "/CN="):
        raise CertificateError("proxy certificate whose subject does not extend its issuer's")
    dn = issuer
    while _PROXY_CN_RE.search(dn):
        dn = _PROXY_CN_RE.sub("", dn)
    return dn


def escape_dn(dn: str) -> str:
    """The DN for logs and the ssh key id: printable ASCII kept, anything else escaped."""
    return "".join(_escape_char(c) for c in dn) or "-"


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if " " <= char <= "~":
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"


def openssl_time(text: str) -> float:
    # "notAfter=Dec  1 11:19:17 2026 GMT"
    return float(calendar.timegm(time.strptime(text.strip(), "%b %d %H:%M:%S %Y %Z")))


def parse_openssl_output(text: str) -> Certificate:
    """Parse ``openssl x509 -noout -subject -issuer -enddate -ext proxyCertInfo -pubkey``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        for name in ("subject", "issuer", "notAfter"):
            if line.startswith(name + "="):
                fields[name] = line[len(name) + 1:]
    begin = text.find("-----BEGIN PUBLIC KEY-----")
    end = text.find("-----END PUBLIC KEY-----")
    if begin < 0 or end < 0 or set(fields) != {"subject", "issuer", "notAfter"}:
        raise CertificateError("the certificate could not be read")
    return Certificate(subject=fields["subject"], issuer=fields["issuer"],
                       is_proxy="Proxy Certificate Information" in text,
                       public_key_pem=text[begin:end + len("-----END PUBLIC KEY-----")] + "\n",
                       not_after=openssl_time(fields["notAfter"]))


def read_der(der: bytes, runner: Runner) -> Certificate:
    argv = ["openssl", "x509", "-inform", "DER", "-noout", "-nameopt", "compat",
            "-subject", "-issuer", "-enddate", "-ext", "proxyCertInfo", "-pubkey"]
    try:
        output = runner.output(argv, input=der, timeout=30)
    except CommandError as err:
        raise CertificateError(f"the certificate could not be read: {err.reason}") from None
    return parse_openssl_output(output)
