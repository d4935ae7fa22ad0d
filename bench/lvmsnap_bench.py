"""lvmsnap benchmark: ratios against baselines measured in the same run (not a test).

    python bench/lvmsnap_bench.py [--image-mb 256] [--repeat 3]

Boots its own test hypervisor (vaf/lab/testbed.py), builds vg-one-100 on its /dev/vdb,
and runs the driver's actions the way oned does (vaf/lab/oned.py). Every figure is a
ratio of two timings taken here, so the TCG guest's absolute slowness cancels out; each
timing is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vaf.lab.lvmsnap_env import SYS_DS, LvmsnapEnv, prepare_host  # noqa: E402
from vaf.lab.testbed import Testbed  # noqa: E402

VG = f"vg-one-{SYS_DS}"
POOL = "vaf-pool"
COPY = "/var/tmp/bench-image"  # where the seed's way puts the image on the host


def median_time(action: Callable[[], object], repeat: int,
                reset: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if reset is not None:
            reset()
        started = time.monotonic()
        action()
        times.append(time.monotonic() - started)
    return statistics.median(times)


def ok(reply):
    if reply.result != "SUCCESS":
        raise SystemExit(f"driver action failed: {reply.reason}\n{reply.logs}")
    return reply


class Bench:
    def __init__(self, env: LvmsnapEnv, image_mb: int, repeat: int):
        self.env = env
        self.repeat = repeat
        self.image_mb = image_mb
        self.image, _ = env.image("bench", image_mb, seed=1)
        self.vmid = 1000
        self.rows: list[tuple[str, float, float, str]] = []

    def next_vm(self) -> int:
        self.vmid += 1
        return self.vmid

    def row(self, what: str, measured: float, baseline: float, goal: str,
            invert: bool = False) -> None:
        ratio = baseline / measured if invert else measured / baseline
        self.rows.append((what, ratio, measured, baseline, goal))

    # -- helpers -------------------------------------------------------------------------------

    def drop_vm(self, vmid: int) -> None:
        ok(self.env.delete(vmid, None))

    def drop_caches(self) -> None:
        # VM disks first: lvm refuses to remove a cache that still has snapshots
        for pattern in ("'lv-one-|bench-'", "vaf-cache-"):
            self.env.guest(f"for lv in $(lvs --noheadings -o lv_name {VG} | grep -E {pattern});"
                           f" do lvremove -qfy {VG}/$lv; done")
        self.env.guest(f"rm -rf /var/lib/one/datastores/{SYS_DS}/*")

    def cache_name(self) -> str:
        return next(iter(self.env.caches()))

    # -- measurements --------------------------------------------------------------------------

    def warm_clone(self) -> None:
        ok(self.env.clone(self.image, self.next_vm()))  # make sure the cache exists
        cache = self.cache_name()
        vmids: list[int] = []

        def driver() -> None:
            vmids.append(self.next_vm())
            self.env.vm(vmids[-1], {"DISK_ID": 0})
            ok(self.env.transfer(vmids[-1], self.env.clone_line(self.image, vmids[-1])))

        measured = median_time(driver, self.repeat)
        self.one_warm = measured
        names: list[str] = []

        def bare() -> None:
            names.append(f"bench-{len(names)}")
            link = f"/var/lib/one/datastores/{SYS_DS}/{names[-1]}"
            self.env.tb.ssh(f"sudo -n lvcreate --yes -s --thinpool {VG}/{POOL} -n {names[-1]} "
                            f"-k n {VG}/{cache} >/dev/null && ln -s /dev/{VG}/{names[-1]} {link}",
                            user="oneadmin")

        baseline = median_time(bare, self.repeat)
        self.row("warm clone (driver) / lvcreate -s + ln -s in one ssh", measured, baseline,
                 "<= 1.3")
        start = median_time(lambda: self.env.tb.ssh(
            "sudo -n /usr/bin/python3 -IS -c 'import sys; sys.path.insert(0, \"/usr/lib/vaf/lib\")"
            "; import vaf.one.host_command, vaf.drivers.lvmsnap.host'", user="oneadmin"),
            self.repeat)
        self.row("  of which: ssh + sudo + host python start-up / the same baseline", start,
                 baseline, "(info)")
        self.drop_caches()

    def cold_fill(self) -> None:
        fills: list[float] = []

        def driver() -> None:
            reply = ok(self.env.clone(self.image, self.next_vm()))
            for line in reply.logs:
                if "filled cache from" in line.text:
                    fills.append(float(line.text.split(" in ")[-1].split(" s ")[0]))

        whole = median_time(driver, self.repeat, reset=self.drop_caches)
        fill = statistics.median(fills)
        raw_lv = f"/dev/{VG}/bench-raw"
        dd = f"dd if={{}} of={raw_lv} bs=4M oflag=direct conv=fsync status=none"
        create = f"lvcreate -qy -n bench-raw -L {self.image_mb}M {VG} >/dev/null"

        def fresh_lv() -> None:
            self.env.guest(f"lvremove -qfy {VG}/bench-raw >/dev/null 2>&1; {create}")

        def no_lv() -> None:
            self.env.guest(f"lvremove -qfy {VG}/bench-raw >/dev/null 2>&1; rm -f {COPY}")

        raw = median_time(lambda: self.env.guest(dd.format(self.image)), self.repeat, fresh_lv)
        raw_whole = median_time(lambda: self.env.guest(f"{create} && {dd.format(self.image)}"),
                                self.repeat, no_lv)

        def scp_then_dd() -> None:
            tb = self.env.tb
            subprocess.run(["scp", "-q", "-F", tb.ssh_config, str(self.env.local(self.image)),
                            f"{tb.host}:{COPY}"], check=True)
            self.env.guest(f"{create} && {dd.format(COPY)}")

        seed = median_time(scp_then_dd, self.repeat, no_lv)
        no_lv()
        self.row(f"cold fill, copy stage: raw dd / driver's dd ({self.image_mb} MB image)", fill,
                 raw, ">= 0.9", invert=True)
        self.row("cold clone, whole action: raw lvcreate + dd / driver", whole, raw_whole,
                 "(info)", invert=True)
        self.row("cold clone: seed's scp + lvcreate + dd / driver", whole, seed, "> 1",
                 invert=True)
        self.one_cold = whole

    def concurrent_cold(self) -> None:
        def eight() -> None:
            vmids = [self.next_vm() for _ in range(8)]
            for vmid in vmids:
                self.env.vm(vmid, {"DISK_ID": 0})
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                replies = list(pool.map(
                    lambda v: self.env.transfer(v, self.env.clone_line(self.image, v)), vmids))
            for reply in replies:
                ok(reply)

        measured = median_time(eight, self.repeat, reset=self.drop_caches)
        self.row("8 concurrent cold clones / 1 cold clone", measured, self.one_cold, "<= 1.3")
        # what each of the 7 others added: about one warm clone means they did not fill
        self.row("  each of the 7 others: added time / 1 warm clone",
                 (measured - self.one_cold) / 7, self.one_warm, "(info)")
        self.drop_caches()

    def mkimage(self, size_mb: int, fs: str) -> float:
        def make() -> None:
            vmid = self.next_vm()
            self.env.vm(vmid, {"DISK_ID": 1, "TYPE": "fs", "SIZE": size_mb, "FS": fs})
            ok(self.env.transfer(vmid, f"MKIMAGE lvmsnap {size_mb} raw {self.env.tb.host}:"
                                       f"{self.env.disk_path(vmid, 1)} {vmid} {SYS_DS}"))
            self.drop_vm(vmid)

        return median_time(make, self.repeat)

    def scratch(self) -> None:
        xfs20 = self.mkimage(20 * 1024, "xfs")
        xfs40 = self.mkimage(40 * 1024, "xfs")
        ext3 = self.mkimage(20 * 1024, "ext3")
        self.row("XFS scratch 40 GiB / XFS 20 GiB", xfs40, xfs20, "<= 1.2")
        self.row("ext3 scratch 20 GiB / XFS 20 GiB (seed's table)", ext3, xfs20, "(info)")

    def thin_vs_classic(self) -> None:
        def clones() -> float:
            ok(self.env.clone(self.image, self.next_vm()))

            def one() -> None:
                vmid = self.next_vm()
                self.env.vm(vmid, {"DISK_ID": 0})
                ok(self.env.transfer(vmid, self.env.clone_line(self.image, vmid)))

            # five siblings first: classic snapshots slow down with every sibling
            for _ in range(5):
                one()
            return median_time(one, self.repeat)

        thin = clones()
        self.drop_caches()
        self.env.set_conf(SNAPSHOT_MODE="classic")
        try:
            classic = clones()
        finally:
            self.env.set_conf()
            self.drop_caches()
        self.row("warm clone with 5 siblings: classic / thin", classic, thin, "(info)")

    def zeroing(self) -> None:
        """New volumes read as zeros: the price of each way (thin pool zeroing on provision,
        a wipe of thick volumes at create; a wipe at delete would cost the same write)."""
        size = self.image_mb

        def scratch(conf: dict[str, str], then: str = "") -> Callable[[], None]:
            def make() -> None:
                vmid = self.next_vm()
                self.env.vm(vmid, {"DISK_ID": 1, "TYPE": "fs", "SIZE": size, "FS": "raw"})
                self.env.set_conf(**conf)
                try:
                    ok(self.env.transfer(vmid, f"MKIMAGE lvmsnap {size} raw {self.env.tb.host}:"
                                               f"{self.env.disk_path(vmid, 1)} {vmid} {SYS_DS}"))
                    if then:
                        self.env.guest(then.format(disk=self.env.disk_path(vmid, 1)))
                finally:
                    self.env.set_conf()
                self.drop_vm(vmid)
            return make

        write = (f"dd if=/dev/zero of={{disk}} bs=4M count={size // 4} oflag=direct "
                 "conv=fsync status=none")
        thick_zero = median_time(scratch({"VOLATILE_VOLUMES": "thick"}), self.repeat)
        thick_raw = median_time(scratch({"VOLATILE_VOLUMES": "thick", "ZERO_THICK": "no"}),
                                self.repeat)
        thin = median_time(scratch({}), self.repeat)
        thin_written = median_time(scratch({}, write), self.repeat)
        thick_written = median_time(scratch({"VOLATILE_VOLUMES": "thick"}, write), self.repeat)
        self.row(f"thick {size} MB scratch zeroed at create / not zeroed", thick_zero,
                 thick_raw, "(info)")
        self.row(f"thick {size} MB zeroed at create / thin (pool zeroing)", thick_zero, thin,
                 "(info)")
        self.row("create + first full write: thin (zeroing on provision) / thick zeroed",
                 thin_written, thick_written, "(info)")

    STEPS = ("warm_clone", "cold_fill", "concurrent_cold", "scratch", "zeroing",
             "thin_vs_classic")

    def run(self, steps: tuple[str, ...] = STEPS) -> None:
        for step in (getattr(self, name) for name in steps):
            started = time.monotonic()
            step()
            print(f"# {step.__name__} measured in {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)

    def table(self) -> str:
        lines = [f"{'measure':<62} {'ratio':>6} {'measured':>9} {'baseline':>9}  goal",
                 "-" * 98]
        for what, ratio, measured, baseline, goal in self.rows:
            lines.append(f"{what:<62} {ratio:>6.2f} {measured:>8.2f}s {baseline:>8.2f}s  {goal}")
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", default=",".join(Bench.STEPS),
                        help="comma-separated subset (concurrent_cold needs cold_fill and "
                             "warm_clone first)")
    options = parser.parse_args()
    tb = Testbed()
    tb.build()
    with tb, tempfile.TemporaryDirectory(prefix="vaf-lvmsnap-bench-") as work:
        prepare_host(tb)
        bench = Bench(LvmsnapEnv(tb, Path(work)), options.image_mb, options.repeat)
        bench.run(tuple(options.steps.split(",")))
        print(f"lvmsnap benchmark: {options.image_mb} MB image, median of {options.repeat}, "
              "TCG test hypervisor")
        print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
