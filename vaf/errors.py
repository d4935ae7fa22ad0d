"""Typed errors shared by every layer.

Each error knows the one human line that OpenNebula should show as the failure reason
(``reason``) and, optionally, details that are worth logging as tagged lines (``details``).
"""

from __future__ import annotations


class VafError(Exception):
    """Base class: a failure with a one-line reason for the VM log."""

    #: exit code used by :func:`vaf.one.log.run_main` for this class of error
    exit_code = 1

    @property
    def reason(self) -> str:
        return one_line(str(self))

    def details(self) -> list[str]:
        """Extra lines worth logging (tagged ERROR) before the reason line."""
        return []


class ProtocolError(VafError):
    """The caller broke the driver contract: bad argv, bad base64, malformed XML."""

    exit_code = 2


class ConfigError(VafError):
    """A driver configuration file is unreadable or holds an invalid value."""

    exit_code = 2


class DriverError(VafError):
    """A driver decided to fail (full volume group, missing device, ...)."""


def one_line(text: str, limit: int = 400) -> str:
    """Fold ``text`` into a single line: oned concatenates untagged lines without a separator."""
    folded = " ".join(text.split())
    if len(folded) > limit:
        folded = folded[: limit - 3] + "..."
    return folded
