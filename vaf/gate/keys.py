"""The ``authorized_keys`` line for the workers' join key.

``restrict`` switches off forwarding, the pty and ``~/.ssh/rc`` (and whatever future
OpenSSH restricts too); ``from=`` limits the key to the workers' networks; ``command=``
forces the gate whatever the client asks for. sshd runs the forced command through the
account's login shell, so the command is written with :func:`shlex.join` and nothing in it
may need more than single quotes. The client's words never appear here: the gate reads them
from ``SSH_ORIGINAL_COMMAND``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import shlex
from collections.abc import Sequence

from vaf.errors import ConfigError

KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
             "sk-ecdsa-sha2-nistp256@openssh.com")
# sshd's from= takes address/CIDR or host-name patterns with * and ?, negated with !.
_HOST_PATTERN_RE = re.compile(r"!?[A-Za-z0-9*?](?:[A-Za-z0-9.*?-]*[A-Za-z0-9*?])?", re.ASCII)
_COMMENT_SAFE_RE = re.compile(r"[^A-Za-z0-9@._+-]", re.ASCII)


def parse_public_key(text: str) -> tuple[str, str, str]:
    """``(type, base64 blob, comment)`` of one OpenSSH public key line."""
    words = text.strip().split()
    if len(words) < 2 or words[0] not in KEY_TYPES:
        raise ConfigError("not an OpenSSH public key (expected '<type> <base64> [comment]')")
    kind, blob = words[0], words[1]
    try:
        decoded = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the public key's base64 part is invalid") from None
    # The blob starts with its own type name (RFC 4253 §6.6): catch a pasted mismatch.
    if decoded[4:4 + len(kind)] != kind.encode():
        raise ConfigError(f"the key blob is not of type {kind}")
    comment = _COMMENT_SAFE_RE.sub("_", " ".join(words[2:]))
    return kind, blob, comment


def check_from_pattern(pattern: str) -> str:
    try:
        ipaddress.ip_network(pattern.lstrip("!"), strict=False)
        return pattern
    except ValueError:
        pass
    if not _HOST_PATTERN_RE.fullmatch(pattern):
        raise ConfigError(f"not an address, network or host pattern for from=: {pattern!r}")
    return pattern


def forced_command(program: Sequence[str], config_path: str) -> str:
    command = shlex.join([*program, "serve", "--config", config_path])
    if any(c in command for c in '"\\\n\r\0'):
        raise ConfigError(f"the gate command cannot be written in authorized_keys: {command!r}")
    return command


def authorized_keys_line(public_key: str, from_patterns: Sequence[str],
                         program: Sequence[str], config_path: str) -> str:
    """The exact line to append to the restricted account's ``authorized_keys``."""
    if not from_patterns:
        raise ConfigError("give at least one from= pattern (the workers' network)")
    kind, blob, comment = parse_public_key(public_key)
    patterns = ",".join(check_from_pattern(p) for p in from_patterns)
    options = f'restrict,from="{patterns}",command="{forced_command(program, config_path)}"'
    return " ".join(part for part in (options, kind, blob, comment) if part)
