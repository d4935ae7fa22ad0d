"""install.sh, staged below a directory (--root): what each role puts where, that a second
run changes nothing, that --dry-run changes nothing, and that --uninstall leaves only data."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from vaf import layers
from vaf.drivers import registry

REPO = Path(__file__).resolve().parent.parent
REMOTES = "/var/lib/one/remotes"
ROLES = ("frontend", "host", "head")


def run(root: Path, *args: str, check: bool = True, env: dict | None = None,
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(REPO / "install.sh"), *args, "--root", str(root)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def install(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(root, "frontend", *extra)


def tree(root: Path) -> dict[str, tuple]:
    """Every path below root with its type, mode and content (or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("l", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("d", oct(path.stat().st_mode & 0o7777))
        else:
            found[rel] = ("f", oct(path.stat().st_mode & 0o7777),
                          hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def installed_kinds() -> list[str]:
    """The KINDS line of install.sh: the remotes/ directories it copies."""
    line = next(line for line in (REPO / "install.sh").read_text().splitlines()
                if line.startswith("KINDS="))
    return line.partition("=")[2].strip('"').split()


def repo_executables() -> list[str]:
    """Every file oned may run that the repo ships (symlinks to the launcher)."""
    found = []
    for kind in installed_kinds():
        base = REPO / "remotes" / kind
        found += [str(p.relative_to(REPO / "remotes")) for p in base.rglob("*")
                  if p.is_symlink() or p.is_file()]
    return sorted(found)


def test_install_copies_exactly_the_driver_directories_the_repo_has():
    """Every kind install.sh copies exists, and every directory of files oned runs is copied
    (vaf, etc are the package and the confs, installed separately)."""
    shipped = sorted(p.name for p in (REPO / "remotes").iterdir()
                     if p.is_dir() and p.name not in ("vaf", "etc"))
    assert sorted(installed_kinds()) == shipped
    assert "vmm" not in shipped  # the KVM driver stays stock: docs/cpu-priority.md
    assert "no `remotes/vmm/`" in (REPO / "README.md").read_text()


def test_every_executable_is_installed_and_resolves(tmp_path):
    install(tmp_path)
    dest = tmp_path / REMOTES.lstrip("/")
    executables = repo_executables()
    assert "tm/lvmsnap/monitor" in executables
    for rel in executables:
        installed = dest / rel
        assert installed.exists(), f"{rel} missing or dangling after install"
        assert os.access(installed, os.X_OK), f"{rel} not executable"
    assert (dest / "vaf" / "lib" / "vaf" / "__init__.py").is_file()
    assert not (dest / "vaf" / "lib" / "vaf").is_symlink()
    assert not (dest / "vaf" / "lib" / "vaf" / "lab").exists(), "the lab never goes to hosts"
    assert not list((dest / "vaf" / "lib").glob("vaf.*")), "no leftover staging copies"


def test_installed_launcher_answers_in_oned_format(tmp_path):
    install(tmp_path)
    monitor = tmp_path / REMOTES.lstrip("/") / "tm" / "lvmsnap" / "monitor"
    proc = subprocess.run([str(monitor), "not-a-number"], capture_output=True, text=True,
                          input="", check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "datastore id must be a non-negative integer, got 'not-a-number'\n"


def test_reinstall_keeps_admin_configuration(tmp_path):
    install(tmp_path)
    dest = tmp_path / REMOTES.lstrip("/")
    confs = sorted((dest / "etc").rglob("*.conf"))
    assert confs, "the drivers ship their configuration files"
    edited = confs[0]
    edited.write_text("# edited by the admin\n")
    second = install(tmp_path)
    assert edited.read_text() == "# edited by the admin\n"
    assert Path(f"{edited}.dist").exists()
    assert f"kept your {edited}" in second.stdout


def test_admin_commands_use_the_root_owned_package(tmp_path):
    """Not the remotes tree: oneadmin can write there, and root runs `vaf`."""
    install(tmp_path)
    for name in ("vaf", "vaf-gate"):
        wrapper = (tmp_path / "usr" / "local" / "bin" / name).read_text()
        assert 'sys.path.insert(0, "/usr/local/lib/vaf/lib")' in wrapper
    assert (tmp_path / "usr/local/lib/vaf/lib/vaf/cli.py").is_file()
    assert not (tmp_path / "usr/local/lib/vaf/lib/vaf/lab").exists()


def test_relative_paths_refused(tmp_path):
    proc = run(tmp_path, "frontend", "--remotes", "relative", check=False)
    assert proc.returncode == 1
    assert "--remotes must be an absolute path" in proc.stderr


@pytest.mark.parametrize("args, reason", [
    ((), "name a role: frontend host head"),
    (("frontend", "head"), "one role at a time"),
    (("host", "--isolation", "both"), "--isolation must be vnm or hook"),
    (("host", "--purge"), "--purge only goes with --uninstall"),
    (("host", "--frobnicate"), "unknown argument --frobnicate"),
])
def test_bad_arguments_get_one_reason(tmp_path, args, reason):
    proc = run(tmp_path, *args, check=False)
    assert proc.returncode == 1 and reason in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing half-done"


@pytest.mark.parametrize("release, supported", [
    ('ID=debian\nVERSION_ID="11"\n', True),
    ('ID=debian\nVERSION_ID="12"\n', True),
    ('ID=ubuntu\nVERSION_ID="22.04"\n', True),
    ('ID=ubuntu\nVERSION_ID="24.04"\n', True),
    ('ID="almalinux"\nVERSION_ID="9.4"\n', True),
    ('ID="rhel"\nVERSION_ID="9.2"\n', True),
    ('ID=debian\nVERSION_ID="10"\nPRETTY_NAME="Debian GNU/Linux 10 (buster)"\n', False),
    ('ID=ubuntu\nVERSION_ID="20.04"\n', False),
    ('ID="centos"\nVERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n', False),
    ('ID="almalinux"\nVERSION_ID="8.9"\n', False),
])
def test_only_supported_systems(tmp_path, release, supported):
    os_release = tmp_path / "os-release"
    os_release.write_text(release)
    root = tmp_path / "root"
    root.mkdir()
    proc = run(root, "host", check=False, env={"VAF_OS_RELEASE": str(os_release)})
    if supported:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1
        assert "unsupported system" in proc.stderr and "Debian 11 and 12" in proc.stderr
        assert not any(root.iterdir())


def test_help_names_every_option_the_script_takes():
    text = (REPO / "install.sh").read_text()
    loop = text[text.index("while [ $# -gt 0 ]; do"):]
    loop = loop[:loop.index("\ndone\n")]  # the argument loop
    parsed = set(re.findall(r"(--[a-z][a-z-]+)[)|]", loop))
    helped = subprocess.run(["bash", str(REPO / "install.sh"), "--help"], capture_output=True,
                            text=True, check=True).stdout
    assert parsed >= {"--uninstall", "--dry-run", "--apply", "--purge", "--root"}
    for option in parsed:
        assert re.search(rf"^\s+(-h, )?{option}\b", helped, re.M), f"{option} not in --help"
    assert helped.rstrip().endswith("it changes only what differs, and says what it changed.")


@pytest.mark.parametrize("role", ROLES)
def test_second_run_changes_nothing(tmp_path, role):
    first = run(tmp_path, role)
    assert re.search(rf"install.sh {role}: \d+ changes made", first.stdout)
    before = tree(tmp_path)
    second = run(tmp_path, role)
    assert f"install.sh {role}: nothing to change" in second.stdout, second.stdout
    assert tree(tmp_path) == before


@pytest.mark.parametrize("role", ROLES)
def test_dry_run_prints_every_change_and_makes_none(tmp_path, role):
    dry = run(tmp_path, role, "--dry-run")
    assert not any(tmp_path.iterdir())
    real = run(tmp_path, role)
    would = sorted(line.removeprefix("would ") for line in dry.stdout.splitlines()
                   if line.startswith("would "))
    done = sorted(line for line in real.stdout.splitlines() if line.split(" ")[0] in
                  {"install", "create", "link", "chmod", "chown", "remove"})
    assert would == done and would
    installed = tree(tmp_path)
    dry_uninstall = run(tmp_path, role, "--uninstall", "--dry-run")
    assert "would remove" in dry_uninstall.stdout
    assert tree(tmp_path) == installed


def test_host_role_installs_the_privileged_entry_point_as_it_expects(tmp_path):
    run(tmp_path, "host")
    sudoers = tmp_path / "etc/sudoers.d/vaf"
    assert sudoers.read_bytes() == (REPO / "share/sudoers/vaf").read_bytes()
    assert sudoers.stat().st_mode & 0o777 == 0o440
    privileged = tmp_path / "usr/lib/vaf/vaf-privileged"
    assert privileged.read_bytes() == (REPO / "share/privileged/vaf-privileged").read_bytes()
    assert os.access(privileged, os.X_OK)
    assert (tmp_path / "usr/lib/vaf/privileged.conf").is_file()
    copied = sorted(str(p.relative_to(tmp_path / "usr/lib/vaf/lib/vaf"))
                    for p in (tmp_path / "usr/lib/vaf/lib/vaf").rglob("*.py"))
    assert copied == layers.closure_files(layers.host_roots(registry))
    assert "drivers/lvmsnap/host.py" in copied  # what the privileged lvmsnap verbs run
    proc = subprocess.run([str(privileged), "no-such-verb"], input="{}", capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr  # the copy imports
    cron = (tmp_path / "etc/cron.d/vaf-isolation-sweep").read_text()
    assert "oneadmin /var/tmp/one/hooks/ebtables/vaf-isolation-sweep vaf_isolation\n" in cron
    hook_form = tmp_path / "hookform"
    hook_form.mkdir()
    run(hook_form, "host", "--isolation", "hook")
    cron = (hook_form / "etc/cron.d/vaf-isolation-sweep").read_text()
    assert cron.endswith("oneadmin /var/tmp/one/hooks/ebtables/vaf-isolation-sweep\n")
    tmpfiles = (tmp_path / "etc/tmpfiles.d/vaf.conf").read_text()
    assert "d /var/lock/vaf-lvmsnap 0755 oneadmin oneadmin -" in tmpfiles


def test_uninstall_leaves_exactly_the_data_it_reports(tmp_path):
    stock_post_d = tmp_path / REMOTES.lstrip("/") / "vnm/bridge/post.d"
    stock_post_d.mkdir(parents=True)
    (stock_post_d / "stock-program").write_text("#!/bin/sh\n")  # OpenNebula's, not vaf's
    before = tree(tmp_path)
    for role in ROLES:
        run(tmp_path, role)
    assert (stock_post_d / "vaf-cpu-priority").is_symlink()
    edited = tmp_path / REMOTES.lstrip("/") / "etc/tm/lvmsnap/lvmsnap.conf"
    edited.write_text(edited.read_text() + "SNAPSHOT_MODE=classic\n")
    kept = []
    for role in ("head", "frontend", "host"):
        out = run(tmp_path, role, "--uninstall").stdout
        kept += [line for line in out.splitlines() if line.startswith("kept: ")]
    assert f"kept: {edited} (edited by you; --purge removes it)" in kept
    assert f"kept: {tmp_path}/run/vaf-cpu (state of running VMs; --purge removes it)" in kept
    left = {k for k in tree(tmp_path) if k not in before}
    reported = [Path(line.split()[1]) for line in kept if line.startswith(f"kept: {tmp_path}")]
    assert edited in reported and tmp_path / "run/vaf-cpu" in reported
    explained = {str(p.relative_to(tmp_path)) for path in reported
                 for p in [path, *path.parents] if tmp_path in p.parents}
    assert left == explained - set(before)  # exactly what it said it kept, and their folders
    assert tree(tmp_path)["var/lib/one/remotes/vnm/bridge/post.d/stock-program"]
    assert not (stock_post_d / "vaf-cpu-priority").exists()
    # --purge then takes the data too
    for role in ROLES:
        run(tmp_path, role)
    for role in ROLES:
        run(tmp_path, role, "--uninstall", "--purge")
    assert tree(tmp_path) == before


STOCK = '''TM_MAD = [ EXECUTABLE = "one_tm", ARGUMENTS = "-t 15 -d dummy,lvm,ssh,netapp" ]
DATASTORE_MAD = [ EXECUTABLE = "one_datastore",
  ARGUMENTS = "-t 15 -d dummy,fs,netapp -s dummy,shared,ssh,netapp" ]
'''


def test_oned_conf_printed_as_additions_or_applied_with_a_backup(tmp_path):
    conf = tmp_path / "etc/one/oned.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(STOCK)
    shown = install(tmp_path).stdout
    assert conf.read_text() == STOCK
    assert 'add lvmsnap in the -d list: ARGUMENTS = "-t 15 -d dummy,lvm,ssh,netapp,lvmsnap"' \
        in shown
    assert "install.sh frontend --apply" in shown and "onehost sync -f" in shown
    applied = install(tmp_path, "--apply")
    assert "written (backup:" in applied.stdout
    assert '-s dummy,shared,ssh,netapp,lvmsnap"' in conf.read_text()
    assert [p.read_text() for p in conf.parent.glob("oned.conf.vaf-*")] == [STOCK]
    assert "nothing to change" in install(tmp_path, "--apply").stdout
    run(tmp_path, "frontend", "--uninstall", "--apply")
    assert conf.read_text() == STOCK


def test_an_unreadable_oned_conf_is_never_written(tmp_path):
    conf = tmp_path / "etc/one/oned.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(STOCK + 'BROKEN = [ NAME = "x"\n')
    proc = run(tmp_path, "frontend", "--apply", check=False)
    assert proc.returncode == 1 and "nothing written" in proc.stdout + proc.stderr
    assert conf.read_text() == STOCK + 'BROKEN = [ NAME = "x"\n'
    assert not list(conf.parent.glob("oned.conf.vaf-*"))


def test_one_location_is_honoured(tmp_path):
    conf = tmp_path / "opt/one/etc/oned.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(STOCK)
    run(tmp_path, "frontend", "--apply", env={"ONE_LOCATION": "/opt/one"})
    assert (tmp_path / "opt/one/var/remotes/tm/lvmsnap/clone").is_symlink()
    assert not (tmp_path / REMOTES.lstrip("/")).exists()
    assert "lvmsnap" in conf.read_text()
