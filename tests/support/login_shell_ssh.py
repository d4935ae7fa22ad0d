#!/usr/bin/env python3
"""A stand-in for ``ssh [options] -- HOST LINE`` that does what sshd does: ``sh -c LINE``.

Every test "host" is this machine, so the runner's remote quoting and per-host fan-out can be
tested without a network (the real ssh path is covered on the test hypervisor). A host named
``down`` is unreachable (exit 255, like ssh); with $FAKE_SSH_LOG set, each call appends its
host to that file, so tests can count calls per host.
"""
import os
import sys

args = sys.argv[1:]
separator = args.index("--")
host, line = args[separator + 1], args[separator + 2]
log = os.environ.get("FAKE_SSH_LOG")
if log:
    with open(log, "a") as handle:
        handle.write(host + "\n")
if host == "down":
    print(f"ssh: connect to host {host} port 22: No route to host", file=sys.stderr)
    sys.exit(255)
os.environ["FAKE_SSH_HOST"] = host
os.execv("/bin/sh", ["sh", "-c", line])
