"""The test hypervisor does what the driver tests rely on: device-mapper (thin pools, thin
snapshots of an external origin, classic snapshots), passwordless sudo for oneadmin, a shared
directory at the same path on both sides, loop-device VGs, ebtables and nftables."""

import os
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.testbed

VG = "tbvg"
MIB = 1 << 20


@pytest.fixture
def vg(testbed):
    """VG `tbvg` on the guest's empty /dev/vdb, removed afterwards (the disk is shared by the
    whole session, so it must be left empty)."""
    testbed.ssh(["pvcreate", "-q", "/dev/vdb"])
    testbed.ssh(["vgcreate", "-q", VG, "/dev/vdb"])
    yield VG
    testbed.ssh(["vgremove", "-qfy", VG])
    testbed.ssh(["pvremove", "-qfy", "/dev/vdb"])


def write_random(tb, device, mib):
    """Fill the start of a block device with `mib` MiB of random data; return its sha256."""
    tb.ssh(["dd", "if=/dev/urandom", f"of={device}", "bs=1M", f"count={mib}",
            "oflag=direct", "conv=fsync", "status=none"])
    return sha256(tb, device, mib)


def sha256(tb, device, mib):
    script = 'head -c "$2" "$1" | sha256sum | cut -d" " -f1'
    return tb.ssh(["sh", "-c", script, "sh", device, str(mib * MIB)]).stdout.strip()


def lv_attr(tb, lv):
    return tb.ssh(["lvs", "--noheadings", "-o", "lv_attr", lv]).stdout.strip()


def test_thin_snapshot_of_read_only_external_origin(testbed, vg):
    tb = testbed
    tb.ssh(["lvcreate", "-q", "-L", "16M", "-n", "base", vg])
    original = write_random(tb, f"/dev/{vg}/base", 16)
    tb.ssh(["lvchange", "-q", "-p", "r", f"{vg}/base"])
    assert lv_attr(tb, f"{vg}/base")[1] == "r"

    # An external origin must be read-only and inactive when the snapshot is taken.
    tb.ssh(["lvchange", "-q", "-an", f"{vg}/base"])
    tb.ssh(["lvcreate", "-q", "-L", "64M", "-T", f"{vg}/pool"])
    tb.ssh(["lvcreate", "-q", "-s", "--thinpool", f"{vg}/pool", f"{vg}/base", "-n", "clone"])
    # Thin snapshots carry the activation-skip flag (testbed.md pitfall 6).
    tb.ssh(["lvchange", "-q", "-ay", "-K", f"{vg}/clone"])
    tb.ssh(["lvchange", "-q", "-ay", f"{vg}/base"])
    assert sha256(tb, f"/dev/{vg}/clone", 16) == original

    # Writing the clone leaves the read-only origin untouched.
    changed = write_random(tb, f"/dev/{vg}/clone", 4)
    assert changed != sha256(tb, f"/dev/{vg}/base", 4)
    assert sha256(tb, f"/dev/{vg}/base", 16) == original


def test_classic_snapshot_keeps_the_old_contents(testbed, vg):
    tb = testbed
    tb.ssh(["lvcreate", "-q", "-L", "16M", "-n", "origin", vg])
    original = write_random(tb, f"/dev/{vg}/origin", 16)
    tb.ssh(["lvcreate", "-q", "-s", "-L", "16M", "-n", "snap", f"{vg}/origin"])
    tb.ssh(["cmp", f"/dev/{vg}/origin", f"/dev/{vg}/snap"])

    write_random(tb, f"/dev/{vg}/origin", 8)
    assert sha256(tb, f"/dev/{vg}/snap", 16) == original
    assert sha256(tb, f"/dev/{vg}/origin", 16) != original


def test_oneadmin_runs_lvm_with_passwordless_sudo(testbed, vg):
    assert testbed.ssh(["id", "-u"], user="oneadmin").stdout.strip() == "9869"
    out = testbed.ssh(["sudo", "-n", "vgs", "--noheadings", "-o", "vg_name"], user="oneadmin")
    assert VG in out.stdout.split()
    testbed.ssh(["sudo", "-n", "lvs"], user="oneadmin")


def test_shared_dir_has_the_same_path_on_both_sides(testbed):
    tb = testbed
    shared = Path(tb.shared_dir)
    fstype = tb.ssh(["findmnt", "-n", "-o", "FSTYPE", "--target", str(shared)]).stdout
    assert fstype.strip() == "9p"

    # front-end -> hypervisor
    payload = f"from the front-end {uuid.uuid4()}\n"
    (shared / "to_guest.txt").write_text(payload)
    seen = tb.ssh(["cat", str(shared / "to_guest.txt")], user="oneadmin").stdout
    assert seen == payload

    # hypervisor -> front-end, written by oneadmin as a driver would
    payload = f"from the hypervisor {uuid.uuid4()}\n"
    tb.ssh(["sh", "-c", 'cat > "$1"', "sh", str(shared / "to_host.txt")], user="oneadmin",
           input=payload)
    assert (shared / "to_host.txt").read_text() == payload
    assert os.stat(shared / "to_host.txt").st_uid == 9869


def test_loop_vg_is_a_small_vg_that_fills_up_and_goes_away(testbed):
    tb = testbed
    with tb.loop_vg("tbloop", 64) as loop:
        assert loop.device.startswith("/dev/loop")
        tb.ssh(["lvcreate", "-q", "-l", "100%FREE", "-n", "all", loop.name])
        full = tb.ssh(["lvcreate", "-q", "-L", "4M", "-n", "more", loop.name], check=False)
        assert full.returncode != 0
        assert "insufficient free space" in full.stderr.lower()
    assert tb.ssh(["vgs", "tbloop"], check=False).returncode != 0
    assert tb.ssh(["losetup", "-j", loop.image]).stdout == ""
    assert tb.ssh(["test", "-e", loop.image], check=False).returncode == 1


def test_sync_remotes_copies_a_tree_like_onehost_sync(testbed, tmp_path):
    tb = testbed
    (tmp_path / "tm" / "lvm").mkdir(parents=True)
    action = tmp_path / "tm" / "lvm" / "clone"
    action.write_text("#!/bin/sh\necho cloned\n")
    action.chmod(0o755)
    (tmp_path / "tm" / "lvm" / "ln").symlink_to("clone")

    tb.sync_remotes(tmp_path, dest="/var/tmp/one-test")
    try:
        assert tb.ssh(["/var/tmp/one-test/tm/lvm/ln"], user="oneadmin").stdout == "cloned\n"
        assert tb.ssh(["readlink", "/var/tmp/one-test/tm/lvm/ln"]).stdout == "clone\n"
        owners = tb.ssh(["find", "/var/tmp/one-test", "!", "-user", "oneadmin"]).stdout
        assert owners == ""
    finally:
        tb.ssh(["rm", "-rf", "/var/tmp/one-test"])


def test_bridge_filtering_tools_work(testbed):
    tb = testbed
    assert "nf_tables" in tb.ssh(["ebtables", "--version"]).stdout
    assert tb.ssh(["nft", "--version"]).stdout.startswith("nftables")
    # The kernel side too: a bridge-family table needs nf_tables' bridge support.
    tb.ssh(["nft", "add", "table", "bridge", "vaftest"])
    try:
        assert "table bridge vaftest" in tb.ssh(["nft", "list", "tables"]).stdout
    finally:
        tb.ssh(["nft", "delete", "table", "bridge", "vaftest"])
    tb.ssh(["ebtables", "-t", "filter", "-L", "FORWARD"])


def test_ssh_config_serves_plain_ssh(testbed):
    argv = [*testbed.ssh_argv(), "--", "hostname; whoami"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL).stdout
    assert out.split() == ["testhv", "oneadmin"]
