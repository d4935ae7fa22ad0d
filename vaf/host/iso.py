"""ISO 9660 images (the context CD): argv builders for genisoimage or xorriso (stdlib only).

Guests find the context disk by its volume label, so the label is part of the contract.
Debian ships both tools; OpenNebula used genisoimage up to 7.0 and xorriso since.
"""

from __future__ import annotations

import shutil

ISO_TOOLS = ("genisoimage", "xorriso")
CONTEXT_LABEL = "CONTEXT"


def iso_argv(tool: str, output: str, directory: str, label: str = CONTEXT_LABEL) -> list[str]:
    """Joliet + Rock Ridge, like OpenNebula's ``common/context``."""
    flags = ["-o", output, "-V", label, "-J", "-R", directory]
    if tool == "genisoimage":
        return ["genisoimage", "-quiet", *flags]
    if tool == "xorriso":
        return ["xorriso", "-as", "mkisofs", "-quiet", *flags]
    raise ValueError(f"unknown ISO tool {tool!r} (known: {', '.join(ISO_TOOLS)})")


def find_iso_tool(preferred: str = "") -> str | None:
    """The preferred tool if installed, else the first of :data:`ISO_TOOLS` found."""
    for tool in ((preferred,) if preferred else ()) + ISO_TOOLS:
        if shutil.which(tool):
            return tool
    return None
