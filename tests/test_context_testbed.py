"""Worker secrets with OpenNebula's real context CD: an ISO9660 image made by genisoimage
with oned's flags (``-V CONTEXT -J -R``), loop-mounted inside the test hypervisor.

This machine's kernel has no iso9660 driver; the guest's has. The check is the one of
``test_context_worker.py`` (a private mount namespace, ``nobody`` trying to read the mounted
CD and every installed secret, the mount gone afterwards), run by the guest's python3.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_context_worker import KEY, PRIVATE_MOUNT_SCRIPT, context

from vaf.guest.context import format_context

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEST = "/var/tmp/vaf-context-test"


def context_iso(tmp_path: Path) -> Path:
    """The CD as oned's context driver builds it (files world-readable on it)."""
    tree = tmp_path / "isofiles"
    tree.mkdir()
    ctx = context(VAF_BATCH="slurm", ONEGATE_TOKEN=None,
                  VAF_MUNGE_KEY_BASE64=base64.b64encode(b"m" * 32).decode(),
                  VAF_JOIN_KEY_BASE64=None, VAF_JOIN_KEY_FILE="join.key")
    (tree / "context.sh").write_text(format_context(ctx))
    (tree / "join.key").write_bytes(KEY)
    (tree / "token.txt").write_text("t0ken\n")
    iso = tmp_path / "stage" / "context.iso"
    iso.parent.mkdir()
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "CONTEXT", "-J", "-R",
                    str(tree)], check=True)
    return iso


@pytest.mark.skipif(not shutil.which("genisoimage"), reason="needs genisoimage")
def test_no_secret_is_readable_from_a_real_context_cd(testbed, tmp_path):
    iso = context_iso(tmp_path)
    stage = iso.parent
    shutil.copytree(REPO / "vaf", stage / "lib" / "vaf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (stage / "check.py").write_text(PRIVATE_MOUNT_SCRIPT)
    testbed.sync_remotes(stage, DEST)
    setup = ('dev=$(losetup --find --show --read-only "$1/context.iso"); '
             'root=$(mktemp -d /var/tmp/vaf-guest-root.XXXXXX); chmod 755 "$root"; '
             'unshare --mount --propagation private python3 "$1/check.py" "$1/lib" "$root" '
             '"$dev"; status=$?; losetup -d "$dev"; rm -rf "$root"; exit $status')
    result = testbed.ssh(["sh", "-c", setup, "sh", DEST], check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "mounted": True, "root reads the CD": True, "nobody reads the CD": False,
        "mounted after": False,
        "root reads run/vaf/join_key": True, "nobody reads run/vaf/join_key": False,
        "root reads run/vaf/onegate-headers": True,
        "nobody reads run/vaf/onegate-headers": False,
        "root reads etc/munge/munge.key": True, "nobody reads etc/munge/munge.key": False}
