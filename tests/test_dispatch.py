"""The launcher: from a file's place in OpenNebula's remotes tree to the action's code."""

import shutil
import subprocess
from pathlib import Path

import pytest

from vaf.drivers import registry
from vaf.errors import ProtocolError
from vaf.one.dispatch import locate, resolve

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"  # what a hypervisor has: no pip-installed vaf, no lxml


@pytest.mark.parametrize("path, kind, driver, action, program", [
    ("/var/lib/one/remotes/tm/lvmsnap/clone", "tm", "lvmsnap", "clone", None),
    ("/var/tmp/one/hooks/ebtables/vaf-isolation", "hooks", "ebtables", "vaf-isolation", None),
    ("/var/tmp/one/vnm/bridge/post.d/vaf-cpu", "vnm", "bridge", "post", "vaf-cpu"),
])
def test_locate(path, kind, driver, action, program):
    inv = locate(path, ["a"], environ={})
    assert (inv.kind, inv.driver, inv.action, inv.program, inv.args) == (
        kind, driver, action, program, ("a",))
    assert inv.remotes == path.split(f"/{kind}/")[0]


def test_config_path_is_where_opennebula_keeps_driver_conf():
    inv = locate("/var/lib/one/remotes/tm/lvmsnap/clone", [], environ={})
    assert inv.config_path == "/var/lib/one/remotes/etc/tm/lvmsnap/lvmsnap.conf"


def test_config_and_runner_come_from_the_conf_file(tmp_path):
    conf = tmp_path / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('SSH="ssh -F /etc/one/vaf_ssh_config"\n')
    inv = locate(str(tmp_path / "tm" / "lvmsnap" / "clone"), [], environ={})
    assert inv.runner.ssh == ("ssh", "-F", "/etc/one/vaf_ssh_config")


def test_resolve_registered_action(monkeypatch):
    monkeypatch.setitem(registry.DRIVERS, ("tm", "lvmsnap"), "vaf.drivers.lvmsnap.actions")
    inv = locate("/r/tm/lvmsnap/monitor", [], environ={})
    assert resolve(inv, registry).__name__ == "monitor"


@pytest.mark.parametrize("path, message", [
    ("/r/tm/unknown/clone", "no vaf driver is registered for remotes/tm/unknown"),
    ("/r/tm/lvmsnap/frobnicate", "tm/lvmsnap has no action 'frobnicate'"),
    ("/r/vnm/bridge/post.d/stranger", "remotes/vnm/bridge/post.d/stranger"),
])
def test_resolve_errors(path, message):
    with pytest.raises(ProtocolError, match=message):
        resolve(locate(path, [], environ={}))


def _synced_copy(tmp_path: Path) -> Path:
    """The remotes tree as `onehost sync` may leave it on a host: symlinks dereferenced."""
    target = tmp_path / "one"
    shutil.copytree(REPO / "remotes", target, symlinks=False)
    return target


def test_launcher_runs_from_a_dereferenced_copy_with_debian_python(tmp_path):
    remotes = _synced_copy(tmp_path)
    assert not (remotes / "tm" / "lvmsnap" / "monitor").is_symlink()
    fake = remotes / "hooks" / "unknown" / "act"
    fake.parent.mkdir(parents=True)
    shutil.copy(remotes / "vaf" / "dispatch", fake)
    proc = subprocess.run([DEBIAN_PYTHON, str(fake), "x"], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, check=False)
    # the package was found inside the copied tree (else: ModuleNotFoundError traceback)
    assert proc.returncode == 2
    assert proc.stderr == "no vaf driver is registered for remotes/hooks/unknown\n"


def test_launcher_reports_bad_arguments_in_oneds_format(tmp_path):
    proc = subprocess.run([str(REPO / "remotes" / "tm" / "lvmsnap" / "monitor")],
                          capture_output=True, text=True, input="", check=False)
    assert proc.returncode == 2
    assert proc.stderr == "monitor expects 1 argument (DSID), got 0\n"


def test_a_host_probe_is_found_one_level_deeper_than_actions(tmp_path):
    script = tmp_path / "remotes" / "im" / "kvm-probes.d" / "host" / "system" / "vaf-lvmsnap"
    inv = locate(str(script), [], environ={})
    assert (inv.remotes, inv.kind, inv.action) == (str(tmp_path / "remotes"), "im",
                                                   "vaf-lvmsnap")
    from vaf.drivers.lvmsnap import probe

    assert resolve(inv, registry) is probe.PROBE


def test_the_lvmsnap_probe_never_fails_the_hosts_monitoring(tmp_path):
    remotes = tmp_path / "remotes"
    shutil.copytree(REPO / "remotes", remotes, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "lab"))
    conf = remotes / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
    conf.write_text("PRIVILEGED=/bin/false\n")  # the privileged half refuses
    probe = remotes / "im" / "kvm-probes.d" / "host" / "system" / "vaf-lvmsnap"
    done = subprocess.run([str(probe)], input=b"<HOST_MONITORING/>", capture_output=True,
                          check=False)
    assert done.returncode == 0 and done.stdout == b""
    assert done.stderr.decode().startswith("vaf-lvmsnap probe: ")
