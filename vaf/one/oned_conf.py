"""oned.conf: read it, and add (or take back) exactly what vaf's drivers need.

``install.sh frontend`` prints the changes as additions to the admin's own lines, or with
``--apply`` writes them (a timestamped backup first, the result parsed before it replaces the
file). The admin's lines are never rewritten whole: the stock driver lists differ between
OpenNebula versions (``netapp`` in 7.0, ``vcenter`` in 6.10) and between sites, so vaf adds its
name to the list that is there, and appends its own entries in one marked section.

The syntax is oned's template syntax: ``NAME = value`` where value is a double-quoted string,
a bare word, or a vector ``[ KEY = value, ... ]``; ``#`` starts a comment; names repeat
(``TM_MAD_CONF`` once per driver).

``python3 -m vaf.one.oned_conf add|remove [--write] [--fragments DIR] ONED_CONF``
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vaf.errors import ConfigError

#: (entry, its attribute, the option inside it, vaf's driver name): lists vaf joins
DRIVER_LISTS = (
    ("TM_MAD", "ARGUMENTS", "-d", "lvmsnap"),
    ("DATASTORE_MAD", "ARGUMENTS", "-s", "lvmsnap"),
)

BEGIN = ("# >>> vaf: added by install.sh frontend --apply "
         "(install.sh frontend --uninstall --apply removes it)")
END = "# <<< vaf"

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<punct>[=\[\],])
  | (?P<word>[^\s=\[\],"\#]+)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class Value:
    """A string or a bare word, and where its text sits in the file (quotes included)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Entry:
    """One top-level ``NAME = ...``; ``value`` for a plain one, ``attributes`` for a vector."""

    name: str
    value: Value | None
    attributes: tuple[tuple[str, Value], ...]
    start: int
    end: int

    def get(self, key: str) -> Value | None:
        for name, value in self.attributes:
            if name.upper() == key.upper():
                return value
        return None

    def identity(self) -> tuple[str, str]:
        """What makes two entries the same for vaf: the name and its value, or a vector's NAME."""
        if self.value is not None:
            return self.name.upper(), self.value.text
        named = self.get("NAME")
        return self.name.upper(), named.text if named else ""


def _tokens(text: str):
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfigError(f"oned.conf line {_line(text, pos)}: cannot read "
                              f"{text[pos:pos + 20]!r} (an unterminated string?)")
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            yield kind, match.group(), match.start(), match.end()
        pos = match.end()


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _unquote(token: str) -> str:
    if token.startswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = list(_tokens(text))
        self.i = 0

    def _next(self, what: str):
        if self.i >= len(self.tokens):
            raise ConfigError(f"oned.conf ends where {what} was expected")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def _fail(self, token, what: str) -> ConfigError:
        return ConfigError(f"oned.conf line {_line(self.text, token[2])}: expected {what}, "
                           f"got {token[1][:30]!r}")

    def _expect(self, kind: str, what: str, literal: str | None = None):
        token = self._next(what)
        if token[0] != kind or (literal is not None and token[1] != literal):
            raise self._fail(token, what)
        return token

    def _value(self) -> Value:
        token = self._next("a value")
        if token[0] not in ("string", "word"):
            raise self._fail(token, "a value")
        return Value(_unquote(token[1]), token[2], token[3])

    def entries(self) -> list[Entry]:
        found = []
        while self.i < len(self.tokens):
            name = self._expect("word", "a name")
            self._expect("punct", f"'=' after {name[1]}", "=")
            if self.tokens[self.i:self.i + 1] and self.tokens[self.i][1] == "[":
                self.i += 1
                attributes, end = self._vector()
                found.append(Entry(name[1], None, attributes, name[2], end))
            else:
                value = self._value()
                found.append(Entry(name[1], value, (), name[2], value.end))
        return found

    def _vector(self) -> tuple[tuple[tuple[str, Value], ...], int]:
        attributes = []
        while True:
            token = self._next("an attribute or ']'")
            if token[1] == "]":
                return tuple(attributes), token[3]
            if token[1] == ",":
                continue
            if token[0] != "word":
                raise self._fail(token, "an attribute name")
            self._expect("punct", f"'=' after {token[1]}", "=")
            attributes.append((token[1], self._value()))


def parse(text: str) -> list[Entry]:
    """Every top-level entry of an oned.conf text; ConfigError (with the line) if it is not one."""
    return _Parser(text).entries()


# -- driver lists inside ARGUMENTS ----------------------------------------------------------

def _list_match(arguments: str, option: str):
    return re.search(rf"(?:^|\s){re.escape(option)}\s+(\S+)", arguments)


def driver_list(arguments: str, option: str) -> list[str] | None:
    """The names after ``option`` (``-d``/``-s``) in a MAD's ARGUMENTS, None without it."""
    match = _list_match(arguments, option)
    return match.group(1).split(",") if match else None


def with_driver(arguments: str, option: str, name: str) -> str:
    """ARGUMENTS with ``name`` appended to the ``option`` list (unchanged if already there)."""
    match = _list_match(arguments, option)
    if match is None:
        return f"{arguments} {option} {name}".strip()
    names = match.group(1).split(",")
    if name in names:
        return arguments
    return arguments[:match.end(1)] + "," + name + arguments[match.end(1):]


def without_driver(arguments: str, option: str, name: str) -> str:
    match = _list_match(arguments, option)
    if match is None:
        return arguments
    names = [n for n in match.group(1).split(",") if n != name]
    return arguments[:match.start(1)] + ",".join(names) + arguments[match.end(1):]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One edit of the text: replace [start, end) by ``text``; ``says`` tells the admin."""

    start: int
    end: int
    text: str
    says: str


def _list_changes(text: str, entries: Sequence[Entry], adding: bool) -> list[Change]:
    changes = []
    for entry_name, key, option, driver in DRIVER_LISTS:
        entry = next((e for e in entries if e.name.upper() == entry_name), None)
        value = entry.get(key) if entry else None
        if value is None:
            if adding:
                raise ConfigError(f"oned.conf has no {entry_name} with {key}: cannot add "
                                  f"{driver} to its {option} list")
            continue
        edit = with_driver if adding else without_driver
        new = edit(value.text, option, driver)
        if new != value.text:
            verb = "add" if adding else "remove"
            changes.append(Change(value.start, value.end, _quote(new),
                                  f"{entry_name}: {verb} {driver} in the {option} list: "
                                  f"{key} = {_quote(new)}"))
    return changes


def fragment_entries(fragments: Sequence[str]) -> list[tuple[Entry, str]]:
    """The entries of vaf's oned.conf fragments (share/oned/*.conf), each with its text."""
    found = []
    for fragment in fragments:
        for entry in parse(fragment):
            found.append((entry, fragment[entry.start:entry.end]))
    return found


def _marked_section(text: str) -> tuple[int, int] | None:
    start = text.find(BEGIN)
    if start < 0:
        return None
    end = text.find(END, start)
    if end < 0:
        raise ConfigError("oned.conf has vaf's start marker but not its end marker "
                          f"({END!r}): fix it by hand")
    end += len(END)
    if text[end:end + 1] == "\n":
        end += 1
    # the blank line vaf put before its section goes with it
    if text[max(0, start - 2):start] == "\n\n":
        start -= 1
    return start, end


def plan_add(text: str, fragments: Sequence[str]) -> list[Change]:
    """The edits that give oned.conf vaf's drivers; empty when it has them all."""
    entries = parse(text)
    changes = _list_changes(text, entries, adding=True)
    present = {e.identity() for e in entries}
    missing = [(entry, source) for entry, source in fragment_entries(fragments)
               if entry.identity() not in present]
    if missing:
        body = "\n".join(source for _, source in missing)
        section = _marked_section(text)
        if section is None:
            lead = "" if text.endswith("\n") or not text else "\n"
            changes.append(Change(len(text), len(text), f"{lead}\n{BEGIN}\n{body}\n{END}\n",
                                  "append:\n" + body))
        else:
            at = text.rfind(END, section[0], section[1])
            changes.append(Change(at, at, body + "\n", "append to vaf's section:\n" + body))
    return changes


def plan_remove(text: str) -> list[Change]:
    """The edits that take vaf out again: its names in the lists and its marked section."""
    changes = _list_changes(text, parse(text), adding=False)
    section = _marked_section(text)
    if section is not None:
        changes.append(Change(section[0], section[1], "", "remove vaf's section:\n"
                              + text[section[0]:section[1]].strip()))
    return changes


def apply(text: str, changes: Sequence[Change]) -> str:
    for change in sorted(changes, key=lambda c: c.start, reverse=True):
        text = text[:change.start] + change.text + text[change.end:]
    return text


def remaining_entries(text: str, fragments: Sequence[str]) -> list[str]:
    """vaf's entries still in oned.conf outside its section (the admin added them by hand)."""
    names = {entry.identity() for entry, _ in fragment_entries(fragments)}
    return [text[e.start:e.end] for e in parse(text) if e.identity() in names]


# -- writing ----------------------------------------------------------------------------------

def write_with_backup(path: str, new_text: str, stamp: str | None = None) -> str:
    """Back the file up as ``<path>.vaf-<stamp>``, then replace it in one rename (same mode
    and owner), only after the new text parses. Returns the backup's path."""
    parse(new_text)  # never write what oned could not read
    backup = f"{path}.vaf-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    shutil.copy2(path, backup)
    info = os.stat(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".oned.conf.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(new_text)
        os.chmod(tmp, info.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, info.st_uid, info.st_gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return backup


def _read_fragments(directory: str | None) -> list[str]:
    if not directory or not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.endswith(".conf"))
    texts = []
    for name in names:
        with open(os.path.join(directory, name)) as f:
            texts.append(f.read())
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vaf.one.oned_conf",
                                     description="add vaf's entries to oned.conf, or remove them")
    parser.add_argument("mode", choices=("add", "remove"))
    parser.add_argument("conf", help="oned.conf")
    parser.add_argument("--fragments", help="directory of vaf's oned.conf fragments (*.conf)")
    parser.add_argument("--write", action="store_true",
                        help="write the result (after a timestamped backup)")
    args = parser.parse_args(argv)
    try:
        with open(args.conf) as f:
            text = f.read()
        fragments = _read_fragments(args.fragments)
        changes = plan_add(text, fragments) if args.mode == "add" else plan_remove(text)
        if not changes:
            print(f"{args.conf}: nothing to change")
        else:
            new_text = apply(text, changes)
            parse(new_text)
            for change in changes:
                print(f"{args.conf}: {change.says}")
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(True), new_text.splitlines(True), args.conf,
                f"{args.conf} (with vaf)" if args.mode == "add" else f"{args.conf} (without vaf)"))
            if args.write:
                backup = write_with_backup(args.conf, new_text)
                print(f"{args.conf}: written (backup: {backup})")
                text = new_text
        if args.mode == "remove":
            for left in remaining_entries(text, fragments):
                print(f"{args.conf}: kept (not in vaf's section, added by hand?): {left}")
    except OSError as err:
        print(f"oned.conf: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"{args.conf}: {err.reason}; nothing written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
