#!/usr/bin/env python3
"""``ssh [options] -- HOST LINE`` stand-in: logs HOST, then runs LINE as sshd does (``sh -c``).

Every test "host" is this machine; a host named ``down`` is unreachable (exit 255, like ssh).
The log (one host per line, in $CPU_SSH_LOG) lets tests count the calls per host.
"""
import os
import sys

args = sys.argv[1:]
separator = args.index("--")
host, line = args[separator + 1], args[separator + 2]
log = os.environ.get("CPU_SSH_LOG")
if log:
    with open(log, "a") as handle:
        handle.write(host + "\n")
if host == "down":
    print(f"ssh: connect to host {host} port 22: No route to host", file=sys.stderr)
    sys.exit(255)
os.execv("/bin/sh", ["sh", "-c", line])
