"""Shared pytest set-up: the session's test hypervisor (the lab's, vaf/lab/testbed.py), the
oned runtime a test runs under (vaf/lab/oned.py), and how tests are shared out between
parallel workers (``scripts/test`` runs pytest-xdist with ``--dist loadgroup``)."""
from __future__ import annotations

import os

import pytest

from vaf.lab import oned
from vaf.lab.host_install import install_here
from vaf.lab.oned_logs import OnedLogs
from vaf.lab.testbed import Testbed


def pytest_collection_modifyitems(items):
    """Mark the groups we want: every test on the session's test hypervisor in one, the tests
    of a module with module- or class-scoped fixtures in one, the rest free.

    Known gap: pytest-xdist 3.8 applies these marks by renaming each item's node id, which
    pytest 9 no longer honours, so today the tests are shared out one by one (`--dist load`
    in effect): each worker that runs a test-hypervisor test boots its own guest, and module
    fixtures start once per worker. The suite was verified green that way."""
    for item in items:
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def _xdist_group(item) -> str | None:
    if "testbed" in item.fixturenames:
        return "testbed"
    definitions = item._fixtureinfo.name2fixturedefs.values()
    if any(found[-1].scope in ("package", "module", "class") for found in definitions):
        return item.module.__name__
    return None


@pytest.fixture(scope="session")
def testbed():
    """The test hypervisor, booted once per session; TESTBED=0 skips the tests using it."""
    if os.environ.get("TESTBED") == "0":
        pytest.skip("TESTBED=0: test hypervisor disabled")
    tb = Testbed()
    tb.build()
    with tb:
        yield tb


@pytest.fixture(params=oned.RUNTIMES)
def oned_runtime(request):
    """Run the whole test under each runtime ("7.0", "6.10"; MAD locale: LANG unset).

    Write the release into every remotes tree the test's drivers run from with
    ``oned.write_version_file(remotes)``, as OpenNebula (and onehost sync) would.
    """
    with oned.runtime(request.param):
        yield request.param


@pytest.fixture
def oned_logs(tmp_path):
    """oned's log directory and the VMs' ERROR attributes (vaf/lab/oned_logs.py)."""
    logs = OnedLogs(tmp_path / "oned-log")
    yield logs
    logs.close()


@pytest.fixture(scope="session")
def privileged_program(tmp_path_factory):
    """vaf-privileged, its conf (the default programs) and its package copy, laid out on this
    machine as ``install.sh host`` lays them out; its path. Drivers under test that run as
    root reach root's commands through it, as on a host (the runner just needs no sudo)."""
    return install_here(tmp_path_factory.mktemp("host-install"))
