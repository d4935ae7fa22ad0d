"""oned.conf merging: vaf's names join the admin's own driver lists, its entries go in one
marked section, and taking them out gives back the file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from vaf.errors import ConfigError
from vaf.one import oned_conf
from vaf.one.oned_conf import (
    apply,
    driver_list,
    parse,
    plan_add,
    plan_remove,
    with_driver,
    without_driver,
)

REPO = Path(__file__).resolve().parent.parent
FRAGMENTS = [p.read_text() for p in sorted((REPO / "share" / "oned").glob("*.conf"))]

# The stock lines of each version (7.0 has netapp and local, 6.10 has vcenter).
STOCK_70 = '''#*******************************************************************************
# Transfer Manager Driver Configuration
#*******************************************************************************
TM_MAD = [
    EXECUTABLE = "one_tm",
    ARGUMENTS = "-t 15 -d dummy,lvm,shared,fs_lvm,fs_lvm_ssh,qcow2,ssh,local,ceph,dev,\
iscsi_libvirt,netapp"
]

DATASTORE_MAD = [
    EXECUTABLE = "one_datastore",
    ARGUMENTS  = "-t 15 -d dummy,fs,lvm,ceph,dev,iscsi_libvirt,restic,rsync,netapp \
-s dummy,shared,ssh,local,ceph,fs_lvm,fs_lvm_ssh,qcow2,netapp"
]

TM_MAD_CONF = [
    NAME = "ssh", LN_TARGET = "SYSTEM", CLONE_TARGET = "SYSTEM", SHARED = "NO",
    DS_MIGRATE = "YES", ALLOW_ORPHANS = "YES"
]

VN_MAD_CONF = [
    NAME = "bridge",
    BRIDGE_TYPE = "linux"
]
VM_RESTRICTED_ATTR = "NIC/MAC"
DEFAULT_DEVICE_PREFIX = "hd"
MONITORING_INTERVAL_HOST = 180
'''
STOCK_610 = (STOCK_70.replace(",local,ceph,dev,iscsi_libvirt,netapp\"",
                              ",ceph,dev,vcenter,iscsi_libvirt\"")
             .replace("rsync,netapp -s dummy,shared,ssh,local,",
                      "rsync,vcenter -s dummy,shared,ssh,")
             .replace("qcow2,netapp\"", "qcow2,vcenter\""))


def lists(text: str) -> tuple[list[str], list[str]]:
    entries = {e.name: e for e in parse(text)}
    return (driver_list(entries["TM_MAD"].get("ARGUMENTS").text, "-d"),
            driver_list(entries["DATASTORE_MAD"].get("ARGUMENTS").text, "-s"))


@pytest.mark.parametrize("text, expected", [
    ('A = "x"', [("A", "x", ())]),
    ('A = 15\nB = yes # comment', [("A", "15", ()), ("B", "yes", ())]),
    ('T = [ NAME = "n", X = "a, b" ]', [("T", None, (("NAME", "n"), ("X", "a, b")))]),
    ('T = [\n  NAME = "n",\n  # inside\n  X = 1,\n]', [("T", None, (("NAME", "n"), ("X", "1")))]),
    ('S = "with \\"quotes\\" # not a comment"', [("S", 'with "quotes" # not a comment', ())]),
    ('', []),
])
def test_parse(text, expected):
    got = [(e.name, e.value.text if e.value else None,
            tuple((k, v.text) for k, v in e.attributes)) for e in parse(text)]
    assert got == expected


@pytest.mark.parametrize("text, reason", [
    ('A = "open', "line 1: cannot read"),
    ('A "x"', "line 1: expected '=' after A"),
    ('A = 1\nT = [ NAME = "x"', "ends where an attribute or ']' was expected"),
    ('\n\nT = [ = "x" ]', "line 3: expected an attribute name"),
    ('A = ]', "line 1: expected a value"),
])
def test_parse_refuses_with_the_line(text, reason):
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


@pytest.mark.parametrize("arguments, option, name, added, removed", [
    ("-t 15 -d a,b", "-d", "x", "-t 15 -d a,b,x", "-t 15 -d a,b"),
    ("-t 15 -d a,x,b", "-d", "x", "-t 15 -d a,x,b", "-t 15 -d a,b"),
    ("-d a -s b,c", "-s", "x", "-d a -s b,c,x", "-d a -s b,c"),
    ("-d a -s b,c", "-d", "x", "-d a,x -s b,c", "-d a -s b,c"),
    ("-t 15", "-s", "x", "-t 15 -s x", "-t 15"),
    ("-d fs_lvm,ssh", "-d", "lvm", "-d fs_lvm,ssh,lvm", "-d fs_lvm,ssh"),  # whole names only
])
def test_driver_lists(arguments, option, name, added, removed):
    assert with_driver(arguments, option, name) == added
    assert without_driver(arguments, option, name) == removed


@pytest.mark.parametrize("stock, kept", [(STOCK_70, "netapp"), (STOCK_610, "vcenter")])
def test_add_keeps_every_stock_driver_and_is_idempotent(stock, kept):
    tm_before, ds_before = lists(stock)
    merged = apply(stock, plan_add(stock, FRAGMENTS))
    tm_after, ds_after = lists(merged)
    assert tm_after == [*tm_before, "lvmsnap"] and kept in tm_after
    assert ds_after == [*ds_before, "lvmsnap"] and kept in ds_after
    names = {e.identity() for e in parse(merged)}
    assert ("TM_MAD_CONF", "lvmsnap") in names and ("VN_MAD_CONF", "vaf_isolation") in names
    assert ("TM_MAD_CONF", "ssh") in names and ("VN_MAD_CONF", "bridge") in names
    assert plan_add(merged, FRAGMENTS) == []  # a second install changes nothing
    # the admin's lines stay as they were, but for the two names added
    before_section = merged[:merged.index(oned_conf.BEGIN)]
    assert before_section.replace(",lvmsnap", "") == stock + "\n"


@pytest.mark.parametrize("stock", [STOCK_70, STOCK_610])
def test_remove_gives_back_the_file(stock):
    merged = apply(stock, plan_add(stock, FRAGMENTS))
    assert apply(merged, plan_remove(merged)) == stock
    assert plan_remove(stock) == []


def test_entries_the_admin_wrote_by_hand_are_neither_added_nor_removed():
    by_hand = STOCK_70 + 'TM_MAD_CONF = [ NAME = "lvmsnap", SHARED = "NO" ]\n'
    changes = plan_add(by_hand, FRAGMENTS)
    merged = apply(by_hand, changes)
    assert merged.count('NAME = "lvmsnap"') == 1
    assert 'NAME = "vaf_isolation"' in merged
    back = apply(merged, plan_remove(merged))
    assert 'TM_MAD_CONF = [ NAME = "lvmsnap", SHARED = "NO" ]' in back
    remaining = oned_conf.remaining_entries(back, FRAGMENTS)
    # the hand-written entry, and stock lines vaf also ships (VM_RESTRICTED_ATTR = "NIC/MAC")
    assert 'TM_MAD_CONF = [ NAME = "lvmsnap", SHARED = "NO" ]' in remaining
    assert all(entry in by_hand for entry in remaining), remaining


def test_new_fragment_entries_join_the_existing_section():
    merged = apply(STOCK_70, plan_add(STOCK_70, FRAGMENTS))
    more = [*FRAGMENTS, 'VM_RESTRICTED_ATTR = "NIC/TARGET"\nVM_RESTRICTED_ATTR = "NIC/MAC"\n']
    again = apply(merged, plan_add(merged, more))
    assert again.count(oned_conf.BEGIN) == 1
    assert again.count('VM_RESTRICTED_ATTR = "NIC/MAC"') == 1  # stock already had it
    section = again[again.index(oned_conf.BEGIN):]
    assert 'VM_RESTRICTED_ATTR = "NIC/TARGET"' in section
    assert apply(again, plan_remove(again)) == STOCK_70


def test_a_conf_without_tm_mad_is_refused():
    with pytest.raises(ConfigError, match="no TM_MAD with ARGUMENTS: cannot add lvmsnap"):
        plan_add('DATASTORE_MAD = [ ARGUMENTS = "-s ssh" ]\n', FRAGMENTS)


def test_write_backs_up_and_refuses_what_does_not_parse(tmp_path, capsys):
    conf = tmp_path / "oned.conf"
    conf.write_text(STOCK_70)
    conf.chmod(0o640)
    fragments = str(REPO / "share" / "oned")
    assert oned_conf.main(["add", str(conf), "--fragments", fragments]) == 0
    shown = capsys.readouterr().out
    assert ",netapp,lvmsnap\"\n" in shown  # the diff adds to the admin's line
    assert conf.read_text() == STOCK_70  # printing writes nothing
    assert oned_conf.main(["add", str(conf), "--fragments", fragments, "--write"]) == 0
    backups = list(tmp_path.glob("oned.conf.vaf-*"))
    assert len(backups) == 1 and backups[0].read_text() == STOCK_70
    assert lists(conf.read_text())[0][-1] == "lvmsnap" and conf.stat().st_mode & 0o777 == 0o640
    broken = tmp_path / "broken.conf"
    broken.write_text(STOCK_70 + 'X = "unterminated\n')
    assert oned_conf.main(["add", str(broken), "--fragments", fragments, "--write"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert broken.read_text() == STOCK_70 + 'X = "unterminated\n'
    assert not list(tmp_path.glob("broken.conf.vaf-*"))
