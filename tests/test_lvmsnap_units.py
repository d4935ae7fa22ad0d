"""lvmsnap without a hypervisor: the argv we build, cache keys and eviction, relaying, conf."""

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from vaf.drivers.lvmsnap import actions as lvmsnap
from vaf.drivers.lvmsnap import cache as lvmsnap_cache
from vaf.drivers.lvmsnap import monitor as lvmsnap_monitor
from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.cache import ImageStat, NoRoom, choose_evictions, classic_cow_mb
from vaf.drivers.lvmsnap.settings import SETTINGS, Settings
from vaf.errors import DriverError, ProtocolError
from vaf.host import blockcopy, confine, fs, iso
from vaf.host import lvm as L
from vaf.host.runner import CommandError, HostUnreachable, Runner
from vaf.one import remote
from vaf.one.dispatch import locate

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, expected", [
    (L.lvs_argv("vg-one-100"),
     "lvs --noheadings --units b --nosuffix --separator | -o lv_name,lv_attr,lv_size,origin,"
     "pool_lv,data_percent,metadata_percent,lv_tags vg-one-100"),
    (L.lvcreate_linear_argv("vg", "vaf-fill-ab", 64, ["vaf.lvmsnap", "vaf.src=/d/1/x y"],
                            wipe=False),
     "lvcreate --yes -n vaf-fill-ab -L 64m --wipesignatures n -Z n --addtag vaf.lvmsnap "
     "--addtag vaf.src=/d/1/x_y vg"),
    (L.lvcreate_linear_argv("vg", "lv-one-7-1", 2048),
     "lvcreate --yes -n lv-one-7-1 -L 2048m --wipesignatures y -Z y vg"),
    (L.lvcreate_pool_argv("vg", "vaf-pool", "50%VG"),
     "lvcreate --yes --type thin-pool -n vaf-pool -l 50%VG -Z y --addtag vaf.pool vg"),
    (L.lvcreate_pool_argv("vg", "vaf-pool", 512),
     "lvcreate --yes --type thin-pool -n vaf-pool -L 512m -Z y --addtag vaf.pool vg"),
    (L.lvcreate_pool_argv("vg", "vaf-pool", "2G"),
     "lvcreate --yes --type thin-pool -n vaf-pool -L 2G -Z y --addtag vaf.pool vg"),
    (L.lvcreate_thin_argv("vg", "vaf-pool", "lv-one-7-2", 40960),
     "lvcreate --yes --thinpool vg/vaf-pool -n lv-one-7-2 -V 40960m -k n"),
    (L.lvcreate_thin_snapshot_argv("vg", "vaf-pool", "vaf-cache-ab", "lv-one-7-0",
                                   ["vaf.lvmsnap"]),
     "lvcreate --yes -s --thinpool vg/vaf-pool -n lv-one-7-0 -k n --addtag vaf.lvmsnap "
     "vg/vaf-cache-ab"),
    (L.lvcreate_classic_snapshot_argv("vg", "vaf-cache-ab", "lv-one-7-0", 74),
     "lvcreate --yes -s -n lv-one-7-0 -L 74m -p rw vg/vaf-cache-ab"),
    (L.lvremove_argv("vg", "lv-one-7-0"), "lvremove -f vg/lv-one-7-0"),
    (L.lvrename_argv("vg", "vaf-fill-ab", "vaf-cache-ab"), "lvrename vg vaf-fill-ab vaf-cache-ab"),
    (L.lvchange_argv("vg", "x", readonly=True), "lvchange -p r vg/x"),
    (L.lvchange_argv("vg", "x", activate=True), "lvchange -a y -K vg/x"),
    (L.lvchange_argv("vg", "x", activate=False), "lvchange -a n vg/x"),
    (L.lvchange_argv("vg", "x", del_tags=["vaf.used=1"], add_tags=["vaf.used=2"]),
     "lvchange --deltag vaf.used=1 --addtag vaf.used=2 vg/x"),
    (L.lvextend_argv("vg", "lv-one-7-0", 100), "lvextend -L 100m vg/lv-one-7-0"),
    (fs.mkfs_argv("xfs", "/dev/vg/a"), "mkfs.xfs -f -q /dev/vg/a"),
    (fs.mkfs_argv("xfs", "/dev/vg/a", thin=True), "mkfs.xfs -f -q -K /dev/vg/a"),
    (fs.mkfs_argv("ext3", "/dev/vg/a"), "mkfs.ext3 -F -q /dev/vg/a"),
    (fs.mkfs_argv("ext4", "/dev/vg/a", thin=True), "mkfs.ext4 -F -q -E nodiscard /dev/vg/a"),
    (fs.mkswap_argv("/dev/vg/a"), "mkswap -f /dev/vg/a"),
    (iso.iso_argv("genisoimage", "/t/c.iso", "/t/d"),
     "genisoimage -quiet -o /t/c.iso -V CONTEXT -J -R /t/d"),
    (iso.iso_argv("xorriso", "/t/c.iso", "/t/d"),
     "xorriso -as mkisofs -quiet -o /t/c.iso -V CONTEXT -J -R /t/d"),
])
def test_argv_builders(argv, expected):
    assert " ".join(argv) == expected


def test_lvchange_needs_something_to_change():
    with pytest.raises(ValueError):
        L.lvchange_argv("vg", "x")


def test_mkfs_refuses_unknown_filesystems():
    with pytest.raises(ValueError, match="unsupported filesystem 'ntfs'"):
        fs.mkfs_argv("ntfs", "/dev/x")


LVS_OUTPUT = """\
  vaf-cache-aaa|-ri-ao----|67108864|||||vaf.lvmsnap,vaf.src=/ds/1/a,vaf.used=100
  vaf-cache-bbb|-ri-a-----|134217728|||||vaf.lvmsnap,vaf.src=/ds/1/b,vaf.used=50
  vaf-cache-ccc|-ri-a-----|33554432|||||vaf.lvmsnap,vaf.src=/ds/1/c,vaf.used=200
  vaf-fill-ddd|-wi-ao----|33554432|||||vaf.lvmsnap
  vaf-pool|twi-aotz--|1073741824|||12.50|3.10|vaf.pool
  lv-one-7-0|Vwi-aotz--|67108864|vaf-cache-aaa|vaf-pool|1.20||vaf.lvmsnap
  lv-one-8-0|swi-a-s---|71303168|vaf-cache-ccc||45.00||vaf.lvmsnap
  lv-one-9-0|Swi-I-s---|71303168|vaf-cache-ccc||100.00||
"""


def volumes():
    return L.parse_lvs(LVS_OUTPUT)


def test_parse_lvs_reads_every_field():
    lv = volumes()["lv-one-7-0"]
    assert (lv.origin, lv.pool, lv.size_mb, lv.data_percent, lv.active, lv.open) == (
        "vaf-cache-aaa", "vaf-pool", 64, 1.2, True, True)
    assert volumes()["vaf-pool"].is_thin_pool
    assert volumes()["vaf-cache-bbb"].tag("vaf.used") == "50"
    assert volumes()["lv-one-9-0"].invalid


@pytest.mark.parametrize("attr, invalid", [
    ("swi-a-s---", False), ("swi-I-s---", True),  # lvm 2.03: the state column says it
    ("Swi-I-s---", True), ("Swi-a-s---", True),  # older lvm: a leading S
    ("swi-m-s---", True)])
def test_an_overflowed_classic_snapshot_is_invalid_however_lvm_shows_it(attr, invalid):
    lv = L.LogicalVolume("lv-one-1-0", attr, 1, "vaf-cache-a", "", 100.0, None, ())
    assert lv.is_classic_snapshot and lv.invalid is invalid


@pytest.mark.parametrize("argv, name", [
    (L.lvcreate_linear_argv("vg-one-1", "lv-one-7-0", 8, ["vaf.lvmsnap"]), "lv-one-7-0"),
    (L.lvcreate_thin_snapshot_argv("vg-one-1", "vaf-pool", "vaf-cache-a", "lv-one-7-0",
                                   ["vaf.lvmsnap"]), "lv-one-7-0"),
    (L.lvchange_argv("vg-one-1", "vaf-cache-a", add_tags=["vaf.used=2"]), "vaf-cache-a"),
    (L.lvremove_argv("vg-one-1", "lv-one-7-0"), "lv-one-7-0"),
    (L.lvs_argv("vg-one-1"), "vg-one-1")])
def test_timing_lines_name_the_volume_not_a_tag(argv, name):
    assert L.subject(argv) == name


class _Settings:
    def __init__(self, mode="thin", volatile="thin", overcommit=1.0, pool_size="50%VG"):
        self.mode, self.volatile, self.overcommit = mode, volatile, overcommit
        self.pool, self.pool_size = "vaf-pool", pool_size


@pytest.mark.parametrize("settings, expected", [
    # the pool: 1024 MB; its thin volume lv-one-7-0: 64 MB
    (_Settings(), (1024, 64, 960)),
    (_Settings(overcommit=2.0), (2048, 64, 1984)),
    # thick volumes and classic snapshots: VG free + unused caches (bbb; aaa, ccc in use)
    (_Settings(mode="classic", volatile="thick"), (4096, 4096 - 1128, 1128))])
def test_capacity_is_what_new_disks_can_get(settings, expected):
    vg = L.VgUsage(total_mb=4096, free_mb=1000)
    assert tuple(lvmsnap_monitor.capacity(vg, volumes(), settings)) == expected


def test_capacity_without_a_pool_yet_and_of_a_full_pool():
    vg = L.VgUsage(total_mb=4096, free_mb=4096)
    assert tuple(lvmsnap_monitor.capacity(vg, {}, _Settings())) == (2048, 0, 2048)
    assert lvmsnap_monitor.planned_pool_mb("2G", vg) == 2048
    assert lvmsnap_monitor.planned_pool_mb("25%FREE", L.VgUsage(4096, 400)) == 100
    full = L.parse_lvs("  vaf-pool|twi-aotz--|1073741824|||100.00|3.10|vaf.pool\n")
    assert lvmsnap_monitor.capacity(vg, full, _Settings()).free_mb == 0
    line = lvmsnap_monitor.ds_line(100, lvmsnap_monitor.Capacity(2048, 48, 2000))
    assert line == "DS = [ ID = 100, USED_MB = 48, TOTAL_MB = 2048, FREE_MB = 2000 ]"


def test_lvm_overcommit_warning_is_recognised():
    warning = ("  WARNING: Sum of all thin volume sizes (2.00 GiB) exceeds the size of thin "
               "pool vg-one-100/vaf-pool (1.00 GiB).\n")
    assert L.thin_overcommitted(warning) and not L.thin_overcommitted("  Logical volume ok\n")


def test_orphans_superseded_caches_and_a_vms_volumes():
    vols = volumes()
    assert lvmsnap_monitor.orphans(vols, {"lv-one-7-0"}) == ["lv-one-8-0"]  # 9-0: not vaf's
    assert lvmsnap_cache.vm_volumes(vols, 7) == ["lv-one-7-0"]
    assert lvmsnap_cache.vm_volumes(vols, 9) == []  # no vaf tag: never ours to remove
    assert lvmsnap_cache.superseded_caches(vols, "/ds/1/b", "vaf-cache-new") == ["vaf-cache-bbb"]
    assert lvmsnap_cache.superseded_caches(vols, "/ds/1/a", "vaf-cache-new") == []  # in use


def test_parse_lvs_rejects_garbage():
    with pytest.raises(DriverError, match="unexpected lvs output"):
        L.parse_lvs("  a|b\n")


@pytest.mark.parametrize("free, need, keep, expected", [
    (100, 50, (), []),  # fits: evict nothing
    (10, 50, (), ["vaf-cache-bbb"]),  # oldest unused first (aaa and ccc have snapshots)
    (10, 200, (), None),  # even all unused caches would not do: evict nothing
    (10, 50, ("vaf-cache-bbb",), None),  # the cache being used is kept
])
def test_eviction_is_lru_of_unused_caches(free, need, keep, expected):
    if expected is None:
        with pytest.raises(NoRoom):
            choose_evictions(volumes(), free, need, keep)
    else:
        assert choose_evictions(volumes(), free, need, keep) == expected


def test_unused_caches_go_oldest_first():
    vols = L.parse_lvs(LVS_OUTPUT.replace("|vaf-cache-ccc|", "|other|"))
    assert choose_evictions(vols, 0, 150, ()) == ["vaf-cache-bbb", "vaf-cache-ccc"]


def test_caches_in_use_and_stale_fills():
    assert lvmsnap_cache.caches_in_use(volumes()) == {"vaf-cache-aaa", "vaf-cache-ccc"}
    assert lvmsnap_cache.stale_fills(volumes().values()) == ["vaf-fill-ddd"]


@pytest.mark.parametrize("origin, percent, expected", [
    (64, 100, 64 + 2 + 8), (1024, 100, 1024 + 32 + 8), (1024, 50, 512), (10, 1, 8)])
def test_classic_cow_never_overflows_at_100_percent(origin, percent, expected):
    assert classic_cow_mb(origin, percent) == expected


def test_cache_key_follows_content_changes_not_metadata(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(b"a" * 100)
    first = ImageStat.of(str(image))
    assert ImageStat.of(str(image)).key == first.key
    image.chmod(0o600)  # ctime changes, the bytes do not: the same cache
    os.link(image, tmp_path / "another-name")
    assert ImageStat.of(str(image)).key == first.key
    image.write_bytes(b"b" * 100)  # same size, same path: new content
    assert ImageStat.of(str(image)).key != first.key
    replacement = tmp_path / "img.new"
    replacement.write_bytes(b"a" * 100)
    os.utime(replacement, ns=(first.mtime_ns, first.mtime_ns))  # old mtime, renamed over
    os.replace(replacement, image)
    assert ImageStat.of(str(image)).key != first.key  # a new inode
    assert lvmsnap_cache.cache_name(first.key).startswith("vaf-cache-")
    assert not lvmsnap_cache.cache_name(first.key).startswith("lv-one-")


def test_vm_disk_names():
    assert lvmsnap_cache.vm_disk_name(7, 0) == "lv-one-7-0"
    assert lvmsnap_cache.parse_vm_disk_name("lv-one-7-12") == (7, 12)
    assert lvmsnap_cache.parse_vm_disk_name("vaf-cache-7") is None


def test_monitor_lines_and_warnings():
    lines = lvmsnap_monitor.monitor_lines(volumes())
    assert "LVMSNAP_CACHES=3" in lines
    assert 'LVMSNAP_THIN_POOL=[NAME="vaf-pool",SIZE_MB="1024",DATA_PERCENT="12.50",' \
           'METADATA_PERCENT="3.10"]' in lines
    assert 'LVMSNAP_SNAPSHOT=[NAME="lv-one-8-0",ORIGIN="vaf-cache-ccc",DATA_PERCENT="45.00",' \
           'VALID="YES"]' in lines
    assert lvmsnap_monitor.fullness_warnings(volumes(), 40) == [
        "snapshot lv-one-8-0 is 45.0% full", "snapshot lv-one-9-0 is overflowed (invalid)"]


@pytest.mark.parametrize("size", [0, 1, 511, 512, 4097, 1024 * 1024 + 1, 3 * 65536])
def test_block_copy_handles_any_image_size_and_zeroes_the_rest(tmp_path, size):
    # a regular file stands in for the volume (O_DIRECT works on most local filesystems)
    image, device = tmp_path / "img", tmp_path / "dev"
    data = os.urandom(size)
    image.write_bytes(data)
    device.write_bytes(b"x" * (4 * 1024 * 1024))  # a reused volume's old content
    fd = os.open(image, os.O_RDONLY)
    try:
        done = blockcopy.copy_to_device(fd, size, str(device), block=65536, what="t",
                                        report=lambda _: None, every=0)
    except OSError as err:
        if err.errno == 22:
            pytest.skip("this filesystem has no O_DIRECT")
        raise
    finally:
        os.close(fd)
    assert done == size
    written = device.read_bytes()
    assert written[:size] == data and written[size:] == bytes(len(written) - size)


def test_block_copy_stops_when_cancelled(tmp_path):
    image, device = tmp_path / "img", tmp_path / "dev"
    image.write_bytes(b"a" * 65536 * 4)
    device.write_bytes(bytes(65536 * 4))
    fd = os.open(image, os.O_RDONLY)
    try:
        with pytest.raises(blockcopy.Cancelled):
            blockcopy.copy_to_device(fd, 65536 * 4, str(device), block=65536, what="t",
                                     report=lambda _: None, every=0, cancelled=lambda: True)
    except OSError:
        pytest.skip("this filesystem has no O_DIRECT")
    finally:
        os.close(fd)


@pytest.mark.parametrize("text, expected", [("4M", 4 << 20), ("64K", 65536), ("8192", 8192)])
def test_block_sizes(text, expected):
    assert blockcopy.parse_block_size(text) == expected


@pytest.mark.parametrize("text", ["1e3", "-4M", "4097", "1G1", "", "128M"])
def test_bad_block_sizes(text):
    with pytest.raises(ValueError):
        blockcopy.parse_block_size(text)


@pytest.mark.parametrize("fmt, disk_fs, default, size, expected", [
    ("raw", None, "xfs", 300, "xfs"), ("raw", "ext4", "xfs", 300, "ext4"),
    ("raw", None, "raw", 300, "raw"), ("ext3", None, "xfs", 300, "ext3"),
    ("qcow2", "XFS", "raw", 1024, "xfs"),
    ("raw", None, "xfs", 299, "ext4"),  # XFS only as the default: a small disk gets ext4
    ("raw", None, "xfs", 16, "ext4"), ("raw", "ext2", "xfs", 16, "ext2")])
def test_mkimage_filesystem_choice(fmt, disk_fs, default, size, expected):
    assert lvmsnap.mkimage_fs(fmt, disk_fs, default, size) == expected


def test_a_small_disk_that_asks_for_xfs_is_refused_with_the_reason():
    with pytest.raises(DriverError, match=r"^XFS needs at least 300 MB .* this disk has 64 MB: "
                                          r"use FS=ext4 or a larger SIZE$"):
        lvmsnap.mkimage_fs("raw", "xfs", "xfs", 64)


def test_mkimage_refuses_unknown_filesystem():
    with pytest.raises(DriverError, match="unsupported filesystem 'ntfs'"):
        lvmsnap.mkimage_fs("raw", "ntfs", "xfs")


def test_context_file_names():
    assert lvmsnap.context_file("/var/lib/one/vms/7/context.sh") == (
        "/var/lib/one/vms/7/context.sh", "context.sh")
    assert lvmsnap.context_file("/ds/1/abc:'init.sh'") == ("/ds/1/abc", "init.sh")
    with pytest.raises(Exception, match="invalid context file"):
        lvmsnap.context_file("/ds/1/abc:'../x'")


def test_settings_come_from_the_conf(tmp_path):
    conf = tmp_path / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("SNAPSHOT_MODE=classic\nCLASSIC_COW_PERCENT=50\nTHIN_POOL_SIZE=1G\n")
    inv = locate(str(tmp_path / "tm" / "lvmsnap" / "clone"), [], environ={})
    got = lvmsnap.settings(inv, 100)
    assert (got.mode, got.cow_percent, got.pool_size, got.overcommit) == (
        "classic", 50, "1G", 1.0)
    assert Settings.from_json(got.to_json()) == got
    assert not {"vg", "lock_dir", "sudo"} & set(got.to_json())  # no place comes from the conf


def test_bad_conf_value_is_one_clear_line(tmp_path):
    conf = tmp_path / "etc" / "tm" / "lvmsnap" / "lvmsnap.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("SNAPSHOT_MODE=fancy\n")
    inv = locate(str(tmp_path / "tm" / "lvmsnap" / "clone"), [], environ={})
    with pytest.raises(Exception, match="SNAPSHOT_MODE .* must be one of thin, classic"):
        lvmsnap.settings(inv, 100)


def test_relay_passes_tagged_lines_and_keeps_the_reason():
    out = io.StringIO()
    relay = remote.Relay(out)
    for line in ["INFO: 7 lvmsnap/clone: filling", "ERROR: 7 lvmsnap/clone: stderr: x",
                 "volume group vg-one-100 has 3 MB free"]:
        relay.line(line)
    assert out.getvalue() == "INFO: 7 lvmsnap/clone: filling\nERROR: 7 lvmsnap/clone: stderr: x\n"
    failure = relay.failure(CommandError(["python3"], "testhv", 1), "lvmsnap clone")
    assert failure.reason == "volume group vg-one-100 has 3 MB free"
    assert failure.details() == []


KILLED = ("lvmsnap clone on testhv was killed before it finished (by a signal: an admin, the "
          "OOM killer, a reboot)")


@pytest.mark.parametrize("tagged", [True, False])
def test_a_host_command_killed_by_a_signal_is_not_reported_as_an_ssh_failure(tagged):
    relay = remote.Relay(io.StringIO())
    if tagged:
        relay.line("INFO: 7 lvmsnap/clone: filling cache from /x (8 MB)")
    failure = relay.failure(HostUnreachable(["sudo"], "testhv", 255), "lvmsnap clone")
    assert failure.reason == KILLED  # also when it was killed before writing anything
    silent = remote.Relay(io.StringIO())
    silent.line("ssh: connect to host testhv port 22: Connection refused")
    err = HostUnreachable(["sudo"], "testhv", 255, stderr="ssh: connect refused")
    assert silent.failure(err, "lvmsnap clone") is err


@pytest.mark.parametrize("stderr", [
    "sudo: a password is required",
    "Sorry, user oneadmin is not allowed to execute '/usr/lib/vaf/vaf-privileged lvmsnap-clone'"
    " as root on testhv.",
    "sudo: /usr/lib/vaf/vaf-privileged: command not found"])
def test_a_host_without_the_privileged_install_is_told_to_run_install_host(stderr):
    relay = remote.Relay(io.StringIO())
    relay.line(stderr)
    failure = remote.privileged_failure(relay, CommandError(["sudo"], "testhv", 1),
                                        "lvmsnap clone")
    assert failure.reason.startswith("lvmsnap clone: sudo cannot run /usr/lib/vaf/"
                                     "vaf-privileged on testhv")
    assert failure.reason.endswith("run install.sh host on testhv")


@pytest.mark.parametrize("stderr, expected", [
    ("dd: error writing '/dev/x': Invalid argument\n1+0 records in\n0+0 records out\n"
     "0 bytes copied, 0.1 s, 0 B/s\n", "dd: error writing '/dev/x': Invalid argument"),
    ("  --size may not be zero.\n  Run `lvcreate --help' for more information.\n",
     "--size may not be zero."),
    ("Filesystem must be larger than 300MB.\nUsage: mkfs.xfs\n/* blocksize */\t\t[-b size]\n",
     "Filesystem must be larger than 300MB."),
    ('  Volume group "vg-one-9" not found\n  Cannot process volume group vg-one-9\n',
     'Volume group "vg-one-9" not found'),
    ("one line\n", "one line")])
def test_the_reason_is_the_line_that_names_the_cause(stderr, expected):
    assert CommandError(["dd"], None, 1, stderr=stderr).reason == f"dd failed: {expected}"


def test_every_fs_lvm_action_exists_in_remotes():
    fs_lvm_actions = ("activate clone context cpds delete failmigrate ln mkimage mkswap monitor "
                      "mv mvds postbackup postbackup_live postmigrate prebackup prebackup_live "
                      "premigrate resize restore snap_create snap_create_live snap_delete "
                      "snap_revert").split()
    for action in fs_lvm_actions:
        assert action in lvmsnap.ACTIONS
        assert (REPO / "remotes" / "tm" / "lvmsnap" / action).exists(), action


def test_unsupported_action_fails_with_one_clear_line():
    proc = subprocess.run([str(REPO / "remotes" / "tm" / "lvmsnap" / "snap_create"),
                           "h:/d/100/7/disk.0", "0", "7", "1"],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "lvmsnap does not support snap_create (no disk snapshots or backups on lvmsnap "
        "datastores)"]


def test_bad_argument_is_one_clear_line():
    proc = subprocess.run([str(REPO / "remotes" / "tm" / "lvmsnap" / "clone"),
                           "fe:/ds/1/img", "testhv:/var/lib/one/datastores/100/7/disk.x", "7",
                           "1"], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == ("'/var/lib/one/datastores/100/7/disk.x' is not a VM disk path "
                           "(.../disk.<id>)\n")


def run_privileged(verb: str, stdin: bytes, tmp_path) -> subprocess.CompletedProcess:
    """The entry point as sudo runs it (from the tree, with an empty conf)."""
    conf = tmp_path / "privileged.conf"
    conf.write_text("")
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from vaf.drivers import registry; "
            "from vaf.one.host_command import serve_privileged; "
            f"sys.exit(serve_privileged(sys.argv[1:], {str(conf)!r}, registry))")
    return subprocess.run(["/usr/bin/python3", "-IS", "-c", code, verb], input=stdin,
                          capture_output=True, check=False, env={"PATH": "/usr/bin"})


def test_the_privileged_host_half_reports_bad_input_in_oneds_format(tmp_path):
    proc = run_privileged("lvmsnap-clone", b"{bad\n", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("host command parameters are not valid JSON")
    proc = run_privileged("lvmsnap-frob", b"{}\n", tmp_path)
    assert "unknown privileged command 'lvmsnap-frob'" in proc.stderr.decode()
    assert proc.stderr.decode().rstrip().endswith("run install.sh host on " + os.uname().nodename)


def test_a_request_of_another_version_names_the_fix(tmp_path):
    request = rq.Delete(Settings(), 7, 100, path="/var/lib/one/datastores/100/7",
                        is_disk=False).to_json()
    request["version"] = rq.VERSION - 1
    proc = run_privileged("lvmsnap-delete", json.dumps(request).encode() + b"\n", tmp_path)
    host = os.uname().nodename
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"vaf on {host} speaks request version {rq.VERSION}, the front-end sent "
        f"{rq.VERSION - 1}: run install.sh host on {host}"]


@pytest.mark.parametrize("role, path, ok", [
    ("image", "/var/lib/one/datastores/1/0a1b2c", True),
    ("image", "/var/lib/one/datastores/100/0a1b2c", False),  # the system datastore
    ("image", "/etc/shadow", False),
    ("image", "/var/lib/one/datastores/1/../../../../etc/shadow", False),
    ("image", "/var/lib/one/datastores/1//x", False),
    ("image", "/var/lib/one/datastores/1/sub/x", False),
    ("image", "/var/lib/one/datastores/1/.hidden", False),
    ("disk", "/var/lib/one/datastores/100/7/disk.0", True),
    ("disk", "/var/lib/one/datastores/100/8/disk.0", False),  # another VM
    ("disk", "/var/lib/one/datastores/101/7/disk.0", False),  # another datastore
    ("disk", "/var/tmp/100/7/disk.0", False),
    ("disk", "/var/lib/one/datastores/100/7/disk.0/x", False),
    ("vm_dir", "/var/lib/one/datastores/100/7", True),
    ("vm_dir", "/var/lib/one/datastores/100", False),
    ("vm_dir", "/var/lib/one/datastores/100/7/..", False),
])
def test_request_paths_are_confined_to_their_datastore(role, path, ok):
    stores = confine.Datastores("/var/lib/one/datastores")
    check = {"image": lambda: stores.image(path, 100),
             "disk": lambda: stores.disk(path, 100, 7),
             "vm_dir": lambda: stores.vm_dir(path, 100, 7)}[role]
    if ok:
        check()
    else:
        with pytest.raises(ProtocolError):
            check()


def test_numbers_are_parsed_strictly():
    from vaf.one.args import parse_id, parse_size_mb

    assert parse_id("7", "VM id") == 7 and parse_size_mb("1024.0") == 1024
    for bad in ("7\n", " 7", "+7", "7.0"):
        with pytest.raises(ProtocolError):
            parse_id(bad, "VM id")
    for bad in ("1e3", "1024\n", "-1", "0", "1.5", "nan", "inf", " 64"):
        with pytest.raises(ProtocolError):
            parse_size_mb(bad)


# --- the written contract between the two halves ----------------------------------------------

def _settings():
    return Settings()


@pytest.mark.parametrize("request_type, fields", [
    (rq.Clone, {"src": "/ds/1/img", "dst": "/ds/100/7/disk.0", "disk_id": 0, "size_mb": None}),
    (rq.Mkimage, {"dst": "/ds/100/7/disk.1", "disk_id": 1, "size_mb": 64, "fs": "xfs"}),
    (rq.Delete, {"path": "/ds/100/7", "is_disk": False}),
    (rq.Premigrate, {"sysdir": "/ds/100/7", "disks": [[0, 0], [1, 64]]}),
])
def test_a_request_survives_its_trip_through_json(request_type, fields):
    sent = request_type(_settings(), 7, 100, **fields)
    received = request_type.from_json(json.loads(json.dumps(sent.to_json())))
    assert received == sent
    assert sent.to_json()["version"] == rq.VERSION


@pytest.mark.parametrize("params, message", [
    ({"vmid": 7, "sys_ds": 100, "dst": "/d", "disk_id": 0, "size_mb": 1}, "lacks its settings"),
    ({"settings": {}, "vmid": "7", "sys_ds": 100, "dst": "/d", "disk_id": 0, "size_mb": 1},
     "'vmid' missing or not int"),
    ({"settings": {}, "vmid": 7, "dst": "/d", "disk_id": 0, "size_mb": 1},
     "'sys_ds' missing or not int"),
    ({"settings": {}, "vmid": 7, "sys_ds": -1, "dst": "/d", "disk_id": 0, "size_mb": 1},
     "'sys_ds' out of range"),
    ({"settings": {}, "vmid": 7, "sys_ds": 100, "dst": "/d", "disk_id": True, "size_mb": 1},
     "'disk_id' missing or not int"),
    ({"settings": {}, "vmid": 7, "sys_ds": 100, "disk_id": 0, "size_mb": 1},
     "'dst' missing or not str"),
    ({"settings": {"mode": "fancy"}, "vmid": 7, "sys_ds": 100, "dst": "/d", "disk_id": 0,
      "size_mb": 1}, "settings.mode must be one of thin, classic"),
])
def test_a_malformed_request_is_refused_in_one_line(params, message):
    with pytest.raises(ProtocolError, match=message):
        rq.Mkimage.from_json(params)


def test_monitor_requests_carry_no_vm():
    request = rq.Monitor(_settings(), None, 100, warn_percent=80.0)
    assert rq.Monitor.from_json(request.to_json()).vmid is None
    assert rq.Probe.from_json(rq.Probe(_settings(), None, None).to_json()).sys_ds is None


def test_premigrate_disks_must_be_id_size_pairs():
    assert rq.disk_pairs([[0, 0], [2, 64]]) == [(0, 0), (2, 64)]
    with pytest.raises(ProtocolError, match="must be"):
        rq.disk_pairs([[0, "64"]])


def test_every_host_command_has_a_request_and_a_host_function():
    from vaf.drivers.lvmsnap import host

    assert set(rq.REQUESTS) == set(host.COMMANDS)


def test_every_conf_key_is_documented_with_its_default():
    doc = (REPO / "docs" / "lvmsnap.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.key}`" in doc, setting.key


class _Recorder(Exception):
    pass


@pytest.mark.parametrize("call, expected", [
    (lambda vg: vg.create_linear("lv-one-7-0", 64, ["vaf.lvmsnap"]),
     L.lvcreate_linear_argv("vg-one-100", "lv-one-7-0", 64, ["vaf.lvmsnap"])),
    (lambda vg: vg.create_pool("vaf-pool", "50%VG"),
     L.lvcreate_pool_argv("vg-one-100", "vaf-pool", "50%VG")),
    (lambda vg: vg.snapshot_thin("vaf-pool", "vaf-cache-a", "lv-one-7-0"),
     L.lvcreate_thin_snapshot_argv("vg-one-100", "vaf-pool", "vaf-cache-a", "lv-one-7-0")),
    (lambda vg: vg.snapshot_classic("vaf-cache-a", "lv-one-7-0", 80),
     L.lvcreate_classic_snapshot_argv("vg-one-100", "vaf-cache-a", "lv-one-7-0", 80)),
    (lambda vg: vg.remove("lv-one-7-0"), ["lvremove", "-f", "vg-one-100/lv-one-7-0"]),
    (lambda vg: vg.rename("vaf-fill-a", "vaf-cache-a"),
     ["lvrename", "vg-one-100", "vaf-fill-a", "vaf-cache-a"]),
    (lambda vg: vg.retag("vaf-cache-a", ["vaf.used=1"], ["vaf.used=2"]),
     ["lvchange", "--deltag", "vaf.used=1", "--addtag", "vaf.used=2", "vg-one-100/vaf-cache-a"]),
    (lambda vg: vg.extend("lv-one-7-0", 128), ["lvextend", "-L", "128m", "vg-one-100/lv-one-7-0"]),
])
def test_the_volume_group_runs_each_operation_as_one_lvm_command_with_sudo(call, expected):
    seen = []

    def record(host, argv):
        seen.append(argv)
        raise _Recorder

    vg = L.VolumeGroup("vg-one-100", Runner(sudo_prefix=("sudo", "-n")).observed_by(record))
    with pytest.raises(_Recorder):
        call(vg)
    assert seen == [tuple(expected)]
