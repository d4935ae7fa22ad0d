#!/usr/bin/env python3
"""Stand-in for a TORQUE 6 server and its clients ``qmgr``, ``pbsnodes`` and ``qstat``.

TORQUE has no Debian 12 package, so the lab plays the server with this one stdlib script:
``torque_qmgr.py {qmgr|pbsnodes|qstat} --home DIR --hosts FILE [client arguments]`` (the
two options are the stand-in's own; without a command name it is ``qmgr``). The state is a
PBS_HOME-like tree under ``--home``; :class:`vaf.lab.torque.TorqueLab` creates it, submits
and runs jobs, moves moms up and down, and stops or restarts the "server".

What a real pbs_server does and this reproduces (captured from TORQUE 6, see docs/torque.md):

qmgr
  * only the last ``-c`` runs; without ``-c`` directives come from stdin, one per line, and
    qmgr prints ``Max open servers: 9`` on stdout first;
  * syntax errors are found client-side (nothing reaches the server, no server-log line):
    exit 2, stderr echoes the directive, a ``^`` under the offending column, then
    ``qmgr: Syntax error - cannot locate attribute``; attributes are one comma-separated
    word (``np=2 properties=x`` is such an error);
  * server-side refusals print ``qmgr obj=<name> svr=default: <message>`` and exit 2:
    ``Unknown node `` (trailing space) for a name the server cannot resolve (here: not in
    ``--hosts``) and for ``delete`` of a missing node, ``Node name already exists``,
    ``Undefined attribute  <attr>``, ``Illegal attribute or resource value for`` (np < 1),
    ``Unauthorized Request  MSG=error in permissions (PERM_MANAGER)`` for a caller that is
    not a manager (a client on the head is ``<user>@localhost``); ``print node <missing>``
    says ``Unknown node  MSG=cannot locate specified node`` and logs no reject line;
  * node names longer than 80 characters are created as given;
  * ``server_priv/nodes`` omits defaults: ``cmp6``, ``cmp2 cloud small``, ``tw-a np=2 cloud
    small``; ``create node X`` without attributes logs no ``attributes set:`` line;
  * a new node is ``down,offline,MOM-list-not-sent``; after a server restart ``down``;
    ``free`` once its mom reports;
  * a stopped server: exit 3 and the three "Unable to communicate / Cannot connect /
    cannot connect to server (errno=111)" lines.

pbsnodes and qstat
  * ``pbsnodes -x [node...]`` and ``qstat -x`` / ``qstat -f -x`` print one XML document in
    the element order of the captured samples; a node's ``<status>`` (present only while its
    mom reports) is the captured one with this node's name, cores and time;
  * ``pbsnodes -o|-c [-N note] node...`` sets/clears offline and logs the captured
    ``state changed from free to offline`` lines. Texts for an empty node list, an unknown
    node and a stopped server are TORQUE's error strings (``Server has no node list``,
    ``Unknown node``, ``cannot connect to server``), exit codes as qmgr's.

Every call is appended to ``<home>/calls.jsonl`` as ``[command, *arguments]``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import sys
import time
from xml.sax.saxutils import escape

#: this file: tests and the demo run it as ``[python, QMGR_STANDIN, command, --home, ...]``
QMGR_STANDIN = os.path.abspath(__file__)

UNKNOWN = "Unknown node "
DUPLICATE = "Node name already exists"
NO_ATTRIBUTE = "Undefined attribute "
BAD_VALUE = "Illegal attribute or resource value for"
PERMISSION = "Unauthorized Request  MSG=error in permissions (PERM_MANAGER)"
NOT_LOCATED = "Unknown node  MSG=cannot locate specified node"
NO_NODES = "Server has no node list MSG=node list is empty - check 'server_priv/nodes' file"
SYNTAX = "qmgr: Syntax error - cannot locate attribute"
CODES = {UNKNOWN: 15064, DUPLICATE: 15068, NO_ATTRIBUTE: 15002, BAD_VALUE: 15016,
         PERMISSION: 15007}
SERVER_DOWN_EXIT = 3
NODE_ATTRIBUTES = ("np", "properties", "ntype", "note")
MOM_PORTS = "<mom_service_port>15002</mom_service_port><mom_manager_port>15003</mom_manager_port>"
#: the captured <status> of a reporting mom; {name}, {ncpus}, {rectime} and {jobs} filled in
MOM_STATUS = ("opsys=linux,uname=Linux {name} 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64,"
              "sessions=11858,nsessions=1,nusers=1,idletime=97899,totmem=24684092kb,"
              "availmem=21693708kb,physmem=24684092kb,ncpus={ncpus},loadave=0.00,gres=,"
              "netload=172808232,state=free,varattr= ,cpuclock=Fixed,version=master,"
              "rectime={rectime},jobs={jobs}")
_RUNNING_RESOURCES = ("nodes", "walltime", "nodect", "neednodes")
_WAITING_RESOURCES = ("nodes", "nodect", "neednodes", "walltime")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_COMMANDS = {"c": "create", "create": "create", "d": "delete", "delete": "delete",
             "s": "set", "set": "set", "l": "list", "list": "list", "p": "print",
             "print": "print"}
_OBJECTS = {"n": "node", "node": "node", "s": "server", "server": "server"}


# --- state --------------------------------------------------------------------------------

def lab_dir(home: str) -> str:
    return os.path.join(home, "lab")


def read_json(home: str, name: str, default):
    try:
        with open(os.path.join(lab_dir(home), name), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def write_json(home: str, name: str, data) -> None:
    path = os.path.join(lab_dir(home), name)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(path + ".tmp", path)


@contextlib.contextmanager
def locked(home: str):
    """One request at a time, as pbs_server serialises node changes."""
    with open(os.path.join(lab_dir(home), "lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def server(home: str) -> dict:
    return read_json(home, "server.json", {"name": "head", "managers": [], "running": True})


def nodes_file(home: str) -> str:
    return os.path.join(home, "server_priv", "nodes")


def read_nodes(home: str) -> dict[str, dict]:
    """``server_priv/nodes`` (``name [np=N] [property ...]``) joined with the live state."""
    live = read_json(home, "nodes.json", {})
    nodes: dict[str, dict] = {}
    try:
        with open(nodes_file(home), encoding="utf-8") as handle:
            lines = [line.split() for line in handle if line.strip()]
    except FileNotFoundError:
        lines = []
    for words in lines:
        np = next((int(w[3:]) for w in words[1:] if w.startswith("np=")), 1)
        properties = [w for w in words[1:] if "=" not in w]
        state = live.get(words[0], {"up": False, "offline": False, "created": False,
                                    "note": ""})
        nodes[words[0]] = {"np": np, "properties": properties, **state}
    return nodes


def write_nodes(home: str, nodes: dict[str, dict]) -> None:
    lines = []
    for name, node in nodes.items():
        words = [name] + ([f"np={node['np']}"] if node["np"] != 1 else []) + node["properties"]
        lines.append(" ".join(words) + "\n")
    with open(nodes_file(home) + ".tmp", "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    os.replace(nodes_file(home) + ".tmp", nodes_file(home))
    write_json(home, "nodes.json", {
        name: {key: node[key] for key in ("up", "offline", "created", "note")}
        for name, node in nodes.items()})


def read_jobs(home: str) -> dict[str, dict]:
    return read_json(home, "jobs.json", {})


def node_jobs(name: str, jobs: dict[str, dict]) -> list[tuple[str, int]]:
    """(job id, cores) of the jobs running on ``name``."""
    return [(job_id, job["cores"]) for job_id, job in jobs.items()
            if job["state"] == "R" and job.get("node") == name]


def state_words(node: dict, used: int) -> str:
    """TORQUE's comma state list for a node with ``used`` of its cores busy."""
    words = []
    if not node["up"]:
        words.append("down")
    if node["offline"] or node["created"]:
        words.append("offline")
    if node["created"]:
        words.append("MOM-list-not-sent")
    if node["up"] and used >= node["np"]:
        words.append("job-exclusive")
    return ",".join(words) or "free"


def log(home: str, event: str, objtype: str, objname: str, message: str) -> None:
    now = time.time()
    stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    path = os.path.join(home, "server_logs", time.strftime("%Y%m%d", time.localtime(now)))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{stamp};{event};PBS_Server.{os.getpid()};{objtype};{objname};{message}\n")


def caller() -> str:
    """How the server names a client on the head: ``<user>@localhost``."""
    return f"{pwd.getpwuid(os.geteuid()).pw_name}@localhost"


def resolves(hosts: str, name: str) -> bool:
    if not hosts:
        return False
    with open(hosts, encoding="utf-8") as handle:
        return any(name in line.split("#", 1)[0].split()[1:] for line in handle)


# --- qmgr ---------------------------------------------------------------------------------

class SyntaxFault(Exception):
    def __init__(self, column: int):
        super().__init__(column)
        self.column = column


def parse_directive(line: str) -> tuple[str, str, list[str], list[tuple[str, str, str]]]:
    """``(command, object type, names, [(attribute, operator, value)])`` or SyntaxFault."""
    position = 0

    def word() -> str:
        nonlocal position
        while position < len(line) and line[position] in " \t":
            position += 1
        start = position
        while position < len(line) and line[position] not in " \t":
            position += 1
        return line[start:position]

    command = _COMMANDS.get(word())
    if command is None:
        raise SyntaxFault(0)
    kind_start = position + 1
    kind = _OBJECTS.get(word())
    if kind is None:
        raise SyntaxFault(kind_start)
    while position < len(line) and line[position] in " \t":
        position += 1
    names: list[str] = []
    if kind == "node":
        position, names = _names(line, position)
    return command, kind, names, _attribute_list(line, position)


def _names(line: str, position: int) -> tuple[int, list[str]]:
    """A comma-separated list of node names, up to the next blank."""
    start = position
    while position < len(line) and line[position] not in " \t":
        if line[position] != "," and not _NAME_CHARS.match(line[position]):
            raise SyntaxFault(position)
        position += 1
    text = line[start:position]
    names = text.split(",") if text else []
    if not all(names):
        raise SyntaxFault(position)
    return position, names


def _attribute_list(line: str, position: int) -> list[tuple[str, str, str]]:
    """``attr OP value[, attr OP value]...``; blanks may surround OP and follow a comma,
    but a second attribute after a blank (no comma) is the syntax error qmgr reports."""
    def blanks(at: int) -> int:
        while at < len(line) and line[at] in " \t":
            at += 1
        return at

    position = blanks(position)
    found: list[tuple[str, str, str]] = []
    while position < len(line):
        match = _ATTRIBUTE_NAME.match(line, position)
        if not match:
            raise SyntaxFault(position)
        position = blanks(match.end())
        operator = next((op for op in ("+=", "-=", "=") if line.startswith(op, position)), None)
        if operator is None:
            raise SyntaxFault(position)
        position = blanks(position + len(operator))
        if line.startswith('"', position):
            end = line.find('"', position + 1)
            if end < 0:
                raise SyntaxFault(position)
            value, position = line[position + 1:end], end + 1
        else:
            end = position
            while end < len(line) and line[end] not in ", \t":
                end += 1
            value, position = line[position:end], end
        found.append((match[0], operator, value))
        position = blanks(position)
        if line.startswith(",", position):
            position = blanks(position + 1)
            continue
        if position < len(line):
            raise SyntaxFault(position)
    return found


def qmgr(home: str, hosts: str, args: list[str]) -> int:
    directives = [value for flag, value in zip(args, args[1:], strict=False)
                  if flag == "-c"]
    if directives:
        lines = directives[-1:]
    else:
        print("Max open servers: 9")
        lines = sys.stdin.read().splitlines()
    code = 0
    for line in lines:
        if line.strip():
            code = _qmgr_line(home, hosts, line.strip()) or code
    return code


def _qmgr_line(home: str, hosts: str, line: str) -> int:
    try:
        command, kind, names, attributes = parse_directive(line)
    except SyntaxFault as fault:
        sys.stderr.write(f"{line}\n{' ' * fault.column}^\n{SYNTAX}\n")
        return 2
    state = server(home)
    if not state["running"]:
        return server_down(state["name"], "qmgr")
    with locked(home):
        if kind == "server":
            return _server_directive(home, state, command, attributes)
        if command in ("list", "print"):
            return _show_nodes(home, command, names)
        if caller() not in state["managers"]:
            return reject(home, names[0] if names else "", PERMISSION)
        if not names:
            sys.stderr.write(f"{line}\n{' ' * len(line)}^\n{SYNTAX}\n")
            return 2
        handler = {"create": _create, "delete": _delete, "set": _set}[command]
        return max(handler(home, hosts, name, attributes) for name in names)


def server_down(name: str, program: str) -> int:
    if program == "qmgr":
        sys.stderr.write(f"Unable to communicate with {name}(127.0.0.1)\n"
                         f"Cannot connect to specified server host '{name}'.\n"
                         "qmgr: cannot connect to server  (errno=111) Connection refused\n")
    else:
        sys.stderr.write(f"{program}: cannot connect to server {name}, error=111 "
                         "(Connection refused)\n")
    return SERVER_DOWN_EXIT


def reject(home: str, name: str, text: str, detail: str = "") -> int:
    who = caller()
    _log_reject(home, text, who)
    print(f"qmgr obj={name} svr=default: {text}{detail}", file=sys.stderr)
    return 2


def _log_reject(home: str, text: str, who: str) -> None:
    log(home, "128", "Req", "req_reject",
        f"Reject reply code={CODES[text]}({text}), aux=0, type=Manager, from {who}")


def _check_attributes(home: str, name: str, attributes) -> int | None:
    for attribute, _, value in attributes:
        if attribute not in NODE_ATTRIBUTES:
            return reject(home, name, NO_ATTRIBUTE, f" {attribute}")
        if attribute == "np" and not (value.isdigit() and int(value) >= 1):
            return reject(home, name, BAD_VALUE)
    return None


def _create(home: str, hosts: str, name: str, attributes) -> int:
    refused = _check_attributes(home, name, attributes)
    if refused is not None:
        return refused
    if not resolves(hosts, name):
        log(home, "01", "Svr", "PBS_Server", f"LOG_ERROR::{UNKNOWN} ({CODES[UNKNOWN]}) in "
            f"process_host_name_part, host {name} not found")
        return reject(home, name, UNKNOWN)
    nodes = read_nodes(home)
    if name in nodes:
        return reject(home, name, DUPLICATE)
    node = {"np": 1, "properties": [], "up": False, "offline": False, "created": True,
            "note": ""}
    _apply(node, attributes)
    nodes[name] = node
    write_nodes(home, nodes)
    # the server logs properties before np, whatever order the directive gave
    for attribute, _, value in sorted(attributes, key=lambda a: a[0] != "properties"):
        log(home, "04", "node", name, f"attributes set: {attribute} = {value}")
    return 0


def _apply(node: dict, attributes) -> None:
    for attribute, operator, value in attributes:
        if attribute == "np":
            node["np"] = int(value)
        elif attribute == "properties":
            listed = [p for p in value.split(",") if p]
            if operator == "=":
                node["properties"] = listed
            elif operator == "+=":
                node["properties"] += [p for p in listed if p not in node["properties"]]
            else:
                node["properties"] = [p for p in node["properties"] if p not in listed]
        elif attribute == "note":
            node["note"] = value


def _delete(home: str, hosts: str, name: str, attributes) -> int:
    nodes = read_nodes(home)
    if name not in nodes:
        return reject(home, name, UNKNOWN)
    del nodes[name]
    write_nodes(home, nodes)
    log(home, "04", "node", name, f"deleted at request of {caller()}")
    return 0


def _set(home: str, hosts: str, name: str, attributes) -> int:
    nodes = read_nodes(home)
    if name not in nodes:
        return reject(home, name, UNKNOWN)
    refused = _check_attributes(home, name, attributes)
    if refused is not None:
        return refused
    _apply(nodes[name], attributes)
    write_nodes(home, nodes)
    log(home, "04", "node", name, f"attributes set:  at request of {caller()}")
    for attribute, operator, value in attributes:
        log(home, "04", "node", name, f"attributes set: {attribute} {operator} {value}")
    return 0


def _show_nodes(home: str, command: str, names: list[str]) -> int:
    nodes = read_nodes(home)
    jobs = read_jobs(home)
    for name in names or list(nodes):
        if name not in nodes:
            print(f"qmgr obj={name} svr=default: {NOT_LOCATED}", file=sys.stderr)
            return 2
        node = nodes[name]
        states = state_words(node, sum(c for _, c in node_jobs(name, jobs))).split(",")
        if command == "print":
            print(f"create node {name}")
            for index, word in enumerate(states):
                print(f"set node {name} state {'=' if index == 0 else '+='} {word}")
            print(f"set node {name} np = {node['np']}")
            for index, prop in enumerate(node["properties"]):
                print(f"set node {name} properties {'=' if index == 0 else '+='} {prop}")
            print(f"set node {name} ntype = cluster")
        else:
            print(f"Node {name}\n\tstate = {','.join(states)}\n\tnp = {node['np']}")
            if node["properties"]:
                print(f"\tproperties = {','.join(node['properties'])}")
            print("\tntype = cluster\n")
    return 0


def _server_directive(home: str, state: dict, command: str, attributes) -> int:
    if command in ("list", "print"):
        for manager in state["managers"]:
            print(f"set server managers {'=' if manager == state['managers'][0] else '+='} "
                  f"{manager}")
        return 0
    if command != "set" or caller() not in state["managers"]:
        return reject(home, state["name"], PERMISSION)
    unknown = [attribute for attribute, _, _ in attributes if attribute != "managers"]
    if unknown:  # the stand-in models the server's managers only
        return reject(home, state["name"], NO_ATTRIBUTE, f" {unknown[0]}")
    log(home, "04", "Svr", "PBS_Server", f"attributes set:  at request of {caller()}")
    for _, operator, value in attributes:
        if operator == "=":
            state["managers"] = [value]
        elif operator == "+=" and value not in state["managers"]:
            state["managers"].append(value)
        elif operator == "-=":
            state["managers"] = [m for m in state["managers"] if m != value]
        log(home, "04", "Svr", "PBS_Server", f"attributes set: managers {operator} {value}")
    write_json(home, "server.json", state)
    return 0


# --- pbsnodes -----------------------------------------------------------------------------

def pbsnodes(home: str, hosts: str, args: list[str]) -> int:
    action, note, names = "", None, []
    words = list(args)
    while words:
        word = words.pop(0)
        if word in ("-x", "-o", "-c", "-l"):
            action = word
        elif word == "-N" and words:
            note = words.pop(0)
        else:
            names.append(word)
    state = server(home)
    if not state["running"]:
        return server_down(state["name"], "pbsnodes")
    with locked(home):
        if action in ("-o", "-c") or note is not None:
            if caller() not in state["managers"]:
                print(f"pbsnodes: {PERMISSION}", file=sys.stderr)
                return 2
            return _change_nodes(home, action, note, names)
        nodes = read_nodes(home)
        missing = [name for name in names if name not in nodes]
        if missing:
            print(f"pbsnodes: {NOT_LOCATED}", file=sys.stderr)
            return 1
        if not nodes:
            print(f"pbsnodes: {NO_NODES}", file=sys.stderr)
            return 1
        shown = {name: nodes[name] for name in names or nodes}
        if action == "-l":
            return _list_nodes(shown, read_jobs(home), everything=names == ["all"])
        sys.stdout.write(nodes_xml(shown, read_jobs(home)) + "\n")
    return 0


def _change_nodes(home: str, action: str, note: str | None, names: list[str]) -> int:
    nodes = read_nodes(home)
    jobs = read_jobs(home)
    for name in names:
        if name not in nodes:
            print(f"pbsnodes: {NOT_LOCATED}", file=sys.stderr)
            return 1
    for name in names:
        node = nodes[name]
        used = sum(c for _, c in node_jobs(name, jobs))
        before = state_words(node, used)
        log(home, "04", "node", name, f"attributes set:  at request of {caller()}")
        if action == "-o":
            node["offline"] = True
        elif action == "-c":
            node["offline"] = node["created"] = False
        after = state_words(node, used)
        if after != before:
            log(home, "04", "node", name, f"node {name} state changed from {before} to {after}")
        if note is not None:
            node["note"] = "" if note == "n" else note
            log(home, "04", "node", name, f"attributes set: note = {node['note']}")
        if action:
            log(home, "04", "node", name,
                f"attributes set: state {'+' if action == '-o' else '-'} offline")
    write_nodes(home, nodes)
    return 0


def _list_nodes(nodes: dict[str, dict], jobs: dict, everything: bool) -> int:
    for name, node in nodes.items():
        words = state_words(node, sum(c for _, c in node_jobs(name, jobs)))
        if everything or "down" in words or "offline" in words:
            print(f"{name:<20} {words}")
    return 0


def nodes_xml(nodes: dict[str, dict], jobs: dict[str, dict]) -> str:
    parts = ["<Data>"]
    for name, node in nodes.items():
        running = node_jobs(name, jobs)
        used = sum(cores for _, cores in running)
        parts.append(f"<Node><name>{escape(name)}</name>"
                     f"<state>{state_words(node, used)}</state>"
                     f"<power_state>Running</power_state><np>{node['np']}</np>")
        if node["properties"]:
            parts.append(f"<properties>{escape(','.join(node['properties']))}</properties>")
        parts.append("<ntype>cluster</ntype>")
        slots, first = [], 0
        for job_id, cores in running:
            span = f"{first}-{first + cores - 1}" if cores > 1 else f"{first}"
            slots.append(f"{span}/{job_id}")
            first += cores
        if slots:
            parts.append(f"<jobs>{escape(','.join(slots))}</jobs>")
        if node["up"]:
            status = MOM_STATUS.format(name=name, ncpus=node["np"], rectime=int(time.time()),
                                       jobs=" ".join(job_id for job_id, _ in running))
            parts.append(f"<status>{escape(status)}</status>")
        if node["note"]:
            parts.append(f"<note>{escape(node['note'])}</note>")
        parts.append(MOM_PORTS + "</Node>")
    parts.append("</Data>")
    return "".join(parts)


# --- qstat --------------------------------------------------------------------------------

def qstat(home: str, hosts: str, args: list[str]) -> int:
    state = server(home)
    if not state["running"]:
        return server_down(state["name"], "qstat")
    if "-x" not in args:
        print("qstat: the stand-in prints only the XML form (-x, -f -x)", file=sys.stderr)
        return 2
    with locked(home):
        jobs = read_jobs(home)
    if jobs:
        sys.stdout.write('<?xml version="1.0"?>\n' + jobs_xml(jobs, state["name"]) + "\n")
    return 0


def jobs_xml(jobs: dict[str, dict], server_name: str) -> str:
    return "<Data>" + "".join(_job_xml(job_id, job, server_name)
                              for job_id, job in jobs.items()) + "</Data>"


def _job_xml(job_id: str, job: dict, server_name: str) -> str:
    number = job_id.split(".", 1)[0]
    owner, name, queued = job["owner"], job["name"], job["qtime"]
    home_dir = f"/home/{owner}"
    fields = [("Job_Id", job_id), ("Job_Name", name), ("Job_Owner", f"{owner}@localhost"),
              ("job_state", job["state"]), ("queue", job["queue"]), ("server", server_name),
              ("Checkpoint", "u"), ("ctime", queued),
              ("Error_Path", f"{server_name}:{home_dir}/{name}.e{number}")]
    if job["state"] == "R":
        fields.append(("exec_host", job["exec_host"]))
    fields += [("Hold_Types", "n"), ("Join_Path", "n"), ("Keep_Files", "n"),
               ("Mail_Points", "a"), ("mtime", job.get("start", queued)),
               ("Output_Path", f"{server_name}:{home_dir}/{name}.o{number}"),
               ("Priority", 0), ("qtime", queued), ("Rerunable", "True")]
    text = "".join(f"<{tag}>{escape(str(value))}</{tag}>" for tag, value in fields)
    # the captured order: a running job lists walltime second, a waiting one last
    order = _RUNNING_RESOURCES if job["state"] == "R" else _WAITING_RESOURCES
    listed = sorted(job["resources"].items(),
                    key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    resources = "".join(f"<{key}>{escape(value)}</{key}>" for key, value in listed)
    text += f"<Resource_List>{resources}</Resource_List>"
    tail = []
    if job["state"] == "R":
        tail.append(("session_id", job["session"]))
    tail += [("substate", 42 if job["state"] == "R" else 10),
             ("Variable_List", f"PBS_O_QUEUE={job['queue']},PBS_O_HOME={home_dir},"
                               f"PBS_O_LOGNAME={owner},PBS_O_HOST={server_name}"),
             ("euser", owner), ("egroup", owner), ("queue_rank", number),
             ("queue_type", "E"), ("comment", job["comment"]), ("etime", queued),
             ("submit_args", job["submit_args"])]
    if job["state"] == "R":
        tail.append(("start_time", job["start"]))
    tail += [("fault_tolerant", "False"), ("job_radix", 0), ("submit_host", server_name),
             ("init_work_dir", home_dir), ("request_version", 1)]
    text += "".join(f"<{tag}>{escape(str(value))}</{tag}>" for tag, value in tail)
    return f"<Job>{text}</Job>"


# --- entry --------------------------------------------------------------------------------

PROGRAMS = {"qmgr": qmgr, "pbsnodes": pbsnodes, "qstat": qstat}


def main(argv: list[str]) -> int:
    program = argv.pop(0) if argv and argv[0] in PROGRAMS else "qmgr"
    home = hosts = ""
    while argv[:1] and argv[0] in ("--home", "--hosts"):
        if argv[0] == "--home":
            home = argv[1]
        else:
            hosts = argv[1]
        argv = argv[2:]
    with open(os.path.join(home, "calls.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps([program, *argv]) + "\n")
    time.sleep(server(home).get("delay", 0))  # a busy server (TorqueLab.slow)
    return PROGRAMS[program](home, hosts, argv)


def make_home(home: str, managers: tuple[str, ...] | None = None,
              server_name: str = "head") -> str:
    """Create the stand-in's PBS_HOME layout; the caller is a manager unless told otherwise."""
    for sub in ("server_priv/accounting", "server_logs", "lab"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    open(os.path.join(home, "calls.jsonl"), "a").close()
    if not os.path.exists(os.path.join(lab_dir(home), "server.json")):
        listed = list(managers) if managers is not None else [caller()]
        write_json(home, "server.json", {"name": server_name, "managers": listed,
                                         "running": True})
    return home


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
