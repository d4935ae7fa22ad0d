"""The whole facility on this machine (run by ``scripts/demo``), then the seed's table.

A user submits jobs to real Slurm; the real elastic daemon asks OpenNebula (the API
stand-in) for workers; each worker's deploy runs lvmsnap's prolog on the test hypervisor (a
qemu guest with real LVM) through oned's driver runtime (the oned stand-in): cold then warm
clones, swap, XFS scratch, context ISO; the worker joins Slurm through the gate (a real
sshd, the key line of ``vaf gate authorized-keys``) and its slurmd starts; the jobs run; idle
workers are drained, their VMs terminated (lvmsnap's epilog) and their nodes powered down;
everything is cleaned up. The machinery is ``vaf/lab/facility.py``.

    sudo ./scripts/demo [--workers 4] [--image-mb 64] [--job-seconds 5] [--scratch-gib 20]
                        [--swap-mb 512] [--no-table]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo's vaf, also without the venv

from vaf.lab.facility import Facility, FacilityError, table  # noqa: E402
from vaf.lab.testbed import Testbed  # noqa: E402


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def run(workers: int, image_mb: int, job_seconds: float, with_table: bool,
        scratch_gib: int, swap_mb: int) -> int:
    started = time.monotonic()
    say("[setup] booting the test hypervisor (qemu, real LVM)")
    with Testbed() as tb, tempfile.TemporaryDirectory(prefix="vaf-demo-") as work:
        facility = Facility(tb, Path(work), workers=workers, image_mb=image_mb,
                            job_seconds=job_seconds, scratch_gib=scratch_gib, swap_mb=swap_mb,
                            say=say)
        try:
            facility.start()
            timings = facility.run_jobs()
            rows = facility.measure() if with_table else []
        except (FacilityError, TimeoutError) as err:
            say(f"demo FAILED: {err}")
            return 1
        finally:
            facility.stop()
        say(f"demo done in {time.monotonic() - started:.0f} s: {workers} workers came, ran "
            "the jobs and went; nothing left")
        if with_table:
            print("\n" + table(rows, workers, timings), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="jobs and workers (4)")
    parser.add_argument("--image-mb", type=int, default=64, help="worker image MiB (64)")
    parser.add_argument("--job-seconds", type=float, default=5.0, help="each job's run time")
    parser.add_argument("--scratch-gib", type=int, default=20,
                        help="each worker's XFS scratch disk (20, the seed's)")
    parser.add_argument("--swap-mb", type=int, default=512, help="each worker's swap (512)")
    parser.add_argument("--no-table", action="store_true", help="skip the measurements")
    args = parser.parse_args()
    return run(max(1, args.workers), args.image_mb, args.job_seconds, not args.no_table,
               max(1, args.scratch_gib), max(1, args.swap_mb))


if __name__ == "__main__":
    sys.exit(main())
