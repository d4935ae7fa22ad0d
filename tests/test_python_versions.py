"""The host- and guest-side unit tests under the oldest Python vaf supports on hosts and
guests (3.9: Debian 11, RHEL 9) and the newest one on this machine.

Importing is not enough (tests/test_layers.py does that): a call such as ``zip(strict=)``
only fails when it runs. Each interpreter gets a small virtualenv with nothing but pytest
(``.venv-py<X.Y>`` in the repo, made by scripts/setup-dev or here), and imports vaf from the
source tree: these modules need the standard library only.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
OLDEST = os.environ.get("VAF_PYTHON_OLDEST", str(PYENV / "3.9.18" / "bin" / "python3"))
NEWEST = os.environ.get("VAF_PYTHON_NEWEST", str(PYENV / "3.13.0" / "bin" / "python3"))
PYTEST = ("pytest>=7,<9", "click>=8")  # click: the front-end and head modules import it

#: unit tests of what runs on hypervisors and in guests (vaf.one, vaf.host, the host halves,
#: the guest's context parsing), all standard library apart from pytest
HOST_AND_GUEST_TESTS = (
    "test_args.py", "test_config.py", "test_context_parse.py", "test_cpu_host.py",
    "test_dispatch.py", "test_log.py", "test_lvmsnap_units.py", "test_oned_conf.py",
    "test_privileged.py", "test_runner.py", "test_xml.py",
)


def venv_for(python: str) -> Path:
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    venv = REPO / f".venv-py{version}"
    if not (venv / "bin" / "pytest").exists() or not list(venv.glob("lib/*/site-packages/click")):
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        *PYTEST], check=True)
    return venv


@pytest.mark.slow
@pytest.mark.parametrize("python", [OLDEST, NEWEST], ids=["oldest", "newest"])
def test_host_and_guest_unit_tests_pass(python):
    if not os.access(python, os.X_OK):
        pytest.skip(f"no Python at {python} (pyenv install it, or set VAF_PYTHON_OLDEST/NEWEST)")
    venv = venv_for(python)
    files = [str(REPO / "tests" / name) for name in HOST_AND_GUEST_TESTS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q",
                           "-p", "no:cacheprovider", *files], cwd=REPO, capture_output=True,
                          text=True, check=False, env={**env, "PYTHONPATH": str(REPO)},
                          timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed > 300 and "failed" not in summary, summary


#: every product module (the lab aside) imports there too: the front-end and the head node
#: run the python3 of their OS as well (RHEL 9: 3.9)
IMPORT_ALL = """
import importlib, pkgutil, sys
import vaf
failed = []
for info in pkgutil.walk_packages(vaf.__path__, "vaf."):
    if info.name.startswith("vaf.lab") or info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as err:
        if err.name not in ("ldap3", "lxml"):  # optional extras
            failed.append(f"{info.name}: {err!r}")
    except Exception as err:
        failed.append(f"{info.name}: {err!r}")
print(" | ".join(failed) or "all imported")
"""


@pytest.mark.parametrize("python", [OLDEST, NEWEST], ids=["oldest", "newest"])
def test_every_product_module_imports(python):
    if not os.access(python, os.X_OK):
        pytest.skip(f"no Python at {python} (pyenv install it, or set VAF_PYTHON_OLDEST/NEWEST)")
    venv = venv_for(python)
    done = subprocess.run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], cwd="/",
                          capture_output=True, text=True, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)})
    assert done.stdout.strip() == "all imported", done.stdout + done.stderr
