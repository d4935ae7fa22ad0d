"""The one request a worker's key may make: ``join <hostname> <cpus> [<properties>]``.

Shared by the gate (server) and the guest (which builds its request with
:func:`JoinRequest.command`), so both sides always agree. Stdlib only: the guest has only
``python3``.

The checks follow gitolite-shell: refuse control characters, non-ASCII and over-long input
*before* matching, then match the whole string against one anchored pattern, then
re-validate each captured field. Anything the gate accepts re-serialises to exactly the
string it received, so there is no second interpretation of the request anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vaf.errors import VafError

#: the longest request accepted; a 253-char name plus 16 properties fits comfortably
MAX_COMMAND = 1024
MAX_HOSTNAME = 253
MAX_CPUS = 4096
MAX_PROPERTIES = 16

# RFC 1123 labels, lower case only (one spelling per name), and the first label must start
# with a letter: that rules out IP literals and leading dashes, which qmgr/scontrol would
# read as something else.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FIRST_LABEL = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME_PATTERN = rf"{_FIRST_LABEL}(?:\.{_LABEL})*"
CPUS_PATTERN = r"[1-9][0-9]{0,3}"
# Properties/features: no quotes, '=', '+', spaces or brackets, which qmgr and Slurm's
# feature expressions would interpret; the comma is the list separator for both.
PROPERTY_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
PROPERTIES_PATTERN = rf"{PROPERTY_PATTERN}(?:,{PROPERTY_PATTERN}){{0,{MAX_PROPERTIES - 1}}}"

JOIN_RE = re.compile(
    rf"join (?P<hostname>{HOSTNAME_PATTERN}) (?P<cpus>{CPUS_PATTERN})"
    rf"(?: (?P<properties>{PROPERTIES_PATTERN}))?", re.ASCII)
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN, re.ASCII)
_PROPERTY_RE = re.compile(PROPERTY_PATTERN, re.ASCII)
#: names that every machine resolves to itself: accepting them would register the head
RESERVED_NAMES = frozenset({"localhost", "localhost.localdomain"})


class Refused(VafError):
    """The command is not a well-formed join request (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class JoinRequest:
    hostname: str
    cpus: int
    properties: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_hostname(self.hostname)
        validate_cpus(self.cpus)
        validate_properties(self.properties)

    def command(self) -> str:
        """The exact ``SSH_ORIGINAL_COMMAND`` the guest sends for this request."""
        words = ["join", self.hostname, str(self.cpus)]
        if self.properties:
            words.append(",".join(self.properties))
        return " ".join(words)


def validate_hostname(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_HOSTNAME:
        raise Refused(f"host name longer than {MAX_HOSTNAME} characters")
    if not _HOSTNAME_RE.fullmatch(name):
        raise Refused(f"not an RFC 1123 host name in lower case: {name!r}")
    if name in RESERVED_NAMES or name.startswith("localhost."):
        raise Refused(f"reserved host name: {name}")
    return name


def validate_cpus(cpus: int) -> int:
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= MAX_CPUS:
        raise Refused(f"cpus must be an integer from 1 to {MAX_CPUS}, got {cpus!r}")
    return cpus


def validate_properties(properties: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(properties, tuple) or len(properties) > MAX_PROPERTIES:
        raise Refused(f"at most {MAX_PROPERTIES} properties")
    for prop in properties:
        if not isinstance(prop, str) or not _PROPERTY_RE.fullmatch(prop):
            raise Refused(f"bad property name: {prop!r}")
    return properties


def check_characters(command: str) -> None:
    """Refuse what must never reach a pattern: wrong type, length, control chars, non-ASCII."""
    if not isinstance(command, str):
        raise Refused("the command is not text")
    if not command:
        raise Refused("empty command: expected 'join <hostname> <cpus> [<properties>]'")
    if len(command) > MAX_COMMAND:
        raise Refused(f"command longer than {MAX_COMMAND} characters")
    for char in command:
        if char in "\r\n":
            raise Refused("the command contains a line break")
        if char == "\0":
            raise Refused("the command contains a NUL byte")
        if not " " <= char <= "~":
            # Non-ASCII covers look-alikes (Cyrillic 'а', full-width digits) and the
            # surrogate escapes Python uses for bytes that are not UTF-8.
            kind = "a control character" if ord(char) < 0x80 else "a non-ASCII character"
            raise Refused(f"the command contains {kind} (U+{ord(char):04X})")


def parse(command: str) -> JoinRequest:
    """Parse ``SSH_ORIGINAL_COMMAND``; raise :class:`Refused` for anything but a join."""
    check_characters(command)
    match = JOIN_RE.fullmatch(command)
    if not match:
        raise Refused("expected 'join <hostname> <cpus> [<properties>]' "
                      f"(lower-case host name, cpus 1-{MAX_CPUS}, properties [a-z][a-z0-9_-]*)")
    props = match["properties"]
    request = JoinRequest(hostname=match["hostname"], cpus=int(match["cpus"]),
                          properties=tuple(props.split(",")) if props else ())
    # Belt and braces: the request must describe exactly what was received.
    if request.command() != command:
        raise Refused("the command is not in canonical form")
    return request
