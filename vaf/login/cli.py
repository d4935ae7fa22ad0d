"""``vaf login-server`` (the service, run by systemd) and ``vaf login`` (the physicist's client)."""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from vaf.errors import VafError
from vaf.host.runner import Runner

DEFAULT_PROXY = f"/tmp/x509up_u{os.getuid()}"


@click.command("login-server")
@click.option("--config", "config_path", default="/etc/vaf/login.conf", show_default=True,
              help="KEY=value settings (a missing file means the defaults)")
@click.option("--foreground", is_flag=True, help="log to stderr instead of journald/syslog")
@click.option("--debug", is_flag=True, help="log every HTTP request too")
def login_server(config_path: str, foreground: bool, debug: bool) -> None:
    """Serve grid-credential logins: HTTPS with a client certificate -> a short ssh grant."""
    from vaf.login.server import make_server
    from vaf.login.settings import load_settings
    from vaf.service.logs import setup_logging
    from vaf.service.systemd import notify

    log = setup_logging("vaf-login", logging.DEBUG if debug else logging.INFO, foreground)
    try:
        settings = load_settings(config_path)
        server = make_server(settings)
    except (VafError, OSError) as err:
        log.error("cannot start: %s", err)
        raise SystemExit(2) from None
    host, port = server.server_address[:2]
    log.info("listening on %s:%s (grant=%s, proxies %s)", host, port, settings.grant,
             "accepted" if settings.allow_proxies else "refused")

    def stop(signum, frame):
        notify("STOPPING=1")
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    notify("READY=1")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command("login", context_settings={"ignore_unknown_options": False})
@click.option("--server", "url", envvar="VAF_LOGIN_SERVER", required=True,
              help="the login service, https://host[:port] (or $VAF_LOGIN_SERVER)")
@click.option("--cert", default=os.path.expanduser("~/.globus/usercert.pem"),
              show_default=True, help="your certificate (PEM)")
@click.option("--key", default=os.path.expanduser("~/.globus/userkey.pem"),
              show_default=True, help="its private key (PEM, may be encrypted)")
@click.option("--proxy", "proxy", is_flag=False, flag_value=DEFAULT_PROXY, default=None,
              help="use a proxy file instead (default $X509_USER_PROXY or /tmp/x509up_u<uid>)")
@click.option("--ca-dir", default="/etc/grid-security/certificates", show_default=True,
              help="hashed CA directory that verifies the service")
@click.option("--ca-file", default=None, help="a CA bundle file instead of --ca-dir")
@click.option("--lifetime", type=click.IntRange(min=1), default=None,
              help="seconds the grant should last (the service's default otherwise)")
@click.option("--dir", "directory", default=os.path.expanduser("~/.ssh/vaf"),
              show_default=True, help="where the ssh key and certificate are stored")
@click.option("--print", "print_only", is_flag=True,
              help="print the ssh command line (for pod-remote) instead of running ssh")
@click.option("-o", "ssh_options", multiple=True, help="an extra ssh -o option")
@click.argument("command", nargs=-1)
def login(url, cert, key, proxy, ca_dir, ca_file, lifetime, directory, print_only,
          ssh_options, command) -> None:
    """Log in to the access node with your Grid certificate (or proxy)."""
    from vaf.login import client

    if proxy is not None:
        cert = key = os.environ.get("X509_USER_PROXY", proxy) if proxy == DEFAULT_PROXY \
            else proxy
    try:
        answer, key_path, host = client.login(url, cert, key, None if ca_file else ca_dir,
                                              ca_file, lifetime, directory)
    except client.LoginError as err:
        click.echo(f"vaf login: {err}", err=True)
        raise SystemExit(1) from None
    argv = client.ssh_argv(answer, key_path, host, tuple(ssh_options), tuple(command))
    click.echo(client.describe(answer), err=True)
    if print_only:
        click.echo(client.print_line(argv))
        return
    sys.stdout.flush()
    # The interactive hand-off: this process becomes ssh (the terminal is ssh's).
    Runner().hand_over(argv)
