"""The README's first command, reduced: the whole facility with two workers, end to end.

Runs ``scripts/demo.py`` as a user would (the test hypervisor, real Slurm, the real elastic
daemon, the OpenNebula and oned stand-ins, the gate behind a real sshd) and checks what it
prints: every worker deployed by lvmsnap, given its CPU class, joined through the gate, ran
its job, was drained and removed, and nothing was left.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaf.lab import slurm as lab_slurm
from vaf.lab import sshd as lab_sshd

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.testbed, pytest.mark.slow,
              pytest.mark.skipif(not (lab_slurm.available() and lab_sshd.available()),
                                 reason="needs Slurm 22.05, munge and openssh-server")]


def test_reduced_demo_end_to_end():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--workers", "2",
                           "--image-mb", "8", "--job-seconds", "1", "--scratch-gib", "1",
                           "--swap-mb", "64", "--no-table"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    for name in ("w1", "w2"):
        assert f"[deploy] {name}: VM" in out
        assert re.search(rf"\[deploy\] {name}: VM \d+ running, RUNNING hook: CPU priority "
                         r"applied: class interactive, nice -5 on 3 threads", out), out
        assert f"[join] {name} from 127.0.1.{name[1]}: vaf-gate:" in out
        assert f"[epilog] {name}: VM" in out
    assert "a long batch VM (VM 99) on the hypervisor: CPU priority applied: class batch, " \
        "nice 19" in out
    assert out.count("(SUCCESS)") == 2
    assert out.count("cold: filled the cache") == 1 and out.count("warm clone,") == 1
    assert "[slurm] every job done" in out
    assert "idle workers drained, VMs terminated, nodes powered down" in out
    assert "nothing left" in out and "FAILED" not in out
