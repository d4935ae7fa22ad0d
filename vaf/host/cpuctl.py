#!/usr/bin/env python3
"""Host side of vaf's CPU priority: ``python3 <remotes>/vaf/lib/vaf/host/cpuctl.py ...``.

Run as root (``sudo -n``) on the hypervisor, by the ``vaf-cpu-priority`` post.d step and by
``vaf cpu`` over ssh. Stdlib only. Prints one JSON document on stdout:
``{"host": ..., "vms": [<one result per VM>]}``; exits 1 if any VM failed (the others are
still done and reported), 2 on bad arguments.

    cpuctl.py apply --layer deploy|squeeze --label batch --nice 19 --weight 10% VMID...
    cpuctl.py release VMID...
    cpuctl.py status [VMID...]        (no ids: every VM vaf holds a state for)
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # Run as a file: put the directory holding the vaf package first, and drop this file's own
    # directory so that vaf/host/*.py can never shadow a standard module.
    _lib = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[:] = [_lib] + [p for p in sys.path[1:] if p != os.path.dirname(__file__)]

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

from vaf.errors import VafError  # noqa: E402
from vaf.host import cpu  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpuctl", description=__doc__.split("\n\n")[0])
    defaults = cpu.Host()
    parser.add_argument("--state-dir", default=defaults.state_dir)
    parser.add_argument("--pid-dir", default=defaults.pid_dir)
    parser.add_argument("--proc", default=defaults.proc, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    apply = commands.add_parser("apply")
    apply.add_argument("--layer", choices=cpu.LAYERS, required=True)
    apply.add_argument("--label", required=True)
    apply.add_argument("--nice", type=int, required=True)
    apply.add_argument("--weight", default="")
    apply.add_argument("vmids", nargs="+", type=_vmid)
    commands.add_parser("release").add_argument("vmids", nargs="+", type=_vmid)
    commands.add_parser("status").add_argument("vmids", nargs="*", type=_vmid)
    return parser


def _vmid(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"VM id must be a non-negative integer, got {text!r}")
    return int(text)


def _one(args: argparse.Namespace, host: cpu.Host, vmid: int) -> dict:
    try:
        if args.command == "apply":
            priority = cpu.Priority(args.label, args.nice, args.weight)
            return cpu.apply(vmid, priority, args.layer, host)
        if args.command == "release":
            return cpu.release(vmid, host)
        return cpu.status(vmid, host)
    except OSError as err:  # permission denied, cgroup removed under us, ...
        where = f": {err.filename}" if err.filename else ""
        return {"vmid": vmid, "status": "error", "reason": f"{err.strerror}{where}"}
    except VafError as err:  # a corrupt state file: this VM only
        return {"vmid": vmid, "status": "error", "reason": err.reason}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    host = cpu.Host(state_dir=args.state_dir, pid_dir=args.pid_dir, proc=args.proc)
    try:
        if args.command == "apply":  # validate once, before touching any VM
            cpu.Priority(args.label, args.nice, args.weight)
        vmids = args.vmids or cpu.known_vmids(host)
        results = [_one(args, host, vmid) for vmid in vmids]
    except VafError as err:
        print(err.reason, file=sys.stderr)
        return err.exit_code
    json.dump({"host": socket.gethostname(), "vms": results}, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
