"""Files on a hypervisor that must never be seen half-written (stdlib only).

A retried driver action finds either the old file or the new one, never a mix: everything is
written under a temporary name in the same directory and renamed over the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable


def temporary_name(path: str) -> str:
    return f"{path}.vaf-tmp-{os.getpid()}"


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` in one rename."""
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        remove_path(temporary)
        raise


def fill_atomically(path: str, fill: Callable[[str], None]) -> None:
    """Create an empty file of ours, let ``fill(temporary)`` write it (dd as root keeps our
    ownership this way), and rename it over ``path`` only if ``fill`` returns."""
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb"):
            pass
        fill(temporary)
        os.replace(temporary, path)
    except BaseException:
        remove_path(temporary)
        raise


def replace_symlink(target: str, link: str) -> None:
    """Point ``link`` at ``target`` atomically (a retried prolog finds the old link)."""
    temporary = f"{link}.vaf-{os.getpid()}"
    os.symlink(target, temporary)
    os.replace(temporary, link)


def remove_path(path: str) -> None:
    """Remove a file, a link or a directory tree; a missing path is no error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil  # only a VM-dir delete needs it: keep it off the clone's imports

        shutil.rmtree(path, ignore_errors=True)
