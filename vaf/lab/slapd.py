"""A private OpenLDAP server on 127.0.0.1 for the login service's LDAP mapping tests.

Debian's slapd started by hand with an old-style ``slapd.conf`` in a temporary directory (core,
cosine and inetOrgPerson schemas, one mdb database), loaded with ``ldapadd``, stopped by pid.
"""

from __future__ import annotations

import base64
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vaf.host.runner import Runner
from vaf.lab.daemons import free_port, port_open, read_pid, stop_pid, wait_for

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=vaf-lab,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "lab-only-secret"

CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile {dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "{suffix}"
rootdn "{root}"
rootpw {password}
directory {dir}/db
"""


def available() -> bool:
    return os.path.exists(SLAPD) and shutil.which("ldapadd") is not None


@dataclass
class Slapd:
    dir: Path
    runner: Runner = field(default_factory=Runner)
    port: int = 0

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def start(self) -> Slapd:
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        config = self.dir / "slapd.conf"
        config.write_text(CONFIG.format(dir=self.dir, suffix=SUFFIX, root=ROOT_DN,
                                        password=ROOT_PASSWORD))
        self.port = free_port()
        self.runner.run([SLAPD, "-f", str(config), "-h", self.url])
        wait_for(lambda: port_open(self.port), f"slapd on port {self.port}")
        self.add(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
                 "o: vaf lab\ndc: vaf-lab\n\n"
                 f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n")
        return self

    def add(self, ldif: str) -> None:
        self.runner.run(["ldapadd", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                        input=ldif, timeout=30)

    def add_person(self, uid: str, **attributes: str | list[str]) -> None:
        lines = [f"dn: uid={uid},ou=people,{SUFFIX}", "objectClass: inetOrgPerson",
                 f"uid: {uid}", f"cn: {uid}", f"sn: {uid}"]
        for name, values in attributes.items():
            for value in [values] if isinstance(values, str) else values:
                # base64 (``::``) so any DN, hostile ones included, is stored as it is
                lines.append(f"{name}:: {base64.b64encode(value.encode()).decode()}")
        self.add("\n".join(lines) + "\n")

    def stop(self) -> None:
        stop_pid(read_pid(self.dir / "slapd.pid"))
        shutil.rmtree(self.dir, ignore_errors=True)
