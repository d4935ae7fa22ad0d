"""Install vaf's privileged host part into the test hypervisor, as ``install.sh host`` does.

What lands in the guest, root-owned (exactly the files ``install.sh host`` installs):

* ``/usr/lib/vaf/vaf-privileged`` (0755), from ``share/privileged/vaf-privileged``;
* ``/usr/lib/vaf/lib/vaf/`` (0644 files, 0755 dirs): the host closure of the package
  (:func:`vaf.layers.host_roots`), never the lab;
* ``/usr/lib/vaf/privileged.conf`` (0644): the shipped one, plus the keys a test sets;
* ``/etc/sudoers.d/vaf`` (0440), from ``share/sudoers/vaf``, checked by ``visudo -c``.

:func:`install_here` lays out the same files on this machine (tests running as root).
:func:`sudo_limited_to_vaf` then takes away the blanket sudo the test image gives
``oneadmin``, so tests run under exactly the shipped rules; it gives it back afterwards (the
guest is shared by every test module of a session).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from vaf import layers
from vaf.drivers import registry

REPO = Path(__file__).resolve().parents[2]
PREFIX = "usr/lib/vaf"
BLANKET_SUDOERS = "/etc/sudoers.d/oneadmin"  # testbed/build.sh: oneadmin ALL=(ALL) NOPASSWD: ALL
SUDOERS = "/etc/sudoers.d/vaf"


def installed_files(conf: Mapping[str, str] | None = None) -> dict[str, tuple[bytes, int]]:
    """{path in the guest (no leading /): (content, mode)} of a host install."""
    files = {
        f"{PREFIX}/vaf-privileged": ((REPO / "share/privileged/vaf-privileged").read_bytes(),
                                     0o755),
        "etc/sudoers.d/vaf": ((REPO / "share/sudoers/vaf").read_bytes(), 0o440),
    }
    text = (REPO / "share/privileged/privileged.conf").read_text()
    text += "".join(f"{key}={shlex.quote(value)}\n" for key, value in (conf or {}).items())
    files[f"{PREFIX}/privileged.conf"] = (text.encode(), 0o644)
    for relative in layers.closure_files(layers.host_roots(registry)):
        files[f"{PREFIX}/lib/vaf/{relative}"] = ((REPO / "vaf" / relative).read_bytes(), 0o644)
    return files


def _tarball(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = sorted({str(Path(p).parent) for p in files} - {"."})
        for directory in directories:
            for parent in [*reversed(Path(directory).parents), Path(directory)]:
                if str(parent) in (".", "usr", "usr/lib", "etc", "etc/sudoers.d"):
                    continue
                info = tarfile.TarInfo(str(parent))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_host(tb, conf: Mapping[str, str] | None = None) -> None:
    """Install (replacing an earlier install) into the guest ``tb``, as root."""
    files = installed_files(conf)
    script = ("set -e; rm -rf /usr/lib/vaf; t=$(mktemp); cat >$t; "
              "tar -xf $t -C / --no-same-owner --no-overwrite-dir; rm -f $t; "
              "chown -R root:root /usr/lib/vaf; "
              "visudo -cf /etc/sudoers.d/vaf >/dev/null")
    done = subprocess.run([*tb.ssh_argv("root"), "--", script], input=_tarball(files),
                          capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"host install failed: {done.stderr.decode(errors='replace')}")


def install_here(root: str | os.PathLike, conf: Mapping[str, str] | None = None) -> Path:
    """The same files below ``root`` on this machine, the sudoers file aside; the program's
    path. For tests that run as root already (isolation in network namespaces): the drivers'
    runner then runs the program without sudo, through the very code a host runs."""
    base = Path(root)
    for path, (data, mode) in installed_files(conf).items():
        if not path.startswith(f"{PREFIX}/"):
            continue
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    return base / PREFIX / "vaf-privileged"


@contextlib.contextmanager
def sudo_limited_to_vaf(tb) -> Iterator[None]:
    """oneadmin's sudo is exactly ``/etc/sudoers.d/vaf`` inside the block."""
    saved = f"/root/{Path(BLANKET_SUDOERS).name}.vaf-saved"
    tb.ssh(f"if [ -e {BLANKET_SUDOERS} ]; then mv {BLANKET_SUDOERS} {saved}; fi")
    try:
        yield
    finally:
        tb.ssh(f"if [ -e {saved} ]; then mv {saved} {BLANKET_SUDOERS}; fi", check=False)
