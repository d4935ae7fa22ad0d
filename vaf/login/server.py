"""``vaf login-server``: HTTPS with a client certificate in, a short-lived ssh grant out.

One request: ``POST /grant`` with an optional JSON body ``{"lifetime": seconds}``. The TLS
handshake has verified the certificate (:mod:`vaf.login.tls`); then every check that can
refuse runs before anything changes on disk (proxy policy, DN mapping, key type, lifetime),
the decision is logged, and only then is the account made and the grant written, under a
per-user lock. The answer is JSON: the user, the mode, how long the grant lasts and, in
certificate mode, the OpenSSH certificate.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vaf.errors import VafError
from vaf.host import locks
from vaf.host.runner import Runner
from vaf.login import accounts, grants, x509
from vaf.login.mapping import GridMapfile, Mapper, MappingError
from vaf.login.settings import LoginSettings
from vaf.login.tls import ContextCache, server_context

log = logging.getLogger("vaf-login")


class Refusal(Exception):
    """A request refused with one clear reason; nothing has been changed."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.dn: str | None = None
        self.user: str | None = None

    def describe(self, client: str) -> str:
        dn = f'dn="{x509.escape_dn(self.dn)}" ' if self.dn is not None else ""
        return f"{dn}user={self.user or '-'} client={client}: {self.reason}"


@dataclass(frozen=True)
class Decision:
    dn: str
    user: str
    key: grants.SshKey
    lifetime: int
    client: str

    def describe(self, mode: str) -> str:
        return (f'dn="{x509.escape_dn(self.dn)}" user={self.user} client={self.client} '
                f"mode={mode} lifetime={self.lifetime}s")


def requested_lifetime(body: bytes, default: int, maximum: int) -> int:
    """The lifetime asked for (JSON ``{"lifetime": N}``, empty body = the default)."""
    if not body.strip():
        return default
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
    if not isinstance(request, dict) or set(request) - {"lifetime"}:
        raise Refusal(HTTPStatus.BAD_REQUEST, 'the request body must be {"lifetime": seconds}')
    lifetime = request.get("lifetime", default)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
        raise Refusal(HTTPStatus.BAD_REQUEST, "lifetime must be a positive number of seconds")
    if lifetime > maximum:
        raise Refusal(HTTPStatus.BAD_REQUEST,
                      f"a lifetime of {lifetime} s is over the maximum of {maximum} s")
    return lifetime


def build_mapper(settings: LoginSettings) -> Mapper:
    if settings.mapping == "ldap" and settings.ldap is not None:
        from vaf.login.ldap import LdapMapper

        return LdapMapper(settings.ldap)
    return GridMapfile(settings.grid_mapfile)


class LoginService:
    """The decisions and the grants, independent of HTTP."""

    def __init__(self, settings: LoginSettings, mapper: Mapper | None = None,
                 runner: Runner | None = None):
        self.settings = settings
        self.mapper = mapper if mapper is not None else build_mapper(settings)
        self.runner = runner if runner is not None else Runner()

    def decide(self, peer_der: bytes | None, client: str, body: bytes) -> Decision:
        if not peer_der:
            raise Refusal(HTTPStatus.FORBIDDEN, "a client certificate is required")
        try:
            cert = x509.read_der(peer_der, self.runner)
            dn = cert.identity
        except x509.CertificateError as err:
            raise Refusal(HTTPStatus.FORBIDDEN, str(err)) from None
        user = None
        try:
            if cert.is_proxy and not self.settings.allow_proxies:
                raise Refusal(HTTPStatus.FORBIDDEN, "proxy certificates are not accepted here")
            user = self._map(dn)
            try:
                key = grants.ssh_public_key(cert.public_key_pem, self.runner)
            except grants.GrantError as err:
                raise Refusal(HTTPStatus.FORBIDDEN, str(err)) from None
            lifetime = requested_lifetime(body, self.settings.lifetime,
                                          self.settings.max_lifetime)
        except Refusal as refusal:
            refusal.dn, refusal.user = dn, user
            raise
        # A grant never outlives the credential that earned it.
        lifetime = max(1, min(lifetime, int(cert.not_after - time.time())))
        return Decision(dn, user, key, lifetime, client)

    def _map(self, dn: str) -> str:
        try:
            user = self.mapper.lookup(dn)
        except MappingError as err:
            raise Refusal(HTTPStatus.FORBIDDEN, str(err)) from None
        if user is None:
            raise Refusal(HTTPStatus.FORBIDDEN,
                          f'the DN "{x509.escape_dn(dn)}" is not mapped to an account here')
        return user

    def carry_out(self, decision: Decision) -> dict:
        mode = self.settings.grant
        with locks.exclusive(self.settings.lock_dir, f"user-{decision.user}"):
            account = accounts.lookup(decision.user)
            if account is None:
                log.info("create account user=%s for dn=\"%s\" client=%s", decision.user,
                         x509.escape_dn(decision.dn), decision.client)
                account = accounts.ensure_account(self.settings.accounts, decision.user,
                                                  self.runner)
            now = time.time()
            until = now + decision.lifetime
            answer = {"user": account.name, "mode": mode, "lifetime": decision.lifetime,
                      "valid_until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)),
                      "ssh_host": self.settings.ssh_host, "ssh_port": self.settings.ssh_port}
            if mode == "certificate":
                answer["certificate"] = grants.sign_certificate(
                    decision.key, self.settings.ssh_ca_key, x509.escape_dn(decision.dn),
                    account.name, decision.lifetime, self.runner)
            else:
                grants.write_authorized_key(account, decision.key, until, now)
        return answer

    def handle(self, peer_der: bytes | None, client: str, body: bytes) -> tuple[int, dict]:
        try:
            decision = self.decide(peer_der, client, body)
        except Refusal as refusal:
            log.warning("refuse %s", refusal.describe(client))
            return refusal.status, {"error": refusal.reason}
        log.info("grant %s", decision.describe(self.settings.grant))
        try:
            answer = self.carry_out(decision)
        except (VafError, LookupError, OSError, grants.GrantError) as err:
            reason = err.reason if isinstance(err, VafError) else str(err)
            log.error("failed %s: %s", decision.describe(self.settings.grant), reason)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"the grant failed: {reason}"}
        log.info("granted %s until %s", decision.describe(self.settings.grant),
                 answer["valid_until"])
        return HTTPStatus.OK, answer


class GrantHandler(BaseHTTPRequestHandler):
    server_version = "vaf-login"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.client_address[0], format % args)

    def _reply(self, status: int, payload: dict) -> None:
        data = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        log.warning("refuse client=%s: %s", self.client_address[0], reason)
        self._reply(status, {"error": reason})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /grant")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/grant":
            return self._refuse(HTTPStatus.NOT_FOUND, "unknown path (use POST /grant)")
        limit = self.server.service.settings.max_request_bytes
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self._refuse(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        if length < 0 or length > limit:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"the request is larger than {limit} bytes")
            # the unread body: drain (bounded in time and size) so no reset loses the answer
            return _linger(self.connection, limit=1 << 20)
        try:
            body = self.rfile.read(length)
        except OSError:  # a timeout, or the client went away mid-body
            log.warning("refuse client=%s: the request body did not arrive",
                        self.client_address[0])
            self.close_connection = True
            return None
        if len(body) != length:
            return self._refuse(HTTPStatus.BAD_REQUEST, "the request body is incomplete")
        peer = self.connection.getpeercert(binary_form=True)
        try:
            status, payload = self.server.service.handle(peer, self.client_address[0], body)
        except Exception:  # a bug must cost one request, not the thread's silence
            log.exception("internal error for client=%s", self.client_address[0])
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}
        self._reply(status, payload)


class LoginHTTPServer(ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the request's own thread, so a slow
    or hostile client never blocks the accept loop."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, service: LoginService, contexts: ContextCache):
        self.service = service
        self.contexts = contexts
        settings = service.settings
        self.slots = threading.BoundedSemaphore(settings.max_connections)
        super().__init__((settings.listen, settings.port), GrantHandler)

    def process_request(self, request, client_address) -> None:
        """One thread per connection, at most ``max_connections`` at once; beyond that a
        connection is closed at once (a flood must not exhaust threads and memory)."""
        if not self.slots.acquire(blocking=False):
            log.warning("refuse client=%s: too many connections", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: socket.socket, client_address) -> None:
        request.settimeout(self.service.settings.request_timeout)
        try:
            context = self.contexts.get()
        except (ssl.SSLError, OSError) as err:  # e.g. the CA directory broke since the start
            log.error("cannot serve client=%s: TLS set-up failed: %s", client_address[0], err)
            return
        tls = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            try:
                tls.do_handshake()
            except ssl.SSLCertVerificationError as err:
                log.warning("refuse client=%s: certificate verification failed: %s",
                            client_address[0], err.verify_message)
                _linger(tls)
                return
            except (ssl.SSLError, OSError) as err:
                log.warning("refuse client=%s: TLS handshake failed: %s", client_address[0],
                            getattr(err, "reason", None) or err)
                return
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


def _linger(tls: ssl.SSLSocket, seconds: float = 2.0, limit: int = 1 << 16) -> None:
    """After a refused handshake: stop sending and read what the client still sends, so the
    close does not reset the connection. With TLS 1.3 the client has already sent its
    request when our alert arrives, and a reset would make it lose the alert (the reason)."""
    try:
        tls.shutdown(socket.SHUT_WR)
        tls.settimeout(seconds)
        received = 0
        while received < limit:
            chunk = tls.recv(4096)
            if not chunk:
                break
            received += len(chunk)
    except OSError:
        pass


def make_server(settings: LoginSettings, mapper: Mapper | None = None,
                runner: Runner | None = None) -> LoginHTTPServer:
    service = LoginService(settings, mapper, runner)
    contexts = ContextCache(
        lambda: server_context(settings.server_cert, settings.server_key, settings.ca_dir,
                               settings.allow_proxies),
        settings.ca_reload_seconds)
    contexts.get()  # a broken certificate or CA directory fails at start, not per request
    return LoginHTTPServer(service, contexts)


def serve_in_thread(server: LoginHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="vaf-login", daemon=True)
    thread.start()
    return thread
