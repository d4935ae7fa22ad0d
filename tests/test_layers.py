"""Layers point down, and what runs on a hypervisor or in a guest needs only the stdlib.

The import closures are computed from the source (``vaf.layers``, ast-based, lazy imports
included), starting from the real entry points: the two launchers in ``remotes/vaf/``, every
module their tables name for files that run on hosts, the privileged entry point, the
guest's ``python3 -m vaf.guest`` and the gate's grammar. Then the same closures are imported
by Python 3.9, the oldest python3 a hypervisor may have.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaf import layers
from vaf.drivers import registry

REPO = Path(__file__).resolve().parent.parent
PYTHON39 = "/root/.pyenv/versions/3.9.18/bin/python3.9"
SCRIPTS = [REPO / "remotes" / "vaf" / "dispatch", REPO / "remotes" / "vaf" / "host-command",
           REPO / "share" / "privileged" / "vaf-privileged"]


def script_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n.startswith("vaf") and layers.module_path(n)}


def host_roots() -> list[str]:
    roots = set(layers.host_roots(registry))
    for script in SCRIPTS:
        roots |= script_imports(script)
    return sorted(roots)


CLOSURES = {"host": layers.closure(host_roots()),
            "guest": layers.closure(layers.GUEST_ENTRY_POINTS)}


@pytest.mark.parametrize("where", sorted(CLOSURES))
def test_what_runs_on_a_host_or_a_guest_imports_only_the_standard_library(where):
    modules, foreign = CLOSURES[where]
    assert foreign - set(sys.stdlib_module_names) == set()
    assert not {m for m in modules if m.startswith("vaf.lab")}
    assert "vaf.drivers.lvmsnap.host" in CLOSURES["host"][0]  # the closure is not empty


def test_the_closures_reach_the_real_work():
    host, _ = CLOSURES["host"]
    assert {"vaf.drivers.lvmsnap.host", "vaf.drivers.lvmsnap.probe", "vaf.drivers.cpu",
            "vaf.drivers.isolation", "vaf.host.privileged", "vaf.host.lvm",
            "vaf.host.confine", "vaf.host.blockcopy"} <= host
    assert "vaf.drivers.lvmsnap.actions" not in host  # the front-end half stays there
    assert {"vaf.guest.worker", "vaf.gate.grammar"} <= CLOSURES["guest"][0]


def all_modules() -> list[str]:
    found = []
    for path in sorted((REPO / "vaf").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.mark.parametrize("module", all_modules())
def test_imports_point_down(module):
    if module == "vaf":
        return
    level = layers.layer_of(module)
    ours, _ = layers.imports(module)
    upward = {name for name in ours if name != "vaf" and layers.layer_of(name) > level}
    assert upward == set(), f"{module} (layer {level}) imports a higher layer"


@pytest.mark.parametrize("module", [m for m in all_modules() if m.startswith("vaf.host")])
def test_the_host_layer_names_no_module_above_it(module):
    """Not even as a string for importlib: vaf.host knows nothing of drivers or of oned."""
    tree = ast.parse(Path(layers.module_path(module)).read_text())
    named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
             and isinstance(node.value, str)
             and re.match(r"vaf\.(one|drivers|gate|guest|elastic|login|cli|lab)\b", node.value)]
    assert named == []


def test_product_code_never_imports_the_lab():
    for module in all_modules():
        if not module.startswith("vaf.lab"):
            assert not {m for m in layers.imports(module)[0] if m.startswith("vaf.lab")}, module


@pytest.mark.skipif(not os.access(PYTHON39, os.X_OK),
                    reason=f"Python 3.9 is not installed at {PYTHON39} (pyenv install 3.9.18)")
@pytest.mark.parametrize("where", sorted(CLOSURES))
def test_the_host_and_guest_closures_import_on_python_3_9(where):
    modules = sorted(CLOSURES[where][0])
    # __main__ modules run when imported: compile them instead
    mains = [layers.module_path(m) for m in modules if m.endswith("__main__")]
    program = (f"import sys, importlib; sys.path.insert(0, {str(REPO)!r})\n"
               f"for name in {[m for m in modules if not m.endswith('__main__')]!r}:\n"
               "    importlib.import_module(name)\n"
               f"for path in {mains!r}:\n"
               "    compile(open(path).read(), path, 'exec')\n"
               "print('imported', len(sys.modules))\n")
    done = subprocess.run([PYTHON39, "-S", "-c", program], capture_output=True, text=True,
                          check=False, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported")


def test_install_guest_copies_exactly_the_guest_closure(tmp_path):
    subprocess.run([sys.executable, str(REPO / "contextualization" / "install-guest"),
                    str(tmp_path)], check=True)
    lib = tmp_path / "usr" / "local" / "lib" / "vaf" / "vaf"
    copied = sorted(str(p.relative_to(lib)) for p in lib.rglob("*.py"))
    assert copied == layers.closure_files(["vaf.guest.__main__"])
    assert "host/runner.py" in copied and "lab" not in {Path(c).parts[0] for c in copied}
