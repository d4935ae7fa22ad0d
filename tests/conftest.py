"""Shared pytest set-up: fixtures live in tests/support/ and are imported here."""
