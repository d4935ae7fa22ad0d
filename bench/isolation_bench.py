#!/usr/bin/env python3
"""Isolation cost of the 1st VM versus the 100th (99 VMs already isolated), per backend.

Not a test: prints a table of medians and the ratio 100th / 1st (goal: at most 1.5), and
what one firewall command costs through vaf-privileged against the same command run
directly (the listing apply reads first), both measured in the same namespace.
Each repetition runs in a fresh network namespace (root needed), through the same code the
hook and the VNM driver run (policy from the VM XML, host lock, one batch or transaction),
every firewall command through vaf-privileged as ``install.sh host`` lays it out (run
without sudo: the bench is root); only the interpreter start-up of the hook or driver
itself is left out, as it is constant.

    python3 bench/isolation_bench.py [--vms 100] [--repeat 5] [--backend nft]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vaf.config import DriverConfig  # noqa: E402
from vaf.drivers.isolation import Isolation, Settings  # noqa: E402
from vaf.host.netfilter_verbs import Firewall  # noqa: E402
from vaf.host.nft import DIGESTS, TABLE  # noqa: E402
from vaf.host.runner import Runner  # noqa: E402
from vaf.lab.host_install import install_here  # noqa: E402
from vaf.one.log import DriverLog  # noqa: E402
from vaf.one.xml import VM, parse_xml  # noqa: E402

BACKENDS = ("ebtables", "nft")
VMS_PER_NETWORK = 10  # several clusters, as on a real host
SERVICE_MAC = "02:00:0a:ff:ff:01"  # an extra authorized MAC, in the conf's allow-list


def vm(index: int) -> VM:
    network, host = divmod(index, VMS_PER_NETWORK)
    mac = f"02:00:0a:{network // 256:02x}:{network % 256:02x}:{host + 2:02x}"
    xml = (f"<VM><ID>{index}</ID><TEMPLATE><NIC><NIC_ID>0</NIC_ID><MAC>{mac}</MAC>"
           f"<TARGET>one-{index}-0</TARGET><IP>10.{network // 256}.{network % 256}.{host + 2}"
           "</IP></NIC></TEMPLATE><USER_TEMPLATE>"
           f"<EXTRA_AUTHORIZED_MACS>{SERVICE_MAC}"
           "</EXTRA_AUTHORIZED_MACS></USER_TEMPLATE></VM>")
    return VM.from_element(parse_xml(xml))


def timed(action, machine: VM) -> float:
    started = time.perf_counter()
    action(machine, machine.nics)
    return time.perf_counter() - started


def inner(backend: str, count: int, privileged: str) -> dict[str, float]:
    """Inside a fresh namespace: the four timings of one repetition."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_config(DriverConfig({
            "BACKEND": backend, "LOCK_FILE": os.path.join(tmp, "lock"),
            "ALLOWED_EXTRA_MACS": SERVICE_MAC, "PRIVILEGED": privileged}))
        isolation = Isolation(settings, Runner(), DriverLog("bench", stream=io.StringIO()))
        # Warm-up: the host's table, base chains and the binaries' pages exist before the
        # 1st VM, so 1st and 100th differ only by the VMs already isolated.
        warm_up = vm(10_000)
        isolation.apply(warm_up, warm_up.nics)
        isolation.clean(warm_up, warm_up.nics)
        first = vm(0)
        result = {"apply_1st": timed(isolation.apply, first),
                  "clean_1st": timed(isolation.clean, first)}
        for index in range(count - 1):
            isolation.apply(vm(index), vm(index).nics)
        last = vm(count - 1)
        result["apply_nth"] = timed(isolation.apply, last)
        result["clean_nth"] = timed(isolation.clean, last)
        result.update(one_command(backend, Firewall(Runner(), privileged)))
        return result


def one_command(backend: str, firewall: Firewall, times: int = 10) -> dict[str, float]:
    """Median seconds of the first listing apply makes: through vaf-privileged, and the
    same command run directly (what sudo ran before the verbs)."""
    listing = (partial(firewall.nft_list, TABLE, DIGESTS, as_json=True) if backend == "nft"
               else partial(firewall.ebtables_list, "FORWARD"))
    argv = list(listing().argv)

    def median(call) -> float:
        samples = []
        for _ in range(times):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    return {"command_direct": median(lambda: Runner().run(argv)),
            "command_privileged": median(listing)}


def outer(vms: int, repeat: int, backends: list[str]) -> None:
    runner = Runner()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        privileged = str(install_here(tmp))
        for backend in backends:
            rows[backend] = medians(runner, backend, vms, repeat, privileged)
    print_table(rows, vms, repeat)


def medians(runner: Runner, backend: str, vms: int, repeat: int,
            privileged: str) -> dict[str, float]:
    """The median of each timing over ``repeat`` fresh namespaces."""
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        ns = f"vafbench{os.getpid()}{secrets.token_hex(2)}"
        runner.run(["ip", "netns", "add", ns])
        try:
            out = runner.output(["ip", "netns", "exec", ns, sys.executable,
                                 os.path.abspath(__file__), "--inner", backend,
                                 "--vms", str(vms), "--privileged", privileged])
        finally:
            runner.run(["ip", "netns", "del", ns], check=False)
        for key, value in json.loads(out).items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def print_table(rows: dict[str, dict[str, float]], vms: int, repeat: int) -> None:
    print(f"isolation: 1st VM vs {vms}th VM ({vms - 1} already isolated), "
          f"median of {repeat}, milliseconds")
    print(f"{'backend':<10}{'op':<7}{'1st':>9}{f'{vms}th':>9}{'ratio':>8}  goal <= 1.5")
    for backend, row in rows.items():
        for op in ("apply", "clean"):
            first, nth = row[f"{op}_1st"] * 1000, row[f"{op}_nth"] * 1000
            ratio = nth / first
            verdict = "ok" if ratio <= 1.5 else "OVER"
            print(f"{backend:<10}{op:<7}{first:>9.1f}{nth:>9.1f}{ratio:>8.2f}  {verdict}")
    print("one firewall command (apply's first listing), milliseconds")
    print(f"{'backend':<10}{'direct':>9}{'verb':>9}{'ratio':>8}")
    for backend, row in rows.items():
        direct, verb = row["command_direct"] * 1000, row["command_privileged"] * 1000
        print(f"{backend:<10}{direct:>9.1f}{verb:>9.1f}{verb / direct:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", choices=BACKENDS, action="append",
                        help="only this backend (repeatable; default: all)")
    parser.add_argument("--inner", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--privileged", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.inner, args.vms, args.privileged)))
    else:
        outer(args.vms, args.repeat, args.backend or list(BACKENDS))


if __name__ == "__main__":
    main()
