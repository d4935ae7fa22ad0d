"""Slurm's power-saving programs, lean: ``vaf-elastic-resume|suspend|resume-fail HOSTLIST``.

slurmctld runs ResumeProgram as soon as its power-saving pass sees a node a job needs; what
the program costs before it hands the request over is on every new worker's path. So these
entry points import neither click nor the daemon: they parse argv with argparse, write the
request into the state store and send the daemon its datagram (``vaf elastic resume`` is the
same function behind the admin command's options).
"""

from __future__ import annotations

import argparse
import sys

from vaf.errors import VafError

KINDS = {"resume": "start workers for the nodes of HOSTLIST (w[1-3])",
         "suspend": "the nodes of HOSTLIST are idle: end their workers",
         "resume-fail": "the nodes of HOSTLIST never came up"}


def request(kind: str, conf: str | None, hostlist: tuple[str, ...] | list[str]) -> None:
    """Record Slurm's request and wake the daemon; returns at once."""
    from vaf.batch.slurm import expand_hostlist
    from vaf.elastic.config import load_settings
    from vaf.elastic.store import Store, wake

    settings = load_settings(conf)
    names = [name for item in hostlist for name in expand_hostlist(item)]
    if not names:
        raise VafError("no node names given")
    store = Store(settings.database)
    store.add_requests(kind, names)
    store.close()
    wake(settings)


def main(kind: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"vaf-elastic-{kind}",
        description=f"Slurm's {kind} program: {KINDS[kind]}. Returns at once; the daemon "
                    "does the work.")
    parser.add_argument("--conf", help="config file (default: $VAF_ELASTIC_CONF or "
                                       "/etc/vaf/elastic.conf)")
    parser.add_argument("hostlist", nargs="+")
    args = parser.parse_args(argv)
    try:
        request(kind, args.conf, args.hostlist)
    except VafError as err:
        sys.stderr.write(f"vaf-elastic-{kind}: {err.reason}\n")
        return 1
    return 0


def resume_main() -> None:
    sys.exit(main("resume"))


def suspend_main() -> None:
    sys.exit(main("suspend"))


def resume_fail_main() -> None:
    sys.exit(main("resume-fail"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] in KINDS
             else main("resume", ["--help"]))
