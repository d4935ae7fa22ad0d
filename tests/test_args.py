"""Driver arguments exactly as oned writes them in transfer files (protocol §4)."""

import pytest

from vaf.errors import ProtocolError
from vaf.one.args import (
    HostPath,
    disk_id_from_path,
    expect_args,
    parse_host_path,
    parse_id,
    parse_size_mb,
    system_ds_from_path,
)


@pytest.mark.parametrize("text, expected", [
    ("node1:/var/lib/one/datastores/100/7/disk.0",
     HostPath("node1", "/var/lib/one/datastores/100/7/disk.0")),
    ("fe.example:/var/lib/one//datastores/1/8f3a",
     HostPath("fe.example", "/var/lib/one/datastores/1/8f3a")),
    ("node-2.cluster.example:/a/b/", HostPath("node-2.cluster.example", "/a/b")),
    ("10.1.2.3:/x", HostPath("10.1.2.3", "/x")),
    ("/var/lib/one/vms/7/context.sh", HostPath(None, "/var/lib/one/vms/7/context.sh")),
    ("//double/lead", HostPath(None, "/double/lead")),
])
def test_host_path_accepted(text, expected):
    assert parse_host_path(text) == expected


@pytest.mark.parametrize("text, message", [
    ("node1:relative/path", "not of the form host:/absolute/path"),
    ("relative", "not of the form"),
    ("node1:", "not of the form"),
    ("-oProxyCommand=x:/path", "invalid host"),
    ("no de:/path", "invalid host"),
    ("node;rm:/path", "invalid host"),
    ("node1:/a/../etc/passwd", "must not contain '..'"),
    ("node1:/a\nb", "control character"),
    ("nödé:/path", "invalid host"),
])
def test_host_path_refused(text, message):
    with pytest.raises(ProtocolError, match=message):
        parse_host_path(text)


def test_host_path_parts():
    hp = parse_host_path("node1:/var/lib/one/datastores/100/7/disk.3")
    assert (hp.dirname, hp.basename, str(hp)) == (
        "/var/lib/one/datastores/100/7", "disk.3", "node1:/var/lib/one/datastores/100/7/disk.3")


@pytest.mark.parametrize("text, ok", [
    ("0", True), ("7", True), ("4294967295", True),
    ("-1", False), ("7a", False), ("", False), (" 7", False), ("1e3", False), ("٣", False),
])
def test_ids(text, ok):
    if ok:
        assert parse_id(text, "VM id") == int(text)
    else:
        with pytest.raises(ProtocolError, match="VM id must be a non-negative integer"):
            parse_id(text, "VM id")


@pytest.mark.parametrize("text, expected", [("1024", 1024), ("2048.0", 2048), ("1", 1)])
def test_sizes(text, expected):
    assert parse_size_mb(text) == expected


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "ten", "", "nan", "inf"])
def test_bad_sizes(text):
    with pytest.raises(ProtocolError, match="size"):
        parse_size_mb(text)


@pytest.mark.parametrize("path, disk, sysds", [
    ("/var/lib/one/datastores/100/7/disk.0", 0, 100),
    ("/srv/one/ds/0/12345/disk.17", 17, 0),
])
def test_disk_and_system_ds(path, disk, sysds):
    assert disk_id_from_path(path) == disk
    assert system_ds_from_path(path) == sysds


def test_system_ds_of_vm_dir():
    assert system_ds_from_path("/var/lib/one/datastores/101/7") == 101


@pytest.mark.parametrize("path", ["/var/lib/one/datastores/100/7/disk.x", "/a/disk.", "/disk.1a"])
def test_not_a_disk(path):
    with pytest.raises(ProtocolError, match="not a VM disk path"):
        disk_id_from_path(path)


def test_system_ds_unparseable():
    with pytest.raises(ProtocolError, match="cannot find the system datastore id"):
        system_ds_from_path("/var/lib/one/datastores/system/7/disk.0")


def test_expect_args_fixed():
    assert expect_args(["a", "b"], ["SRC", "DST"], "mv") == {"SRC": "a", "DST": "b"}
    with pytest.raises(ProtocolError, match=r"mv expects 2 arguments \(SRC DST\), got 3"):
        expect_args(["a", "b", "c"], ["SRC", "DST"], "mv")


def test_expect_args_variadic_from_the_end():
    argv = ["/vms/7/context.sh", "/ds/1/abc:'init.sh'", "node2:/ds/100/7/disk.5", "7", "100"]
    named = expect_args(argv, ["DST", "VMID", "DSID"], "context", variadic="SOURCES")
    assert named == {"SOURCES": argv[:2], "DST": argv[2], "VMID": "7", "DSID": "100"}
    with pytest.raises(ProtocolError, match="at least 3"):
        expect_args(["7", "100"], ["DST", "VMID", "DSID"], "context", variadic="SOURCES")
