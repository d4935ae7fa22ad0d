#!/usr/bin/env python3
"""TORQUE accounting-log follower: idle CPU and record-to-event latency.

Not a test: prints two tables measured in the same run.

* Idle CPU: the follower waiting on a quiet day file for ``--idle`` seconds, as a share of
  one core, against a plain ``time.sleep`` of the same length (the floor); goal <= 1 %.
* Latency: a writer appends one real record (from the captured day) at a random moment;
  the time until ``wait()`` returns it, against the poll interval (the bound the design
  promises: a record is seen within one poll); goal well under 1 s.

    python3 bench/torque_log_bench.py [--idle 10] [--records 20] [--poll 0.1]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vaf.batch.torque_log import AccountingFollower  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tests", "data", "torque", "torque-accounting-20261126.txt")


def cpu_share(action, seconds: float) -> float:
    started_cpu, started = time.process_time(), time.monotonic()
    action(seconds)
    return (time.process_time() - started_cpu) / (time.monotonic() - started)


def append_stamped(day: str, line: str, written: list[float]) -> None:
    with open(day, "a", encoding="utf-8") as handle:
        handle.write(line)
    written.append(time.monotonic())


def latencies(follower: AccountingFollower, day: str, records: list[str], count: int):
    measured = []
    for index in range(count):
        written: list[float] = []
        timer = threading.Timer(random.uniform(0.05, 0.3), append_stamped,
                                (day, records[index % len(records)], written))
        timer.start()
        events = follower.wait(10)
        seen = time.monotonic()
        timer.join()
        assert events, "the record was not seen within 10 s"
        measured.append(seen - written[0])
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--poll", type=float, default=0.1)
    args = parser.parse_args()
    with open(SAMPLE, encoding="utf-8") as handle:
        records = handle.readlines()
    with tempfile.TemporaryDirectory(prefix="vaf-torque-log-") as scratch:
        directory = os.path.join(scratch, "accounting")
        os.mkdir(directory)
        day = os.path.join(directory, "20261126")
        with open(day, "w", encoding="utf-8") as handle:
            handle.writelines(records)
        follower = AccountingFollower(directory, os.path.join(scratch, "pos.json"),
                                      poll=args.poll)
        floor = cpu_share(time.sleep, args.idle)
        idle = cpu_share(follower.wait, args.idle)
        seen = latencies(follower, day, records, args.records)
    print(f"idle CPU over {args.idle:g} s (share of one core)")
    print(f"  {'time.sleep (floor)':<28} {floor * 100:8.3f} %")
    print(f"  {'follower.wait, poll ' + format(args.poll, 'g') + ' s':<28} {idle * 100:8.3f} %"
          f"   (goal <= 1 %)")
    print(f"record-to-event latency, {len(seen)} records")
    print(f"  median {statistics.median(seen) * 1000:7.1f} ms   max {max(seen) * 1000:7.1f} ms"
          f"   poll {args.poll * 1000:.0f} ms   max/poll {max(seen) / args.poll:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
