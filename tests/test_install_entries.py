"""What install.sh points at must work: the gate's forced command names the installed
``vaf-gate``, and the sweep cron of the network-driver form sweeps with that driver's conf."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_isolation import (
    A1,
    A2,
    B1,
    Remotes,
    lab,  # noqa: F401  (the fixture)
    machine_xml,
)

from vaf.gate import cli as gate_cli
from vaf.one.xml import encode_payload

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO4Xo3C3Nq0XnOeGfVHtlAFVj4qk3S2LHfdJ1zV7lRUx"
       " workers")


def write_program(directory, name="vaf-gate"):
    program = directory / name
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return program


def test_the_key_line_runs_the_vaf_gate_beside_vaf(tmp_path, monkeypatch):
    """install.sh puts vaf and vaf-gate in /usr/local/bin; `python3 -m vaf.gate` could not
    import vaf there (the wrapper adds the package's path itself)."""
    gate = write_program(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "vaf"), "gate", "authorized-keys"])
    monkeypatch.setenv("PATH", "/nonexistent")
    key = tmp_path / "workers.pub"
    key.write_text(KEY + "\n")
    result = CliRunner().invoke(gate_cli.gate, ["authorized-keys", "--key", str(key),
                                                "--from", "10.1.0.0/16"])
    assert result.exit_code == 0, result.output
    assert f'command="{gate} serve --config /etc/vaf/gate.conf"' in result.output


@pytest.mark.parametrize("beside, on_path, expected", [
    (True, False, "beside"),
    (False, True, "path"),
    (False, False, "python"),
])
def test_default_program(tmp_path, monkeypatch, beside, on_path, expected):
    (tmp_path / "bin").mkdir()
    (tmp_path / "elsewhere").mkdir()
    if beside:
        write_program(tmp_path / "bin")
    if on_path:
        write_program(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "vaf")])
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    found = gate_cli.default_program()
    assert found == {"beside": [str(tmp_path / "bin" / "vaf-gate")],
                     "path": [str(tmp_path / "elsewhere" / "vaf-gate")],
                     "python": [sys.executable, "-m", "vaf.gate"]}[expected]


def test_sweep_of_the_network_driver_form_uses_its_backend(lab, privileged_program,  # noqa: F811
                                                          tmp_path):
    """The VNM conf says nft, the hook's conf ebtables: `vaf-isolation-sweep vaf_isolation`
    (the cron line install.sh writes for that form) removes the nft rules of a vanished tap;
    without the argument the ebtables backend would find nothing to sweep."""
    missing = lab.missing_kernel_support("nft")
    if missing:
        pytest.skip(missing)
    remotes = Remotes.build(tmp_path, lab, "nft", privileged_program)
    (tmp_path / "etc/hooks/ebtables/ebtables.conf").write_text("BACKEND=ebtables\n")
    for machine in (A1, A2, B1):
        result = remotes.execute("vnm/vaf_isolation/post", [f"one-{machine.vmid}", "node1"],
                                 stdin=encode_payload(machine_xml(machine, "vaf_isolation")))
        assert result.returncode == 0, result.stderr
    lab.remove_port(A2.tap)
    swept = remotes.execute("hooks/ebtables/vaf-isolation-sweep", ["vaf_isolation"])
    assert swept.returncode == 0, swept.stderr
    assert f"removed the rules of 1 vanished taps: {A2.tap}" in swept.stderr
    rules = remotes.ruleset()
    assert A2.tap not in rules and A1.tap in rules and B1.tap in rules


@pytest.mark.parametrize("argument, reason", [
    ("../../etc", "VN_MAD must be a driver name"),
    ("nosuchdriver", "no conf"),
])
def test_sweep_refuses_a_bad_driver_name(tmp_path, argument, reason):
    (tmp_path / "vaf").symlink_to(os.path.join(os.path.dirname(__file__), "..", "remotes", "vaf"))
    (tmp_path / "hooks/ebtables").mkdir(parents=True)
    (tmp_path / "hooks/ebtables/vaf-isolation-sweep").symlink_to("../../vaf/dispatch")
    (tmp_path / "etc/hooks/ebtables").mkdir(parents=True)
    (tmp_path / "etc/hooks/ebtables/ebtables.conf").write_text("BACKEND=ebtables\n")

    proc = subprocess.run([str(tmp_path / "hooks/ebtables/vaf-isolation-sweep"), argument],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert reason in proc.stderr.strip().splitlines()[-1]
