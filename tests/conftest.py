"""Shared pytest set-up: the session's test hypervisor (the lab's, vaf/lab/testbed.py)."""
import os

import pytest

from vaf.lab.testbed import Testbed


@pytest.fixture(scope="session")
def testbed():
    """The test hypervisor, booted once per session; TESTBED=0 skips the tests using it."""
    if os.environ.get("TESTBED") == "0":
        pytest.skip("TESTBED=0: test hypervisor disabled")
    tb = Testbed()
    tb.build()
    with tb:
        yield tb
