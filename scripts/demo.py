"""The drivers end to end against a local test hypervisor (run by ``scripts/demo``).

This machine plays the OpenNebula front-end: transfer files go through a faithful copy of
oned's driver runtime (``vaf/lab/oned.py``). The hypervisor is the qemu test guest
(``vaf/lab/testbed.py``) with a real LVM volume group for system datastore 100 and the
image datastore shared over 9p at the same path, like GlusterFS in the original facility.

What it shows, as an admin would see it in oned's logs:
  1. a worker image on the shared datastore;
  2. N worker VMs deployed at once: a prolog per VM (CLONE of the image, MKSWAP, MKIMAGE xfs):
     the first fills the host's cache once, every VM disk is a snapshot of it;
  3. the system datastore monitor (USED_MB / FREE_MB / TOTAL_MB, snapshot fullness);
  4. the epilog (DELETE) of every VM, leaving the cache for the next burst.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo's vaf, also without the venv

from vaf.lab import oned  # noqa: E402
from vaf.lab.lvmsnap_env import SYS_DS, LvmsnapEnv  # noqa: E402
from vaf.lab.testbed import Testbed  # noqa: E402

VG = f"vg-one-{SYS_DS}"


def prolog(env: LvmsnapEnv, image: str, vmid: int) -> tuple[oned.Reply, float]:
    host = env.tb.host
    env.vm(vmid, {"DISK_ID": 0}, {"DISK_ID": 1, "TYPE": "swap", "SIZE": 512},
           {"DISK_ID": 2, "TYPE": "fs", "SIZE": 20480, "FS": "xfs"})
    started = time.monotonic()
    reply = env.transfer(
        vmid, env.clone_line(image, vmid, 0),
        f"MKSWAP lvmsnap 512 {host}:{env.disk_path(vmid, 1)} {vmid} {SYS_DS}",
        f"MKIMAGE lvmsnap 20480 raw {host}:{env.disk_path(vmid, 2)} {vmid} {SYS_DS}")
    return reply, time.monotonic() - started


def epilog(env: LvmsnapEnv, vmid: int) -> oned.Reply:
    host = env.tb.host
    lines = [f"DELETE lvmsnap {host}:{env.disk_path(vmid, d)} {vmid} {SYS_DS}" for d in (0, 1, 2)]
    lines.append(f"DELETE lvmsnap {host}:/var/lib/one/datastores/{SYS_DS}/{vmid} {vmid} {SYS_DS}")
    return env.transfer(vmid, *lines)


def show(title: str, lines: list[str]) -> None:
    print(f"\n--- {title}")
    for line in lines:
        print(f"    {line}")


def check(reply: oned.Reply, what: str) -> None:
    if reply.result != "SUCCESS":
        show(f"{what} FAILED", [reply.reason] + [f"{x.severity} {x.id} {x.text}"
                                                   for x in reply.logs])
        raise SystemExit(1)


def run(workers: int, image_mb: int) -> None:
    with Testbed() as tb, tempfile.TemporaryDirectory(prefix="vaf-demo-") as work:
        started = time.monotonic()
        tb.ssh(f"pvcreate -qff -y /dev/vdb && vgcreate -q {VG} /dev/vdb && "
               "mkdir -p /var/lib/one/datastores && chown oneadmin: /var/lib/one "
               "/var/lib/one/datastores")
        env = LvmsnapEnv(tb, Path(work))
        image, _ = env.image("worker-image", image_mb, seed=2012)
        print(f"test hypervisor {tb.host} up, VG {VG} on /dev/vdb, "
              f"image {image} ({image_mb} MiB) in {time.monotonic() - started:.1f}s")

        first, seconds = prolog(env, image, 100)
        check(first, "prolog of VM 100")
        show(f"VM 100 prolog (cold: fills the cache) {seconds:.1f}s, oned would log",
             [f"LOG {x.severity} {x.id} {x.text}" for x in first.logs] + [first.result])

        vmids = list(range(101, 101 + workers - 1))
        burst = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(vmids) or 1) as pool:
            results = dict(zip(vmids, pool.map(lambda v: prolog(env, image, v), vmids),
                               strict=True))
        for vmid, (reply, _) in results.items():
            check(reply, f"prolog of VM {vmid}")
        times = sorted(t for _, t in results.values())
        if times:
            print(f"\n{len(vmids)} more workers deployed at once in "
                  f"{time.monotonic() - burst:.1f}s (per VM: min {times[0]:.1f}s, "
                  f"max {times[-1]:.1f}s) from the warm cache")

        volumes = env.lvs()
        show(f"logical volumes in {VG}", [f"{name:28} {v['attr']:10} origin={v['origin'] or '-'}"
                                         for name, v in sorted(volumes.items())])
        show("system datastore monitor (MONITOR reply decoded)",
             [f"{k}={v}" for k, v in oned.decode_monitor_reply(
                 env.monitor(SYS_DS, f"<BRIDGE_LIST>{tb.host}</BRIDGE_LIST>")[-1]).items()])

        for vmid in [100, *vmids]:
            check(epilog(env, vmid), f"epilog of VM {vmid}")
        left = sorted(env.lvs())
        show("after every epilog (the cache stays for the next burst)", left)
        caches = [n for n in left if n.startswith("vaf-cache-")]
        vm_disks = [n for n in left if n.startswith("lv-one-")]
        print(f"\ndemo done in {time.monotonic() - started:.1f}s: {workers} workers deployed "
              f"and deleted, image copied once into {len(caches)} cache volume, "
              f"{len(vm_disks)} VM disks left")
        if len(caches) != 1 or vm_disks:
            raise SystemExit("unexpected volumes left: " + ", ".join(left))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8, help="worker VMs to deploy (8)")
    parser.add_argument("--image-mb", type=int, default=64, help="image size in MiB (64)")
    args = parser.parse_args()
    run(max(1, args.workers), args.image_mb)


if __name__ == "__main__":
    main()
