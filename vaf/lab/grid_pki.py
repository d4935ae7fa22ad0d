"""A throw-away Grid PKI for the login tests, made with the openssl command.

A CA in a hashed directory (``<hash>.0``, and ``<hash>.r0`` once a CRL is published), as in
/etc/grid-security/certificates; user certificates (valid, expired, not yet valid, revoked,
with odd key types or hostile DNs); RFC 3820 proxies signed by a user certificate; a server
certificate for 127.0.0.1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vaf.host.runner import Runner

EXTENSIONS = """\
[ca]
basicConstraints=critical,CA:true
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
[user]
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
[server]
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1
[proxy]
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyEncipherment
proxyCertInfo=critical,language:id-ppl-inheritAll
"""

CA_CONFIG = """\
[ca]
default_ca=lab
[lab]
dir={dir}
database={dir}/index.txt
new_certs_dir={dir}/issued
serial={dir}/serial
crlnumber={dir}/crlnumber
default_md=sha256
default_crl_days=7
policy=anything
unique_subject=no
[anything]
domainComponent=optional
organizationName=optional
organizationalUnitName=optional
commonName=supplied
"""

KEY_ALGORITHMS = {
    "rsa": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    "ec": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ed448": ["-algorithm", "ED448"],
}


def _stamp(moment: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(moment))


@dataclass(frozen=True)
class Credential:
    cert: Path
    key: Path
    dn: str


@dataclass
class GridCA:
    """One CA under ``dir``; its hashed trust directory is ``dir/certificates``."""

    dir: Path
    name: str = "/DC=org/DC=vaf-lab/CN=VAF Lab CA"
    runner: Runner = field(default_factory=Runner)

    @property
    def certificates(self) -> Path:
        return self.dir / "certificates"

    @property
    def cert(self) -> Path:
        return self.dir / "ca.pem"

    def create(self) -> GridCA:
        (self.dir / "issued").mkdir(parents=True, exist_ok=True)
        self.certificates.mkdir(exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        (self.dir / "crlnumber").write_text("01\n")
        (self.dir / "ext.cnf").write_text(EXTENSIONS)
        (self.dir / "ca.cnf").write_text(CA_CONFIG.format(dir=self.dir))
        self._key(self.dir / "ca.key", "rsa")
        self.runner.run(["openssl", "req", "-x509", "-new", "-key", str(self.dir / "ca.key"),
                         "-subj", self.name, "-days", "30", "-out", str(self.cert),
                         "-config", str(self.dir / "ext.cnf"), "-extensions", "ca"])
        self.cert_hash = self.runner.output(["openssl", "x509", "-noout", "-hash",
                                             "-in", str(self.cert)])
        (self.certificates / f"{self.cert_hash}.0").write_bytes(self.cert.read_bytes())
        return self

    def _key(self, path: Path, kind: str, passphrase: str | None = None) -> None:
        argv = ["openssl", "genpkey", *KEY_ALGORITHMS[kind], "-out", str(path)]
        if passphrase is not None:
            argv += ["-aes-256-cbc", "-pass", f"pass:{passphrase}"]
        self.runner.run(argv)
        path.chmod(0o600)

    def _csr(self, name: str, key: Path, passphrase: str | None) -> Path:
        csr = key.with_suffix(".csr")
        argv = ["openssl", "req", "-new", "-key", str(key), "-subj", name, "-out", str(csr),
                "-utf8"]
        if passphrase is not None:
            argv += ["-passin", f"pass:{passphrase}"]
        self.runner.run(argv)
        return csr

    def issue(self, label: str, name: str, kind: str = "rsa", extensions: str = "user",
              start: float | None = None, end: float | None = None,
              passphrase: str | None = None) -> Credential:
        """A certificate signed by this CA, valid from ``start`` to ``end`` (default: now-1h
        to now+7d). ``name`` is openssl's ``-subj`` form: a ``/`` inside a value is ``\\/``,
        which is also how the service sees (and a grid-mapfile writes) such a DN."""
        now = time.time()
        key = self.dir / f"{label}.key"
        cert = self.dir / f"{label}.pem"
        self._key(key, kind, passphrase)
        csr = self._csr(name, key, passphrase)
        self.runner.run(["openssl", "ca", "-batch", "-notext", "-utf8", "-config",
                         str(self.dir / "ca.cnf"), "-keyfile", str(self.dir / "ca.key"),
                         "-cert", str(self.cert), "-in", str(csr), "-out", str(cert),
                         "-startdate", _stamp(start if start is not None else now - 3600),
                         "-enddate", _stamp(end if end is not None else now + 7 * 86400),
                         "-extfile", str(self.dir / "ext.cnf"), "-extensions", extensions,
                         "-subj", name, "-preserveDN"])
        return Credential(cert, key, name)

    def proxy(self, label: str, user: Credential, parent: Credential | None = None,
              serial: int = 4242) -> Credential:
        """An RFC 3820 proxy of ``user`` (or of the proxy ``parent``), in one file as
        grid-proxy-init writes it: proxy certificate, its key, then the chain."""
        issuer = parent or user
        name = f"{issuer.dn}/CN={serial}"
        key = self.dir / f"{label}.key"
        self._key(key, "rsa")
        csr = self._csr(name, key, None)
        cert = self.dir / f"{label}.only.pem"
        self.runner.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(issuer.cert),
                         "-CAkey", str(issuer.key), "-set_serial", str(serial), "-days", "1",
                         "-extfile", str(self.dir / "ext.cnf"), "-extensions", "proxy",
                         "-out", str(cert)])
        bundle = self.dir / f"{label}.pem"
        chain = [cert, key, issuer.cert] + ([user.cert] if parent is not None else [])
        bundle.write_text("".join(part.read_text() for part in chain))
        bundle.chmod(0o600)
        return Credential(bundle, bundle, name)

    def revoke(self, credential: Credential) -> None:
        config = ["-config", str(self.dir / "ca.cnf"), "-keyfile", str(self.dir / "ca.key"),
                  "-cert", str(self.cert)]
        self.runner.run(["openssl", "ca", *config, "-revoke", str(credential.cert)])
        self.publish_crl()

    def publish_crl(self) -> None:
        config = ["-config", str(self.dir / "ca.cnf"), "-keyfile", str(self.dir / "ca.key"),
                  "-cert", str(self.cert)]
        crl = self.dir / "crl.pem"
        self.runner.run(["openssl", "ca", *config, "-gencrl", "-out", str(crl)])
        (self.certificates / f"{self.cert_hash}.r0").write_bytes(crl.read_bytes())
