"""The LDAP backend of :class:`vaf.login.mapping.Mapper`: search the DN, return the account.

One search per login: ``(<dn attribute>=<certificate DN>)`` under ``base``, the DN escaped as
an LDAP filter value (RFC 4515), so ``*``, ``(``, ``)``, ``\\`` or NUL in a DN match only
themselves. Exactly one entry maps; none is "unmapped"; more than one is refused as
ambiguous rather than guessed. The account name is validated like the grid-mapfile's.
Default attributes follow the voPerson schema (``voPersonCertificateDN``) and ``uid``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaf.login.mapping import MappingError, check_user_name


@dataclass(frozen=True)
class LdapSettings:
    url: str
    base: str
    dn_attribute: str = "voPersonCertificateDN"
    user_attribute: str = "uid"
    bind_dn: str = ""
    bind_password_file: str = ""
    timeout: float = 10.0


def search_filter(attribute: str, dn: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return f"({attribute}={escape_filter_chars(dn)})"


class LdapMapper:
    def __init__(self, settings: LdapSettings):
        import ldap3  # only this backend needs it (setup.cfg extra "ldap")

        self.settings = settings
        self._ldap3 = ldap3
        # ldap3 packs its socket timeouts as integers
        self._timeout = max(1, int(settings.timeout))
        self._server = ldap3.Server(settings.url, connect_timeout=self._timeout)

    def _password(self) -> str | None:
        if not self.settings.bind_password_file:
            return None
        try:
            with open(self.settings.bind_password_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as err:
            raise MappingError(f"cannot read the LDAP bind password: {err.strerror}") from None

    def lookup(self, dn: str) -> str | None:
        ldap3 = self._ldap3
        settings = self.settings
        try:
            with ldap3.Connection(self._server, user=settings.bind_dn or None,
                                  password=self._password(), auto_bind=True,
                                  receive_timeout=self._timeout, read_only=True) as conn:
                conn.search(settings.base, search_filter(settings.dn_attribute, dn),
                            attributes=[settings.user_attribute], size_limit=2)
                entries = list(conn.entries)
        except ldap3.core.exceptions.LDAPException as err:
            raise MappingError(f"the LDAP lookup failed: {err}") from None
        if not entries:
            return None
        if len(entries) > 1:
            raise MappingError("the DN matches more than one LDAP entry")
        values = entries[0].entry_attributes_as_dict.get(settings.user_attribute) or []
        if len(values) != 1:
            raise MappingError(f"the LDAP entry has no single {settings.user_attribute}")
        return check_user_name(str(values[0]))
