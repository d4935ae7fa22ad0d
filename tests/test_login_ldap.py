"""The LDAP mapping against a real slapd on 127.0.0.1 (vaf/lab/slapd.py)."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ldap3")

from vaf.lab import slapd as slapd_support  # noqa: E402
from vaf.lab.daemons import free_port  # noqa: E402
from vaf.lab.grid_pki import GridCA  # noqa: E402
from vaf.login.ldap import LdapMapper, LdapSettings, search_filter  # noqa: E402
from vaf.login.mapping import MappingError  # noqa: E402
from vaf.login.server import LoginService  # noqa: E402
from vaf.login.settings import LoginSettings, load_settings  # noqa: E402

pytestmark = pytest.mark.skipif(not slapd_support.available(),
                                reason="needs slapd and ldap-utils (scripts/deps/apt-login.txt)")

JANE = "/DC=org/DC=vaf-lab/OU=Users/CN=Jane Doe"
STAR = "/DC=org/CN=*"


@pytest.fixture(scope="module")
def directory():
    server = slapd_support.Slapd(Path(tempfile.mkdtemp(prefix="vaf-slapd-")))
    try:
        server.start()
        server.add_person("jdoe", description=JANE)
        server.add_person("twin1", description="/DC=org/CN=Twin")
        server.add_person("twin2", description="/DC=org/CN=Twin")
        server.add(f"dn: uid=weird,ou=people,{slapd_support.SUFFIX}\n"
                   "objectClass: inetOrgPerson\nuid: weird\nuid: other\ncn: w\nsn: w\n"
                   "description: /DC=org/CN=Weird\n")
        server.add_person("literal", description=STAR)
        yield server
    finally:
        server.stop()


def mapper(directory, **changes) -> LdapMapper:
    values = dict(url=directory.url, base=f"ou=people,{slapd_support.SUFFIX}",
                  dn_attribute="description", timeout=5.0)
    values.update(changes)
    return LdapMapper(LdapSettings(**values))


def test_search_filter_escapes_the_dn():
    assert search_filter("description", "/CN=a*)(uid=*\\") == \
        "(description=/CN=a\\2a\\29\\28uid=\\2a\\5c)"


def test_lookup(directory):
    ldap = mapper(directory)
    assert ldap.lookup(JANE) == "jdoe"
    assert ldap.lookup("/DC=org/CN=Somebody Else") is None
    # a DN that is a filter wildcard matches only an entry holding that very string
    assert ldap.lookup(STAR) == "literal"
    assert ldap.lookup("/DC=org/CN=Jane*") is None
    assert ldap.lookup("*") is None


def test_ambiguous_and_invalid_entries_are_refused(directory):
    ldap = mapper(directory)
    with pytest.raises(MappingError, match="more than one"):
        ldap.lookup("/DC=org/CN=Twin")
    with pytest.raises(MappingError, match="no single uid"):
        ldap.lookup("/DC=org/CN=Weird")  # two uid values


def test_an_unreachable_server_is_a_clear_failure(directory):
    ldap = mapper(directory, url=f"ldap://127.0.0.1:{free_port()}", timeout=2.0)
    with pytest.raises(MappingError, match="the LDAP lookup failed"):
        ldap.lookup(JANE)


def test_the_service_maps_a_real_certificate_through_ldap(directory, tmp_path):
    ca = GridCA(tmp_path / "ca").create()
    jane = ca.issue("jane", JANE)
    stranger = ca.issue("stranger", "/DC=org/DC=vaf-lab/OU=Users/CN=Not In Ldap")
    service = LoginService(LoginSettings(mapping="ldap"), mapper=mapper(directory))
    der = ssl.PEM_cert_to_DER_cert(jane.cert.read_text())
    decision = service.decide(der, "127.0.0.1", b'{"lifetime": 60}')
    assert (decision.dn, decision.user, decision.lifetime) == (JANE, "jdoe", 60)
    status, answer = service.handle(ssl.PEM_cert_to_DER_cert(stranger.cert.read_text()),
                                    "127.0.0.1", b"")
    assert status == 403 and "is not mapped to an account here" in answer["error"]


def test_ldap_settings(tmp_path):
    conf = tmp_path / "login.conf"
    conf.write_text("MAPPING=ldap\n")
    with pytest.raises(Exception, match="needs LDAP_URL and LDAP_BASE"):
        load_settings(str(conf))
    conf.write_text("MAPPING=ldap\nLDAP_URL=ldaps://ldap.example\nLDAP_BASE=ou=people,dc=x\n")
    settings = load_settings(str(conf))
    assert settings.ldap == LdapSettings("ldaps://ldap.example", "ou=people,dc=x")
