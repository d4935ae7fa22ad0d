"""The layers of the vaf package and the import closure of a module (pure, stdlib only).

Layers, lowest first; a module may import its own layer and the layers below, never above:

0. ``vaf.errors``, ``vaf.config``: errors and conf files, shared by everything
1. ``vaf.host``: operations on one machine (the runner, LVM, dd, cgroups, ebtables, nft)
2. ``vaf.one`` (OpenNebula's protocol, on the front-end *and* on hypervisors: argv, XML,
   logging, dispatch, the host-side call), ``vaf.batch`` (batch adapters), ``vaf.service``
   (daemon logging)
3. ``vaf.drivers``: the drivers oned runs, front-end and host halves
4. services: ``vaf.gate``, ``vaf.elastic``, ``vaf.login``
5. ``vaf.guest``: the worker in a VM (speaks the gate's grammar, ``vaf.gate.grammar``)
6. ``vaf.cli``: the admin command, over everything
7. ``vaf.lab``: stand-ins and the test hypervisor, never imported by product code

What runs on a hypervisor or in a guest (:data:`HOST_ENTRY_POINTS`, :data:`GUEST_ENTRY_POINTS`)
imports only the standard library, and must import on Python 3.9 (Debian 11 hypervisors).
``tests/test_layers.py`` enforces both; ``contextualization/install-guest`` copies
:func:`closure_files` of the guest's entry point.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)

LAYERS: tuple[tuple[str, ...], ...] = (
    ("vaf.errors", "vaf.config", "vaf.layers"),
    ("vaf.host",),
    ("vaf.one", "vaf.batch", "vaf.service"),
    ("vaf.drivers",),
    ("vaf.gate", "vaf.elastic", "vaf.login"),
    ("vaf.guest",),
    ("vaf.cli",),
    ("vaf.lab",),
)

#: modules a hypervisor runs: the two launchers, every module their tables name for
#: host-side files, and the privileged entry point (tests add the registry's host modules)
HOST_ENTRY_POINTS = ("vaf.drivers.registry", "vaf.one.dispatch", "vaf.one.host_command",
                     "vaf.host.privileged")
GUEST_ENTRY_POINTS = ("vaf.guest.__main__", "vaf.gate.grammar")


def layer_of(module: str) -> int:
    for level, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return level
    raise ValueError(f"{module} is in no layer of vaf.layers.LAYERS")


def module_path(module: str) -> str | None:
    """The file of a vaf module (a package's ``__init__.py``), or None if there is none."""
    base = os.path.join(ROOT, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _optional_imports(tree: ast.AST) -> set[int]:
    """Import nodes inside ``try: ... except ImportError``: a fallback exists without them."""
    optional: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {getattr(h.type, "id", None) for h in node.handlers}
        if caught & {"ImportError", "ModuleNotFoundError"}:
            optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return optional


def imports(module: str) -> tuple[set[str], set[str]]:
    """(vaf modules, other top-level names) that ``module`` imports anywhere, lazily too;
    an import with an ``except ImportError`` fallback is not counted as a requirement."""
    path = module_path(module)
    if path is None:
        raise ValueError(f"no such vaf module {module}")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    ours: set[str] = set()
    others: set[str] = set()
    optional = _optional_imports(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "vaf" or name.startswith("vaf."):
                if module_path(name) is not None:
                    ours.add(name)
            elif isinstance(node, ast.Import) or name == node.module:
                others.add(name.split(".")[0])
    return ours, others


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """(every vaf module importing ``roots`` loads, every other top-level name they import)."""
    seen: set[str] = set()
    foreign: set[str] = set()
    todo = [m for root in roots for m in _with_parents(root)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        ours, others = imports(module)
        foreign |= others
        todo.extend(m for name in ours for m in _with_parents(name))
    return seen, foreign


def closure_files(roots: Iterable[str]) -> list[str]:
    """The closure's files, relative to the package directory (``host/runner.py``, ...)."""
    modules, _ = closure(roots)
    return sorted(os.path.relpath(module_path(m), PACKAGE_DIR) for m in modules)


#: remotes/<kind>/ directories whose files oned runs on hypervisors (tm runs on the front-end)
HOST_KINDS = ("vnm", "hooks", "vmm", "im")


def host_roots(registry) -> list[str]:
    """Every module a hypervisor may start from: the entry points and the registry's host
    tables (``registry`` is :mod:`vaf.drivers.registry`, passed in: this layer names none)."""
    roots = set(HOST_ENTRY_POINTS)
    roots |= {m for (kind, _), m in registry.DRIVERS.items() if kind in HOST_KINDS}
    for table in ("EXTENSIONS", "HOST_COMMANDS", "PRIVILEGED_COMMANDS", "PROBES"):
        roots |= set(getattr(registry, table, {}).values())
    return sorted(roots)
