"""A local Debian archive for the test hypervisor, whose guest can reach no network.

install.sh installs a role's packages with the system's own ``apt-get``; in the guest that
only works from an archive it can read. This builds one: the ``.deb`` files are fetched once
on this machine with ``apt-get download`` (cached), indexed in a flat ``Packages`` file, put
in the shared dir, and the guest's apt is pointed at it alone (its root.img is a snapshot, so
nothing of this outlives the session).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("VAF_LAB_DEB_CACHE", "/var/cache/vaf-lab-debs"))

#: what install.sh's frontend and head roles need beyond the guest image (Debian 12), with
#: the dependencies the image lacks
ROLE_PACKAGES = ("python3-click", "python3-colorama", "python3-lxml", "libxml2", "libxslt1.1",
                 "genisoimage", "libmagic1", "libmagic-mgc")

SOURCE_LIST = "/etc/apt/sources.list.d/vaf-lab.list"


class AptRepoError(RuntimeError):
    """The packages could not be fetched or served."""


def fetch(packages: tuple[str, ...] = ROLE_PACKAGES, cache: Path = CACHE) -> list[Path]:
    """The .deb of each package, downloaded into the cache when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(cache.glob(f"{p}_*.deb"))]
    if missing:
        proc = subprocess.run(["apt-get", "download", "-q", *missing], cwd=cache,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AptRepoError(f"apt-get download {' '.join(missing)} failed: {proc.stderr}")
    found = []
    for package in packages:
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise AptRepoError(f"no .deb of {package} in {cache}")
        found.append(debs[-1])
    return found


def _stanza(deb: Path) -> str:
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                             check=True).stdout.rstrip("\n")
    data = deb.read_bytes()
    return (f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n")


def build(directory: Path, debs: list[Path]) -> Path:
    """A flat archive in ``directory``: the .debs and their ``Packages`` index."""
    directory.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        shutil.copy(deb, directory / deb.name)
    (directory / "Packages").write_text("\n".join(_stanza(directory / d.name) for d in debs))
    return directory


def serve(tb, packages: tuple[str, ...] = ROLE_PACKAGES) -> str:
    """Make ``packages`` installable in the guest by its own apt, from the shared dir only."""
    archive = build(Path(tb.shared_dir) / "apt", fetch(packages))
    os.chmod(archive, 0o755)
    tb.ssh(["sh", "-euc", 'for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources; do '
            '[ -e "$f" ] && mv "$f" "$f.vaf-lab-off"; done; '
            'echo "deb [trusted=yes] file:$1 ./" > "$2"; apt-get update -q >/dev/null',
            "sh", str(archive), SOURCE_LIST])
    return str(archive)
