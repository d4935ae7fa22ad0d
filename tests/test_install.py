"""install.sh: the admin's one command puts every executable where oned looks for it."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REMOTES = "/var/lib/one/remotes"


def install(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "install.sh"), "--root", str(root), "--no-deps",
                           *extra], capture_output=True, text=True, check=True)


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


def test_admin_command_points_at_the_remotes_tree(tmp_path):
    install(tmp_path)
    wrapper = (tmp_path / "usr" / "local" / "bin" / "vaf").read_text()
    assert f'sys.path.insert(0, "{REMOTES}/vaf/lib")' in wrapper


def test_relative_remotes_refused(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "install.sh"), "--remotes", "relative", "--root",
                           str(tmp_path), "--no-deps"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1
    assert "--remotes must be an absolute path" in proc.stderr
