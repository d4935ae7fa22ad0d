"""Driver configuration files.

OpenNebula keeps driver settings in shell-style files under ``remotes/etc/`` (for example
``remotes/etc/tm/fs_lvm/fs_lvm.conf`` holds ``ZERO_LVM_ON_CREATE=yes``). vaf reads the same
format as *data*, never by sourcing it: ``KEY=value`` lines, values optionally quoted,
``#`` comments. Every key has a default in the code, so a missing file means the defaults.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from types import MappingProxyType

from vaf.errors import ConfigError

_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=(.*)$")
_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0", ""}

#: settings an admin may also set in oned's environment (``tmrc``), as for stock drivers
ENVIRONMENT_KEYS = ("SSH", "SUDO")


class DriverConfig:
    """A conf file's values and where they came from; immutable.

    A plain class, not a dataclass: vaf-privileged reads its conf on every call, and importing
    dataclasses (which pulls in inspect and ast) was a third of that program's start-up.
    """

    __slots__ = ("values", "source")

    def __init__(self, values: Mapping[str, str] | None = None, source: str = "<defaults>"):
        object.__setattr__(self, "values", MappingProxyType({}) if values is None else values)
        object.__setattr__(self, "source", source)

    def __setattr__(self, name, value):
        raise AttributeError(f"DriverConfig is immutable ({name})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, DriverConfig)
                and (self.values, self.source) == (other.values, other.source))

    __hash__ = None  # type: ignore[assignment]  (values is a mapping)

    def __repr__(self) -> str:
        return f"DriverConfig(values={self.values!r}, source={self.source!r})"

    def _where(self, key: str) -> str:
        return f"{key} in {self.source}"

    def str(self, key: str, default: str) -> str:
        return self.values.get(key, default)

    def int(self, key: str, default: int, minimum: int | None = None,
            maximum: int | None = None) -> int:
        raw = self.values.get(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{self._where(key)} must be an integer, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigError(f"{self._where(key)} must be between {minimum} and {maximum}, "
                              f"got {value}")
        return value

    def float(self, key: str, default: float, minimum: float | None = None) -> float:
        raw = self.values.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{self._where(key)} must be a number, got {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self._where(key)} must be at least {minimum}, got {value}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        raw = self.values.get(key)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{self._where(key)} must be yes or no, got {raw!r}")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.values.get(key, default).strip().lower()
        if value not in choices:
            raise ConfigError(f"{self._where(key)} must be one of {', '.join(choices)}, "
                              f"got {value!r}")
        return value

    def list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list written with commas and/or spaces."""
        raw = self.values.get(key)
        if raw is None:
            return tuple(default)
        return tuple(item for item in re.split(r"[,\s]+", raw) if item)

    def argv(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A command prefix such as ``SSH="ssh -F /etc/one/ssh_config"`` (admin-written)."""
        raw = self.values.get(key)
        if raw is None or not raw.strip():
            return tuple(default)
        try:
            return tuple(shlex.split(raw))
        except ValueError as err:
            raise ConfigError(f"{self._where(key)} is not a valid command: {err}") from None


def parse_config(text: str, source: str = "<string>") -> dict[str, str]:
    """Parse ``KEY=value`` lines; a line that is neither that, a comment nor blank is an error."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            raise ConfigError(f"{source}:{number}: expected KEY=value, got {stripped!r}")
        key, raw = match.groups()
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as err:
            raise ConfigError(f"{source}:{number}: {key}: {err}") from None
        # One shell word is the usual case (KEY="ssh -F /x"); keep several words re-quoted.
        values[key] = words[0] if len(words) == 1 else shlex.join(words)
    return values


def load_config(path: str | os.PathLike | None,
                environ: Mapping[str, str] | None = None) -> DriverConfig:
    """Read ``path`` (missing = defaults) and apply the environment keys oned may export."""
    values: dict[str, str] = {}
    source = "<defaults>"
    if path is not None and os.path.exists(path):
        source = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as handle:
                values = parse_config(handle.read(), source)
        except OSError as err:
            raise ConfigError(f"cannot read {source}: {err.strerror}") from None
    env = os.environ if environ is None else environ
    for key in ENVIRONMENT_KEYS:
        if env.get(key):
            values[key] = env[key]
    return DriverConfig(MappingProxyType(values), source)
