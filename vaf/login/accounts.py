"""Local accounts made on the fly, through the runner's ``useradd`` (never for an unmapped DN).

The password field is set to ``*``: no password can match it, yet the account is not
*locked* (``!``), which sshd without PAM would refuse even for key and certificate logins.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from vaf.host.runner import Runner


@dataclass(frozen=True)
class AccountPolicy:
    create: bool
    skeleton: str
    shell: str
    home_base: str
    useradd: tuple[str, ...] = ("useradd",)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    created: bool = False


def useradd_argv(policy: AccountPolicy, name: str) -> list[str]:
    return [*policy.useradd, "--create-home", "--skel", policy.skeleton,
            "--shell", policy.shell, "--base-dir", policy.home_base, "--user-group",
            "--password", "*", "--comment", "vaf login", "--", name]


def lookup(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def ensure_account(policy: AccountPolicy, name: str, runner: Runner) -> Account:
    """The account ``name``, created with its home when missing and creation is allowed."""
    existing = lookup(name)
    if existing is not None:
        return existing
    if not policy.create:
        raise LookupError(f"the account {name} does not exist and creating accounts is off")
    runner.run(useradd_argv(policy, name), timeout=60)
    made = lookup(name)
    if made is None:
        raise LookupError(f"useradd reported success but {name} does not exist")
    return Account(made.name, made.uid, made.gid, made.home, created=True)
