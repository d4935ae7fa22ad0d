"""``/etc/vaf/login.conf``: the service's settings (``KEY=value``, as every vaf config file).

Every key has a default here; share/login/login.conf lists them with their meaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vaf.config import load_config
from vaf.errors import ConfigError
from vaf.login.accounts import AccountPolicy
from vaf.login.ldap import LdapSettings

DEFAULT_CONFIG = "/etc/vaf/login.conf"
GRANT_MODES = ("certificate", "authorized_keys")
MAPPINGS = ("grid-mapfile", "ldap")


@dataclass(frozen=True)
class LoginSettings:
    listen: str = "0.0.0.0"
    port: int = 443
    server_cert: str = "/etc/grid-security/hostcert.pem"
    server_key: str = "/etc/grid-security/hostkey.pem"
    ca_dir: str = "/etc/grid-security/certificates"
    allow_proxies: bool = False
    grid_mapfile: str = "/etc/grid-security/grid-mapfile"
    mapping: str = "grid-mapfile"
    ldap: LdapSettings | None = None
    grant: str = "certificate"
    ssh_ca_key: str = "/etc/vaf/login/ssh_user_ca"
    lifetime: int = 12 * 3600
    max_lifetime: int = 24 * 3600
    accounts: AccountPolicy = AccountPolicy(True, "/etc/skel", "/bin/bash", "/home")
    lock_dir: str = "/run/vaf-login"
    max_request_bytes: int = 4096
    max_connections: int = 64
    request_timeout: float = 30.0
    ca_reload_seconds: int = 300
    ssh_host: str = ""
    ssh_port: int = 22


def load_settings(path: str | None = DEFAULT_CONFIG) -> LoginSettings:
    config = load_config(path, environ={})
    settings = LoginSettings(
        listen=config.str("LISTEN", LoginSettings.listen),
        port=config.int("PORT", LoginSettings.port, minimum=0, maximum=65535),
        server_cert=config.str("SERVER_CERT", LoginSettings.server_cert),
        server_key=config.str("SERVER_KEY", LoginSettings.server_key),
        ca_dir=config.str("CA_DIR", LoginSettings.ca_dir),
        allow_proxies=config.bool("ALLOW_PROXIES", LoginSettings.allow_proxies),
        grid_mapfile=config.str("GRID_MAPFILE", LoginSettings.grid_mapfile),
        mapping=config.choice("MAPPING", LoginSettings.mapping, MAPPINGS),
        ldap=_ldap_settings(config),
        grant=config.choice("GRANT", LoginSettings.grant, GRANT_MODES),
        ssh_ca_key=config.str("SSH_CA_KEY", LoginSettings.ssh_ca_key),
        lifetime=config.int("LIFETIME", LoginSettings.lifetime, minimum=1),
        max_lifetime=config.int("MAX_LIFETIME", LoginSettings.max_lifetime, minimum=1),
        accounts=AccountPolicy(
            create=config.bool("CREATE_ACCOUNTS", True),
            skeleton=config.str("SKELETON", "/etc/skel"),
            shell=config.str("SHELL", "/bin/bash"),
            home_base=config.str("HOME_BASE", "/home"),
            useradd=config.argv("USERADD", ("useradd",))),
        lock_dir=config.str("LOCK_DIR", LoginSettings.lock_dir),
        max_request_bytes=config.int("MAX_REQUEST_BYTES", LoginSettings.max_request_bytes,
                                     minimum=64),
        max_connections=config.int("MAX_CONNECTIONS", LoginSettings.max_connections,
                                    minimum=1),
        request_timeout=config.float("REQUEST_TIMEOUT", LoginSettings.request_timeout,
                                     minimum=1.0),
        ca_reload_seconds=config.int("CA_RELOAD_SECONDS", LoginSettings.ca_reload_seconds,
                                     minimum=1),
        ssh_host=config.str("SSH_HOST", ""),
        ssh_port=config.int("SSH_PORT", 22, minimum=1, maximum=65535),
    )
    if settings.mapping == "ldap" and settings.ldap is None:
        raise ConfigError(f"MAPPING=ldap in {config.source} needs LDAP_URL and LDAP_BASE")
    if settings.lifetime > settings.max_lifetime:
        raise ConfigError(f"LIFETIME in {config.source} exceeds MAX_LIFETIME")
    if not os.path.isabs(settings.accounts.home_base):
        raise ConfigError(f"HOME_BASE in {config.source} must be an absolute path")
    return settings


def _ldap_settings(config) -> LdapSettings | None:
    url, base = config.str("LDAP_URL", ""), config.str("LDAP_BASE", "")
    if not url or not base:
        return None
    return LdapSettings(
        url=url, base=base,
        dn_attribute=config.str("LDAP_DN_ATTRIBUTE", LdapSettings.dn_attribute),
        user_attribute=config.str("LDAP_USER_ATTRIBUTE", LdapSettings.user_attribute),
        bind_dn=config.str("LDAP_BIND_DN", ""),
        bind_password_file=config.str("LDAP_BIND_PASSWORD_FILE", ""),
        timeout=config.float("LDAP_TIMEOUT", LdapSettings.timeout, minimum=1.0))
