#!/usr/bin/env python3
"""A stand-in for ``ssh HOST LINE`` that does what sshd does with LINE: ``$SHELL -c LINE``.

Used to test, without a network, that the runner's remote command line survives the remote
login shell word for word. The real ssh path is covered on the test hypervisor.
Usage (as the runner calls ssh): login_shell_ssh.py [ssh options] -- HOST LINE
"""
import os
import sys

args = sys.argv[1:]
separator = args.index("--")
host, line = args[separator + 1], args[separator + 2]
os.environ["FAKE_SSH_HOST"] = host
os.execv("/bin/sh", ["sh", "-c", line])
