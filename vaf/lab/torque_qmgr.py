#!/usr/bin/env python3
"""Stand-in for TORQUE's ``qmgr`` (no Debian 12 package): node directives only.

Reproduces what a real TORQUE 6 server answers (docs/lab.md, "TORQUE"):

* only the **last** ``-c`` runs (``qmgr -c A -c B`` executes B); without ``-c`` the
  directives come from stdin, one per line;
* attributes are one comma-separated word: ``create node n np=1,properties="a,b"``;
  ``np=2 properties=x`` (a second word) fails with ``Syntax error - cannot locate attribute``
  (exit code 1 here);
* the name must resolve on the server (here: be listed in the ``--hosts`` file), else
  ``qmgr obj=<name> svr=default: Unknown node``, exit 2;
* a duplicate gives ``qmgr obj=<name> svr=default: Node name already exists``, exit 2;
* ``delete node <missing>`` exits 2 (``Unknown node``).

State lives in ``<home>/server_priv/nodes`` (``name np=N prop ...``, TORQUE's format) and
``<home>/server_logs/YYYYMMDD`` gets the server's lines for the same events. Every call is
appended to ``<home>/calls.jsonl`` so tests can assert that nothing ran.

Usage: ``torque_qmgr.py --home DIR --hosts FILE [-c DIRECTIVE]...`` (the two options are the
stand-in's own and come first).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

#: this file: tests and the demo run it as ``[python, QMGR_STANDIN, --home, ...]``
QMGR_STANDIN = os.path.abspath(__file__)

UNKNOWN = "Unknown node"
DUPLICATE = "Node name already exists"
SYNTAX = "qmgr: Syntax error - cannot locate attribute"
CODES = {UNKNOWN: 15064, DUPLICATE: 15068}
_ATTR_RE = re.compile(r'([a-z_]+)=("[^"]*"|[^,"]*)(?:,|$)')


def main(argv: list[str]) -> int:
    home, hosts, rest = _own_options(argv)
    _record(home, rest)
    directives = [value for flag, value in zip(rest, rest[1:], strict=False) if flag == "-c"]
    lines = directives[-1:] if directives else sys.stdin.read().splitlines()
    code = 0
    for line in lines:
        if line.strip():
            code = _directive(home, hosts, line.strip()) or code
    return code


def _own_options(argv: list[str]) -> tuple[str, str, list[str]]:
    home = hosts = ""
    while argv[:1] and argv[0] in ("--home", "--hosts"):
        if argv[0] == "--home":
            home = argv[1]
        else:
            hosts = argv[1]
        argv = argv[2:]
    return home, hosts, argv


def _record(home: str, argv: list[str]) -> None:
    with open(os.path.join(home, "calls.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(argv) + "\n")


def _directive(home: str, hosts: str, line: str) -> int:
    words = line.split(None, 3)
    if len(words) >= 3 and words[:2] == ["create", "node"]:
        return _create(home, hosts, words[2], words[3] if len(words) > 3 else "")
    if len(words) == 3 and words[:2] == ["delete", "node"]:
        return _delete(home, words[2])
    if len(words) == 3 and words[:2] == ["print", "node"]:
        return _print(home, words[2])
    print("qmgr: Syntax error", file=sys.stderr)
    return 1


def _create(home: str, hosts: str, name: str, attributes: str) -> int:
    parsed = _attributes(attributes)
    if parsed is None:
        print(SYNTAX, file=sys.stderr)
        return 1
    if not _resolves(hosts, name):
        _log(home, "01", "Svr", "PBS_Server",
             f"LOG_ERROR::{UNKNOWN}  ({CODES[UNKNOWN]}) in process_host_name_part, "
             f"host {name} not found")
        return _reject(home, name, UNKNOWN)
    if name in _nodes(home):
        return _reject(home, name, DUPLICATE)
    np = parsed.get("np", "1")
    props = parsed.get("properties", "").strip('"')
    entry = " ".join([name, f"np={np}", *[p for p in props.split(",") if p]])
    with open(_nodes_file(home), "a", encoding="utf-8") as handle:
        handle.write(entry + "\n")
    if props:
        _log(home, "04", "node", name, f"attributes set: properties = {props}")
    _log(home, "04", "node", name, f"attributes set: np = {np}")
    return 0


def _attributes(text: str) -> dict[str, str] | None:
    """``np=1,properties="a,b"`` -> dict; None for anything qmgr cannot locate."""
    if not text:
        return {}
    if " " in text.strip():
        return None
    found, position = {}, 0
    for match in _ATTR_RE.finditer(text):
        if match.start() != position:
            return None
        found[match[1]] = match[2]
        position = match.end()
    return found if position == len(text) and found else None


def _delete(home: str, name: str) -> int:
    nodes = _nodes(home)
    if name not in nodes:
        return _reject(home, name, UNKNOWN)
    with open(_nodes_file(home), "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for n, line in nodes.items() if n != name)
    _log(home, "04", "node", name, "deleted at request of root@localhost")
    return 0


def _print(home: str, name: str) -> int:
    line = _nodes(home).get(name)
    if line is None:
        return _reject(home, name, UNKNOWN)
    words = line.split()
    print(f"#\n# Create nodes and set their properties.\n#\n#\n# Create and define node {name}"
          f"\n#\ncreate node {name}\nset node {name} state = free")
    for word in words[1:]:
        if word.startswith("np="):
            print(f"set node {name} np = {word[3:]}")
        else:
            print(f"set node {name} properties += {word}")
    return 0


def _reject(home: str, name: str, text: str) -> int:
    padded = text + " " if text == UNKNOWN else text
    _log(home, "128", "Req", "req_reject",
         f"Reject reply code={CODES[text]}({padded}), aux=0, type=Manager, from root@localhost")
    print(f"qmgr obj={name} svr=default: {text}", file=sys.stderr)
    return 2


def _resolves(hosts: str, name: str) -> bool:
    if not hosts:
        return False
    with open(hosts, encoding="utf-8") as handle:
        return any(name in line.split("#", 1)[0].split()[1:] for line in handle)


def _nodes_file(home: str) -> str:
    return os.path.join(home, "server_priv", "nodes")


def _nodes(home: str) -> dict[str, str]:
    try:
        with open(_nodes_file(home), encoding="utf-8") as handle:
            return {line.split()[0]: line.strip() for line in handle if line.strip()}
    except FileNotFoundError:
        return {}


def _log(home: str, event: str, objtype: str, objname: str, message: str) -> None:
    now = time.time()
    stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    path = os.path.join(home, "server_logs", time.strftime("%Y%m%d", time.localtime(now)))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{stamp};{event};PBS_Server.{os.getpid()};{objtype};{objname};{message}\n")


def make_home(home: str) -> str:
    """Create the stand-in's PBS_HOME layout (for fixtures)."""
    for sub in ("server_priv", "server_logs"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    open(os.path.join(home, "calls.jsonl"), "a").close()
    return home


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
