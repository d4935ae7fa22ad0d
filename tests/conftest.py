"""Shared pytest set-up: fixtures live in tests/support/ and are imported here."""
from support.testbed import testbed  # noqa: F401
