"""The host-monitoring stand-in: probes run as monitord-client runs them, oned's host share,
and the scheduler's system-DS capacity check (tables, plus real probe programs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaf.host.runner import Runner
from vaf.lab.monitord import (
    Disk,
    HostShare,
    ProbeFailure,
    eligible_hosts,
    parse_template,
    run_system_probes,
    system_ds_usage,
)
from vaf.lab.monitord import test_ds_capacity as fits

STOCK = """DS_LOCATION_USED_MB  = 100
DS_LOCATION_TOTAL_MB = 1000
DS_LOCATION_FREE_MB  = 900
"""


@pytest.mark.parametrize(("text", "items"), [
    ("A = 1\n", [("A", "1")]),
    ('NAME = "two words"\n', [("NAME", "two words")]),
    ("DS = [ ID = 100,\n  USED_MB = 1,\n  FREE_MB = 7 ]\n",
     [("DS", {"ID": "100", "USED_MB": "1", "FREE_MB": "7"})]),
    ('v = [ a = "x \\" y" ]', [("V", {"A": 'x " y'})]),
])
def test_template_syntax(text, items):
    assert parse_template(text) == items


def test_a_template_with_garbage_is_refused():
    with pytest.raises(ValueError):
        parse_template("A = = 1")


def test_host_share_takes_the_ds_vectors_and_the_location_free_space():
    share = HostShare.from_monitoring(STOCK + "DS = [ ID = 100, FREE_MB = 50 ]\n"
                                      "DS = [ ID = 100, FREE_MB = 70 ]\n")
    assert share == HostShare(900, {100: 70})  # the last entry of an id wins


@pytest.mark.parametrize(("ds_free", "need", "ok"), [
    ({100: 1000}, 999, True),
    ({100: 1000}, 1000, False),  # strictly less than the free space
    ({}, 800, True),  # no entry for the DS: the host's FREE_DISK (900) is used
    ({}, 900, False),
])
def test_capacity_check(ds_free, need, ok):
    assert fits(HostShare(900, ds_free), 100, need) is ok


def test_system_ds_usage_counts_volatile_and_system_targeted_disks():
    disks = [Disk(2048), Disk(1024, volatile=True), Disk(4096, tm_target="SELF")]
    assert system_ds_usage(disks) == 3072


def test_a_host_whose_ds_is_full_is_not_eligible():
    shares = {"hv1": HostShare(900, {100: 0}), "hv2": HostShare(900, {100: 50_000})}
    assert eligible_hosts(shares, 100, 20_480) == ["hv2"]


def probes_tree(tmp_path: Path, probes: dict[str, str]) -> Path:
    directory = tmp_path / "im" / "kvm-probes.d" / "host" / "system"
    directory.mkdir(parents=True)
    for name, body in probes.items():
        path = directory / name
        path.write_text(body)
        path.chmod(0o755)
    (directory / "not-executable").write_text("#!/bin/sh\necho NOPE=1\n")
    return tmp_path


def test_probes_run_in_name_order_with_the_config_on_stdin(tmp_path):
    remotes = probes_tree(tmp_path, {
        "b_second": "#!/bin/sh\necho 'DS = [ ID = 100, FREE_MB = 5 ]'\n",
        "a_first": "#!/bin/sh\nprintf 'CONFIG_BYTES = %s\\n' \"$(wc -c)\"\n",
    })
    out = run_system_probes(Runner(), str(remotes), config_xml="<HOST_MONITORING/>")
    assert out == "CONFIG_BYTES = 18\nDS = [ ID = 100, FREE_MB = 5 ]\n"


def test_a_failing_probe_fails_the_host_monitoring(tmp_path):
    remotes = probes_tree(tmp_path, {"a": "#!/bin/sh\necho 'no vg' >&2\nexit 1\n"})
    with pytest.raises(ProbeFailure, match="Error executing a: no vg"):
        run_system_probes(Runner(), str(remotes))
