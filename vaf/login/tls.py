"""The server's TLS context: client certificates verified by OpenSSL during the handshake.

* The CA directory is used as OpenSSL's hashed ``capath`` (``<hash>.0`` certificates,
  ``<hash>.r0`` CRLs), exactly the layout of ``/etc/grid-security/certificates``.
* When the directory holds CRLs, revocation is checked: the leaf
  (``VERIFY_CRL_CHECK_LEAF``), or the whole chain when proxies are allowed, because OpenSSL
  does not look up CRLs for proxy certificates and a revoked user's proxy would otherwise pass.
* RFC 3820 proxies are accepted only with ``VERIFY_ALLOW_PROXY_CERTS`` (OpenSSL's
  ``X509_V_FLAG_ALLOW_PROXY_CERTS``); without it OpenSSL refuses them.
* ``CERT_OPTIONAL``: a client without a certificate completes the handshake, so it gets a
  readable HTTP refusal; any certificate that *is* sent must verify.
* OpenSSL caches what it read from ``capath``: the context is rebuilt every
  ``ca_reload_seconds`` so CRLs refreshed by fetch-crl take effect.
"""

from __future__ import annotations

import glob
import os
import ssl
import threading
import time


def has_crls(ca_dir: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(ca_dir), "*.r[0-9]*")))


def server_context(server_cert: str, server_key: str, ca_dir: str,
                   allow_proxies: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(capath=ca_dir)
    if has_crls(ca_dir):
        context.verify_flags |= (ssl.VERIFY_CRL_CHECK_CHAIN if allow_proxies
                                 else ssl.VERIFY_CRL_CHECK_LEAF)
    if allow_proxies:
        context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    return context


class ContextCache:
    """The current server context, rebuilt when older than ``max_age`` seconds."""

    def __init__(self, build, max_age: float):
        self._build = build
        self._max_age = max_age
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._built = 0.0

    def get(self) -> ssl.SSLContext:
        with self._lock:
            now = time.monotonic()
            if self._context is None or now - self._built > self._max_age:
                self._context = self._build()
                self._built = now
            return self._context
