"""lvmsnap without a hypervisor: the argv we build, cache keys and eviction, relaying, conf."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vaf.drivers.lvmsnap import actions as lvmsnap
from vaf.drivers.lvmsnap import cache as lvmsnap_cache
from vaf.drivers.lvmsnap import monitor as lvmsnap_monitor
from vaf.drivers.lvmsnap import requests as rq
from vaf.drivers.lvmsnap.cache import ImageStat, NoRoom, choose_evictions, classic_cow_mb
from vaf.drivers.lvmsnap.settings import SETTINGS, Settings
from vaf.errors import DriverError, ProtocolError
from vaf.host import dd, fs, iso
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
    (dd.dd_argv("/img", "/dev/vg/f", "4M"),
     "dd if=/img of=/dev/vg/f bs=4M status=progress oflag=direct conv=fsync"),
    (dd.dd_argv("/img", "/dev/vg/f", "4M", sparse=True),
     "dd if=/img of=/dev/vg/f bs=4M status=progress oflag=direct conv=fsync,sparse"),
    (dd.dd_argv("/dev/vg/x", "/img.tmp", "4M", count_bytes=1000, direct=False),
     "dd if=/dev/vg/x of=/img.tmp bs=4M status=progress count=1000 "
     "iflag=count_bytes,fullblock conv=fsync,notrunc"),
    (dd.dd_argv("/dev/zero", "/dev/vg/x", "1M", count_bytes=5, seek_bytes=7),
     "dd if=/dev/zero of=/dev/vg/x bs=1M status=progress count=5 iflag=count_bytes,fullblock "
     "seek=7 oflag=direct,seek_bytes conv=fsync"),
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


def test_cache_key_follows_content_changes(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(b"a" * 100)
    first = ImageStat.of(str(image))
    assert ImageStat.of(str(image)).key == first.key
    image.write_bytes(b"b" * 100)  # same size, same path: new content
    os.utime(image, ns=(first.mtime_ns, first.mtime_ns))  # even with the old mtime put back
    assert ImageStat.of(str(image)).key != first.key
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
    assert 'LVMSNAP_SNAPSHOT=[NAME="lv-one-8-0",ORIGIN="vaf-cache-ccc",DATA_PERCENT="45.00"]' \
        in lines
    assert lvmsnap_monitor.fullness_warnings(volumes(), 40) == [
        "snapshot lv-one-8-0 is 45.0% full", "snapshot lv-one-9-0 is overflowed (invalid)"]


def test_dd_progress_parsing():
    err = "1+0 records in\r52428800 bytes (52 MB, 50 MiB) copied, 1 s, 52 MB/s\n" \
          "2+0 records out\n67108864 bytes (67 MB, 64 MiB) copied, 1.3 s, 51 MB/s\n"
    assert dd.dd_copied_bytes(err) == 67108864
    assert dd.dd_copied_bytes("dd: error\n") is None


@pytest.mark.parametrize("fmt, disk_fs, default, expected", [
    ("raw", None, "xfs", "xfs"), ("raw", "ext4", "xfs", "ext4"), ("raw", None, "raw", "raw"),
    ("ext3", None, "xfs", "ext3"), ("qcow2", "XFS", "raw", "xfs")])
def test_mkimage_filesystem_choice(fmt, disk_fs, default, expected):
    assert lvmsnap.mkimage_fs(fmt, disk_fs, default) == expected


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
    assert (got.vg, got.mode, got.cow_percent, got.pool_size) == (
        "vg-one-100", "classic", 50, "1G")
    assert Settings.from_json(got.to_json()) == got


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


def test_a_host_command_killed_by_a_signal_is_not_reported_as_an_ssh_failure():
    relay = remote.Relay(io.StringIO())
    relay.line("INFO: 7 lvmsnap/clone: filling cache from /x (8 MB)")
    failure = relay.failure(HostUnreachable(["python3"], "testhv", 255), "lvmsnap clone")
    assert failure.reason == ("lvmsnap clone on testhv ended abnormally (killed, or the "
                              "connection was lost)")
    silent = remote.Relay(io.StringIO())
    err = HostUnreachable(["python3"], "testhv", 255, stderr="ssh: connect refused")
    assert silent.failure(err, "lvmsnap clone") is err


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


def test_host_command_reports_bad_input_in_oneds_format():
    script = REPO / "remotes" / "vaf" / "host-command"
    proc = subprocess.run(["/usr/bin/python3", str(script), "lvmsnap-clone", "{bad"],
                          capture_output=True, text=True, check=False, env={"PATH": "/usr/bin"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("host command parameters are not valid JSON")
    proc = subprocess.run([sys.executable, str(script), "lvmsnap-frob", json.dumps({})],
                          capture_output=True, text=True, check=False)
    assert "unknown host command 'lvmsnap-frob'" in proc.stderr


# --- the written contract between the two halves ----------------------------------------------

def _settings():
    return Settings(vg="vg-one-100")


@pytest.mark.parametrize("request_type, fields", [
    (rq.Clone, {"src": "/ds/1/img", "dst": "/ds/100/7/disk.0", "disk_id": 0, "size_mb": None}),
    (rq.Mkimage, {"dst": "/ds/100/7/disk.1", "disk_id": 1, "size_mb": 64, "fs": "xfs"}),
    (rq.Delete, {"path": "/ds/100/7", "is_disk": False}),
    (rq.Premigrate, {"sysdir": "/ds/100/7", "disks": [[0, 0], [1, 64]]}),
])
def test_a_request_survives_its_trip_through_json(request_type, fields):
    sent = request_type(_settings(), 7, **fields)
    received = request_type.from_json(json.loads(json.dumps(sent.to_json())))
    assert received == sent
    assert received.settings.sudo == ("sudo", "-n")  # argv lists come back as tuples


@pytest.mark.parametrize("params, message", [
    ({"vmid": 7, "dst": "/d", "disk_id": 0, "size_mb": 1}, "lacks settings.vg"),
    ({"settings": {"vg": "v"}, "vmid": "7", "dst": "/d", "disk_id": 0, "size_mb": 1},
     "'vmid' missing or not int"),
    ({"settings": {"vg": "v"}, "vmid": 7, "dst": "/d", "disk_id": True, "size_mb": 1},
     "'disk_id' missing or not int"),
    ({"settings": {"vg": "v"}, "vmid": 7, "disk_id": 0, "size_mb": 1},
     "'dst' missing or not str"),
    ({"settings": {"vg": "v", "sudo": "sudo -n"}, "vmid": 7, "dst": "/d", "disk_id": 0,
      "size_mb": 1}, "settings.sudo must be a list of strings"),
])
def test_a_malformed_request_is_refused_in_one_line(params, message):
    with pytest.raises(ProtocolError, match=message):
        rq.Mkimage.from_json(params)


def test_monitor_requests_carry_no_vm():
    request = rq.Monitor(_settings(), None, warn_percent=80.0)
    assert rq.Monitor.from_json(request.to_json()).vmid is None


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


def test_a_host_without_vafs_host_command_is_told_to_sync(tmp_path):
    runner = Runner()  # "the host" is this machine, with an empty remotes tree
    with pytest.raises(DriverError, match=r"lvmsnap clone: vaf's host-command is missing on "
                                          r"localhost \(run onehost sync -f\)"):
        remote.call(runner, "lvmsnap-clone", {}, remotes=str(tmp_path),
                    python=("/usr/bin/python3", "-S"))


def test_a_host_with_an_older_host_command_is_told_to_sync():
    with pytest.raises(remote.HostFailure, match=r"unknown host command 'lvmsnap-frob' .* on "
                                                 r"localhost \(its remotes tree is older"):
        remote.call(Runner(), "lvmsnap-frob", {}, remotes=str(REPO / "remotes"),
                    python=("/usr/bin/python3", "-S"), stream=io.StringIO())


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
