"""lvmsnap for real: transfer files through the oned harness, LVM in the test hypervisor.

Each test uses its own images (and VM ids) so the state the others leave behind (caches are
meant to persist) does not matter; the module's VG lives on the guest's /dev/vdb.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

from vaf.lab.host_install import sudo_limited_to_vaf
from vaf.lab.lvmsnap_env import (
    IMAGE_DIR,
    MB,
    ONEADMIN_UID,
    SYS_DS,
    LvmsnapEnv,
    oned,
    prepare_host,
)

pytestmark = pytest.mark.testbed
VG = f"vg-one-{SYS_DS}"


@pytest.fixture(scope="module")
def env(testbed, tmp_path_factory):
    guest = testbed.ssh
    prepare_host(testbed)
    try:
        with sudo_limited_to_vaf(testbed):  # oneadmin may run exactly share/sudoers/vaf
            yield LvmsnapEnv(testbed, tmp_path_factory.mktemp("lvmsnap"))
    finally:
        guest(f"vgremove -qfy {VG}; pvremove -qfy /dev/vdb; rm -rf /var/lib/one/datastores/*",
              check=False)


def ok(reply: oned.Reply) -> oned.Reply:
    assert reply.result == "SUCCESS", (reply.reason, reply.logs)
    return reply


def failed(reply: oned.Reply) -> str:
    assert reply.result == "FAILURE", reply.logs
    return reply.reason


def infos(reply: oned.Reply, vmid: int, needle: str) -> list[str]:
    return [line.text for line in reply.logs
            if line.severity == "I" and line.id == str(vmid) and needle in line.text]


def assert_disk(env: LvmsnapEnv, vmid: int, sha: str, size: int, disk: int = 0) -> None:
    path = env.disk_path(vmid, disk)
    assert env.readlink(path) == f"/dev/{VG}/lv-one-{vmid}-{disk}"
    assert env.sha_of(path, size) == sha


def test_cold_then_warm_clone_share_one_read_only_cache(env):
    image, sha = env.image("cold", 24, seed=1)
    cold = ok(env.clone(image, 10))
    assert len(infos(cold, 10, "filled cache from")) == 1  # progress reaches the VM log
    warm = ok(env.clone(image, 11))
    assert infos(warm, 11, "filling cache") == []
    for vmid in (10, 11):
        assert_disk(env, vmid, sha, 24 * MB)
    volumes = env.lvs()
    origin = volumes["lv-one-10-0"]["origin"]
    assert origin.startswith("vaf-cache-") and volumes["lv-one-11-0"]["origin"] == origin
    cache = volumes[origin]
    assert cache["attr"][1] == "r"  # read-only
    assert f"vaf.src={image}" in cache["tags"]
    assert not any(n.startswith("vaf-fill-") for n in volumes)
    # a VM writes to its own disk only
    env.guest(f"printf changed | dd of={env.disk_path(10, 0)} conv=notrunc status=none")
    assert_disk(env, 11, sha, 24 * MB)


def test_two_images_two_caches_and_changed_image_is_not_served_stale(env):
    one, sha_one = env.image("one", 8, seed=2)
    two, sha_two = env.image("two", 8, seed=3)
    ok(env.clone(one, 20))
    ok(env.clone(two, 21))
    assert_disk(env, 20, sha_one, 8 * MB)
    assert_disk(env, 21, sha_two, 8 * MB)
    before = set(env.caches())
    time.sleep(0.01)
    _, sha_new = env.image("one", 8, seed=4)  # new content, same path and size
    ok(env.clone(one, 22))
    assert_disk(env, 22, sha_new, 8 * MB)
    assert_disk(env, 20, sha_one, 8 * MB)  # the running VM keeps the old content
    assert len(set(env.caches()) - before) == 1


def test_image_size_not_a_multiple_of_extents_and_larger_disk(env):
    image, sha = env.image("odd", 5.5, seed=5)
    ok(env.clone(image, 23, size_mb=16))
    assert_disk(env, 23, sha, int(5.5 * MB))
    path = env.disk_path(23, 0)
    assert env.guest(["blockdev", "--getsize64", path]).stdout.strip() == str(16 * MB)
    zeros = env.guest(f"tail -c +{int(5.5 * MB) + 1} {path} | tr -d '\\0' | wc -c").stdout
    assert zeros.strip() == "0"  # nothing but zeros after the image


def test_persistent_image_gets_its_own_volume_written_back_by_mvds(env):
    image, sha = env.image("persistent", 8, seed=6)
    caches = set(env.caches())
    ok(env.clone(image, 30, action="LN"))
    assert_disk(env, 30, sha, 8 * MB)
    assert env.lvs()["lv-one-30-0"]["origin"] == ""
    assert set(env.caches()) == caches  # no cache shared with others
    env.guest(f"printf PERSISTED | dd of={env.disk_path(30, 0)} conv=notrunc status=none")
    ok(env.transfer(30, f"MVDS lvmsnap {env.tb.host}:{env.disk_path(30, 0)} {image} 30 1"))
    with open(env.local(image), "rb") as handle:
        data = handle.read()
    assert data[:9] == b"PERSISTED" and len(data) == 8 * MB
    assert "lv-one-30-0" not in env.lvs()


def test_resize_saveas_and_move_in_place(env):
    image, sha = env.image("grow", 8, seed=12)
    ok(env.clone(image, 35))
    disk, host = env.disk_path(35, 0), env.tb.host
    ok(env.transfer(35, f"RESIZE lvmsnap {host}:{disk} 16 35 1"))
    assert env.guest(["blockdev", "--getsize64", disk]).stdout.strip() == str(16 * MB)
    saved = f"{IMAGE_DIR}/saved-35"
    ok(env.transfer(35, f"CPDS lvmsnap {host}:{disk} {saved} -1 35 1"))
    with open(env.local(saved), "rb") as handle:
        data = handle.read()
    assert len(data) == 16 * MB and data[8 * MB:] == bytes(8 * MB)
    assert env.sha_of(saved, 8 * MB) == sha
    assert env.local(saved).stat().st_uid == ONEADMIN_UID  # the datastore owner's, not root's
    ok(env.transfer(35, f"MV lvmsnap {host}:{disk} {host}:{disk} 35 1"))  # resume in place
    assert_disk(env, 35, sha, 8 * MB)
    moved = env.transfer(35, f"MV lvmsnap {host}:{disk} other:{disk} 35 1")
    assert "host-local volume groups" in failed(moved)


def test_volatile_disks_and_context(env, tmp_path):
    env.vm(40, {"DISK_ID": 1, "TYPE": "fs", "SIZE": 2048, "FS": "xfs"},
           {"DISK_ID": 2, "TYPE": "swap", "SIZE": 64},
           {"DISK_ID": 3, "TYPE": "fs", "SIZE": 32, "FS": "ext4"})
    ctx = tmp_path / "context.sh"
    ctx.write_text("# Context variables generated by OpenNebula\nHOSTNAME='w1'\n")
    extra = tmp_path / "init.sh"
    extra.write_text("echo hi\n")
    host = env.tb.host
    ok(env.transfer(40, f"MKIMAGE lvmsnap 2048 raw {host}:{env.disk_path(40, 1)} 40 {SYS_DS}",
                    f"MKSWAP lvmsnap 64 {host}:{env.disk_path(40, 2)} 40 {SYS_DS}",
                    f"MKIMAGE lvmsnap 32 raw {host}:{env.disk_path(40, 3)} 40 {SYS_DS}"))
    ok(env.command(40, f"CONTEXT lvmsnap {ctx} {extra}:'start.sh' "
                       f"{host}:{env.disk_path(40, 4)} 40 {SYS_DS}"))
    kinds = env.guest("for d in 1 2 3 4; do blkid -o export "
                      f"/var/lib/one/datastores/{SYS_DS}/40/disk.$d | grep -E '^(TYPE|LABEL)='"
                      "; echo --; done").stdout
    assert kinds.split("--\n") == ["TYPE=xfs\n", "TYPE=swap\n", "TYPE=ext4\n",
                                   "LABEL=CONTEXT\nTYPE=iso9660\n", ""]
    for text in ("HOSTNAME='w1'", "echo hi", "start.sh"):
        assert env.guest(["grep", "-c", "-a", text, env.disk_path(40, 4)]).stdout.strip() != "0"
    ok(env.delete(40, None))
    assert not [n for n in env.lvs() if n.startswith("lv-one-40-")]


def test_delete_keeps_the_cache_and_marks_its_use(env):
    image, sha = env.image("keep", 8, seed=7)
    ok(env.clone(image, 50))
    ok(env.clone(image, 51))
    origin = env.lvs()["lv-one-50-0"]["origin"]
    ok(env.delete(50))
    assert "lv-one-50-0" not in env.lvs()
    assert env.readlink(env.disk_path(50, 0)) == ""
    assert origin in env.caches()
    assert_disk(env, 51, sha, 8 * MB)
    ok(env.delete(51))
    ok(env.delete(51, None))  # the VM directory
    assert origin in env.caches()
    assert env.guest(f"test -e /var/lib/one/datastores/{SYS_DS}/51", check=False).returncode == 1


def test_eight_concurrent_clones_of_one_uncached_image_fill_once(env):
    image, sha = env.image("crowd", 16, seed=8)
    vmids = list(range(60, 68))
    for vmid in vmids:
        env.vm(vmid, {"DISK_ID": 0})
    with concurrent.futures.ThreadPoolExecutor(len(vmids)) as pool:
        replies = list(pool.map(
            lambda vmid: env.transfer(vmid, env.clone_line(image, vmid)), vmids))
    for reply in replies:
        ok(reply)
    fills = sum(len(infos(reply, vmid, "filled cache from"))
                for reply, vmid in zip(replies, vmids, strict=True))
    assert fills == 1
    for vmid in vmids:
        assert_disk(env, vmid, sha, 16 * MB)
    origins = {env.lvs()[f"lv-one-{vmid}-0"]["origin"] for vmid in vmids}
    assert len(origins) == 1


def test_full_volume_group_fails_with_one_reason_and_leaves_nothing(env):
    image, _ = env.image("too-big", 40, seed=11)
    with env.tb.loop_vg("vg-one-101", 48):  # 11 extents, 8 left beside the pool
        env.set_conf(THIN_POOL_SIZE="4M", THIN_OVERCOMMIT="100")
        try:
            reply = env.clone(image, 80, sys_ds=101)
        finally:
            env.set_conf()
        reason = failed(reply)
        assert "volume group vg-one-101" in reason and "40 MB are needed" in reason
        assert "\n" not in reason
        assert not [n for n in env.lvs("vg-one-101") if n.startswith(("vaf-", "lv-one"))
                    and n != "vaf-pool"]
        assert env.guest("test -e /var/lib/one/datastores/101/80", check=False).returncode == 1


def test_unused_caches_are_evicted_least_recently_used_first(env):
    # 13 extents: the pool takes 3 (data, metadata, spare), three 12 MB caches 9, one is free
    images = [env.image(f"evict-{i}", 10, seed=20 + i) for i in range(4)]
    with env.tb.loop_vg("vg-one-102", 56):
        env.set_conf(THIN_POOL_SIZE="4M", THIN_OVERCOMMIT="100")
        try:
            names = []
            for i, (image, _) in enumerate(images[:3]):
                ok(env.clone(image, 90 + i, sys_ds=102))
                names.append(env.lvs("vg-one-102")[f"lv-one-{90 + i}-0"]["origin"])
            for i in (1, 0):  # image 1 unused first, then image 0: 1 is the LRU
                ok(env.delete(90 + i, sys_ds=102))
                time.sleep(1.1)
            reply = ok(env.clone(images[3][0], 93, sys_ds=102))
        finally:
            env.set_conf()
        caches = set(env.caches("vg-one-102"))
        assert names[1] not in caches and {names[0], names[2]} <= caches
        assert infos(reply, 93, f"evicting unused cache {names[1]}")
        assert_disk_vg = env.sha_of(env.disk_path(93, 0, 102), 10 * MB)
        assert assert_disk_vg == images[3][1]


def test_classic_snapshots_are_selectable(env):
    image, sha = env.image("classic", 8, seed=30)
    env.set_conf(SNAPSHOT_MODE="classic")
    try:
        ok(env.clone(image, 100))
    finally:
        env.set_conf()
    volumes = env.lvs()
    snap = volumes["lv-one-100-0"]
    assert snap["attr"][0] == "s" and snap["origin"].startswith("vaf-cache-")
    assert snap["size"] >= 8 * MB
    assert_disk(env, 100, sha, 8 * MB)
    ok(env.delete(100))


def pool_figures(env, vg: str = VG) -> tuple[int, int]:
    """(pool size, sum of its thin volumes' sizes) in MB, as lvs sees them."""
    out = env.guest(["lvs", "--noheadings", "--units", "m", "--nosuffix", "--separator", "|",
                     "-o", "lv_name,lv_size,pool_lv", vg]).stdout
    rows = [line.strip().split("|") for line in out.splitlines() if line.strip()]
    size = next(int(-(-float(r[1]) // 1)) for r in rows if r[0] == "vaf-pool")
    committed = sum(int(-(-float(r[1]) // 1)) for r in rows if r[2] == "vaf-pool")
    return size, committed


def test_monitor_reports_what_the_pool_can_still_take(env):
    reply = env.monitor(SYS_DS, f"<BRIDGE_LIST>{env.tb.host}</BRIDGE_LIST>")
    values = oned.decode_monitor_reply(reply[-1])
    size, committed = pool_figures(env)
    assert values["TOTAL_MB"] == str(size)  # THIN_OVERCOMMIT 1: the pool, not the VG
    assert abs(int(values["USED_MB"]) - committed) <= len(env.lvs())  # rounding per volume
    assert int(values["FREE_MB"]) == int(values["TOTAL_MB"]) - int(values["USED_MB"])
    assert values["LVMSNAP_OVERCOMMIT"] == "1"
    assert 'NAME="vaf-pool"' in values["LVMSNAP_THIN_POOL"]
    assert int(values["LVMSNAP_CACHES"]) >= 1


def test_migration_pre_post_and_fail(env):
    image, sha = env.image("migrate", 8, seed=40)
    ok(env.clone(image, 110))
    sysdir = f"/var/lib/one/datastores/{SYS_DS}/110"
    xml = ("<VM><ID>110</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>8</SIZE></DISK>"
           "<DISK><DISK_ID>1</DISK_ID><SIZE>16</SIZE></DISK></TEMPLATE></VM>")
    stdin = oned.vm_stdin(xml)
    line = f"MIGRATE lvmsnap {env.tb.host} {env.tb.host} {sysdir} 110 {SYS_DS}"
    ok(env.command(110, "PRE" + line, stdin))
    # disk.1 did not exist here: premigrate made an empty volume for the hypervisor's copy
    assert env.readlink(f"{sysdir}/disk.1") == f"/dev/{VG}/lv-one-110-1"
    ok(env.command(110, "FAIL" + line, stdin))
    assert "lv-one-110-1" not in env.lvs()
    ok(env.command(110, "POST" + line, stdin))  # same machine: the VM still runs here
    assert_disk(env, 110, sha, 8 * MB)


def test_errors_are_one_clear_reason_line(env):
    missing = env.clone("/var/lib/one/datastores/1/nonexistent", 120)
    assert failed(missing).startswith("image /var/lib/one/datastores/1/nonexistent not found")
    arity = env.transfer(120, f"CLONE lvmsnap fe:/x {env.tb.host}:{env.disk_path(120, 0)} 120")
    assert failed(arity) == "clone expects 4 arguments (SRC DST VMID DSID), got 3"
    unsupported = env.transfer(
        120, f"SNAP_CREATE lvmsnap {env.tb.host}:{env.disk_path(120, 0)} 0 120 1")
    assert "lvmsnap does not support snap_create" in failed(unsupported)
    noop = env.transfer(120, f"ACTIVATE lvmsnap {env.tb.host}:{env.disk_path(120, 0)} 120 1")
    ok(noop)


# --- capacity: the pool's free space reaches the scheduler, over-large disks are refused ------

def test_a_host_whose_pool_is_full_is_not_eligible_and_big_disks_are_refused(env):
    from vaf.host.runner import Runner
    from vaf.lab import monitord
    from vaf.lab.lvmsnap_env import REMOTE_DIR

    host = env.tb.host
    with env.tb.loop_vg("vg-one-103", 64):
        env.set_conf(THIN_POOL_SIZE="16M")
        env.tb.sync_remotes(env.remotes, dest=REMOTE_DIR)  # the probe reads the host's conf
        try:
            env.vm(130, {"DISK_ID": 1, "TYPE": "fs", "SIZE": 16, "FS": "raw"})
            ok(env.transfer(130, f"MKIMAGE lvmsnap 16 raw {host}:{env.disk_path(130, 1, 103)}"
                                 " 130 103"))  # the pool is now fully committed
            env.vm(131, {"DISK_ID": 1, "TYPE": "fs", "SIZE": 8, "FS": "raw"})
            refused = failed(env.transfer(
                131, f"MKIMAGE lvmsnap 8 raw {host}:{env.disk_path(131, 1, 103)} 131 103"))
            runner = Runner(ssh=("ssh", "-F", env.tb.ssh_config)).on(host)
            share = monitord.HostShare.from_monitoring(
                monitord.run_system_probes(runner, REMOTE_DIR))
        finally:
            env.set_conf()
            env.tb.sync_remotes(env.remotes, dest=REMOTE_DIR)
        ok(env.delete(130, None, sys_ds=103))
    assert "thin pool vg-one-103/vaf-pool" in refused and "THIN_OVERCOMMIT" in refused
    assert share.ds_free[103] == 0
    assert monitord.eligible_hosts({host: share}, 103, 4) == []  # full pool: not chosen
    assert monitord.eligible_hosts({host: share}, SYS_DS, 4) == [host]
    assert share.ds_free[SYS_DS] > 1000


# --- faults: kills at every LVM step, cancels, DELETE racing a cancelled clone ----------------

KILL_WRAPPER = """#!/bin/sh
# test fault: SIGKILL the host half (this command's parent) {when} `{program} ...{match}...`
case " $* " in *"{match}"*) {before} ;; esac
/usr/sbin/{program} "$@"; rc=$?
case " $* " in *"{match}"*) {after} ;; esac
exit $rc
"""


def kill_at(env, program: str, match: str, when: str) -> None:
    """Make the next host half die by SIGKILL before or after an LVM command (a wrapper in
    /usr/local/sbin, first in sudo's secure_path: the product code carries no hook)."""
    kill = "kill -KILL $PPID; exit 137"  # before: the command never runs
    script = KILL_WRAPPER.format(program=program, match=match, when=when,
                                 before=kill if when == "before" else ":",
                                 after=kill if when == "after" else ":")
    env.tb.ssh(f"cat > /usr/local/sbin/{program} && chmod 755 /usr/local/sbin/{program}",
               input=script)


def no_kill(env) -> None:
    env.guest("rm -f /usr/local/sbin/lvcreate /usr/local/sbin/lvchange /usr/local/sbin/lvrename "
              "/usr/local/sbin/lvs /usr/local/sbin/lvremove")


KILL_POINTS = [  # (program, what its argv holds, before/after): every step of a cold clone
    ("lvcreate", "-s --thinpool", "before"),  # the warm try
    ("lvs", "lv_name", "after"),  # the listing after the warm try failed
    ("lvcreate", "vaf-fill-", "before"),
    ("lvcreate", "vaf-fill-", "after"),
    ("lvchange", "vaf-fill-", "after"),  # sealed, not renamed
    ("lvrename", "vaf-fill-", "after"),  # cached, no VM disk yet
    ("lvcreate", "-s --thinpool", "after"),  # the VM disk exists, no link
]


def test_sigkill_of_the_host_half_at_every_lvm_step(env):
    trials = []
    for index, (program, match, when) in enumerate(KILL_POINTS):
        vmid = 140 + index
        image, sha = env.image(f"kill-{index}", 4.25, seed=140 + index)
        kill_at(env, program, match, when)
        try:
            reply = env.clone(image, vmid)
        finally:
            no_kill(env)
        reason = failed(reply)
        trials.append((program, match, when, reason))
        assert "was killed before it finished" in reason
        volumes = env.lvs()
        assert not any(n.startswith("vaf-cache-") and f"vaf.src={image}" in v["tags"]
                       and v["attr"][1] != "r" for n, v in volumes.items())  # never half
        ok(env.clone(image, vmid))  # the next attempt cleans up and works
        assert_disk(env, vmid, sha, int(4.25 * MB))
        assert not [n for n in env.lvs() if n.startswith("vaf-fill-")]
        ok(env.delete(vmid, None))
        assert not [n for n in env.lvs() if n.startswith(f"lv-one-{vmid}-")]
    for program, match, when, reason in trials:  # the table of trials (pytest -s shows it)
        print(f"kill {when:<6} {program} {match!r}: {reason}")


def test_sigkill_during_the_copy(env):
    image, sha = env.image("kill-copy", 24, seed=150)
    env.set_conf(DD_BLOCK_SIZE="64K")  # a slower copy, so there is time to kill it
    killer = ("for i in $(seq 600); do lvs --noheadings -o lv_name vg-one-100 | grep -q "
              "vaf-fill- && pkill -KILL -f '[v]af-privileged lvmsnap-clone' && exit 0; "
              "sleep 0.05; done; exit 1")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            killed = pool.submit(env.guest, killer, False)
            reply = env.clone(image, 151)
            assert killed.result().returncode == 0
    finally:
        env.set_conf()
    assert "killed" in failed(reply)
    ok(env.clone(image, 151))
    assert_disk(env, 151, sha, 24 * MB)
    assert not [n for n in env.lvs() if n.startswith("vaf-fill-")]


def mad_for(env):
    return oned.TmMad(remotes=env.remotes, drivers="lvmsnap", var_dir=env.var, env=env.mad_env)


def write_transfer(env, vmid: int, *lines: str):
    env.sequence += 1
    directory = env.var / "vms" / str(vmid)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"transfer.{env.sequence}.prolog"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_fill(env, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not [n for n in env.lvs() if n.startswith("vaf-fill-")]:
        assert time.monotonic() < deadline, "the fill never started"
        time.sleep(0.3)


def settle(env, vmid: int, timeout: float = 120) -> None:
    """Wait until no host half of this VM runs any more."""
    deadline = time.monotonic() + timeout
    while env.guest("pgrep -f '[v]af-privileged lvmsnap-'", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the host half never ended"
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["DRIVER_CANCEL", "SIGKILL"])
def test_a_cancelled_clone_stops_on_the_host_and_delete_wins(env, how):
    vmid = 160 if how == "DRIVER_CANCEL" else 161
    image, _ = env.image(f"cancel-{how}", 24, seed=vmid)
    env.set_conf(DD_BLOCK_SIZE="64K")
    env.vm(vmid, {"DISK_ID": 0})
    try:
        with mad_for(env) as mad:
            mad.converse(["INIT"])
            mad.send(f"TRANSFER {vmid} {write_transfer(env, vmid, env.clone_line(image, vmid))}")
            wait_for_fill(env)
            if how == "DRIVER_CANCEL":
                mad.send(f"DRIVER_CANCEL {vmid}")
            else:  # the front-end driver process, as an admin's kill -9 or a MAD crash
                for proc in mad._procs:
                    os.kill(proc.pid, signal.SIGKILL)
            # oned marks the prolog failed and runs the epilog's DELETE at once
            ok(env.delete(vmid, None))
            settle(env, vmid)
    finally:
        env.set_conf()
    assert env.guest(f"test -e /var/lib/one/datastores/{SYS_DS}/{vmid}",
                     check=False).returncode == 1  # DELETE won: no dir, no link
    assert not [n for n in env.lvs() if n.startswith(f"lv-one-{vmid}-")]
    assert not [n for n in env.lvs() if n.startswith("vaf-fill-")]


def test_delete_removes_a_volume_that_lost_its_link_and_monitor_reports_it(env):
    image, _ = env.image("orphan", 4, seed=170)
    ok(env.clone(image, 170))  # cached: the next clone is one snapshot
    ok(env.delete(170, None))
    kill_at(env, "lvcreate", "-s --thinpool", "after")
    try:
        failed(env.clone(image, 171))
    finally:
        no_kill(env)
    assert "lv-one-171-0" in env.lvs() and env.readlink(env.disk_path(171, 0)) == ""
    reply = env.monitor(SYS_DS, f"<BRIDGE_LIST>{env.tb.host}</BRIDGE_LIST>")
    values = oned.decode_monitor_reply(reply[-1])
    assert values.get("LVMSNAP_ORPHAN") == '[NAME="lv-one-171-0"]'
    assert any("lv-one-171-0" in line for line in reply if line.startswith("LOG W"))
    ok(env.delete(171, None))
    assert "lv-one-171-0" not in env.lvs()


# --- images, small disks, zeros ----------------------------------------------------------------

@pytest.mark.parametrize("size", [511, 4097, 1024 * 1024 + 1])
def test_images_of_any_size_are_cached_once(env, size):
    vmid = 180 + [511, 4097, 1024 * 1024 + 1].index(size) * 2
    image, sha = env.image(f"odd-{size}", size / MB, seed=size)
    cold = ok(env.clone(image, vmid))
    warm = ok(env.clone(image, vmid + 1))
    assert infos(cold, vmid, "filled cache from") and not infos(warm, vmid + 1, "filling")
    for v in (vmid, vmid + 1):
        assert_disk(env, v, sha, size)
    path = env.disk_path(vmid, 0)
    zeros = env.guest(f"tail -c +{size + 1} {path} | tr -d '\\0' | wc -c").stdout
    assert zeros.strip() == "0"


def test_small_scratch_disks_get_ext4_unless_xfs_is_asked_for(env):
    host = env.tb.host
    env.vm(190, {"DISK_ID": 1, "TYPE": "fs", "SIZE": 64}, {"DISK_ID": 2, "TYPE": "fs",
                                                           "SIZE": 64, "FS": "xfs"})
    ok(env.transfer(190, f"MKIMAGE lvmsnap 64 raw {host}:{env.disk_path(190, 1)} 190 {SYS_DS}"))
    kind = env.guest(["blkid", "-o", "value", "-s", "TYPE", env.disk_path(190, 1)]).stdout
    assert kind.strip() == "ext4"
    reason = failed(env.transfer(
        190, f"MKIMAGE lvmsnap 64 raw {host}:{env.disk_path(190, 2)} 190 {SYS_DS}"))
    assert reason.startswith("XFS needs at least 300 MB") and "FS=ext4" in reason
    ok(env.delete(190, None))


def test_thick_volumes_read_as_zeros(env):
    host = env.tb.host
    env.set_conf(VOLATILE_VOLUMES="thick")
    try:
        for vmid in (195, 196):
            env.vm(vmid, {"DISK_ID": 1, "TYPE": "fs", "SIZE": 8, "FS": "raw"})
            ok(env.transfer(vmid, f"MKIMAGE lvmsnap 8 raw {host}:{env.disk_path(vmid, 1)} "
                                  f"{vmid} {SYS_DS}"))
            data = env.guest(f"tr -d '\\0' < {env.disk_path(vmid, 1)} | wc -c").stdout
            assert data.strip() == "0"
            env.guest(f"tr '\\0' 'x' < /dev/zero | dd of={env.disk_path(vmid, 1)} bs=1M count=8 "
                      "iflag=fullblock status=none")  # what the next tenant must not see
            ok(env.delete(vmid, None))
    finally:
        env.set_conf()


def test_an_overflowed_classic_snapshot_is_reported_invalid(env):
    image, _ = env.image("overflow", 8, seed=197)
    env.set_conf(SNAPSHOT_MODE="classic", CLASSIC_COW_PERCENT="1")
    try:
        ok(env.clone(image, 197))
    finally:
        env.set_conf()
    env.guest(f"dd if=/dev/urandom of={env.disk_path(197, 0)} bs=1M count=8 oflag=direct "
              "status=none", check=False)
    reply = env.monitor(SYS_DS, f"<BRIDGE_LIST>{env.tb.host}</BRIDGE_LIST>")
    assert any("snapshot lv-one-197-0 is overflowed (invalid)" in line for line in reply)
    ok(env.delete(197, None))


# --- confinement, strict input, reasons, cost -------------------------------------------------

def test_paths_outside_the_datastores_are_refused(env):
    host = env.tb.host
    secret = env.local(f"{IMAGE_DIR}/secret")
    secret.write_bytes(b"s" * 4096)
    os.chown(secret, 0, 0)
    secret.chmod(0o600)
    reason = failed(env.clone(f"{IMAGE_DIR}/secret", 200))
    assert "cannot read image" in reason and "Permission denied" in reason
    env.guest(f"ln -sfn /etc/shadow {env.tb.shared_dir}/shadow-link")
    assert "symlink" in failed(env.clone(f"{IMAGE_DIR}/shadow-link", 200))
    env.vm(201, {"DISK_ID": 0})
    outside = failed(env.transfer(201, f"CLONE lvmsnap fe:{IMAGE_DIR}/secret "
                                       f"{host}:/var/tmp/{SYS_DS}/201/disk.0 201 1"))
    assert "is not under /var/lib/one/datastores" in outside
    env.guest("mkdir -p /var/tmp/100/202 && touch /var/tmp/100/202/keep")
    refused = failed(env.transfer(202, f"DELETE lvmsnap {host}:/var/tmp/100/202 202 100"))
    assert "is not under" in refused
    assert env.guest("test -e /var/tmp/100/202/keep", check=False).returncode == 0
    sizes = env.transfer(203, f"MKSWAP lvmsnap 1e3 {host}:{env.disk_path(203, 2)} 203 100")
    assert "positive whole number of MB" in failed(sizes)


def test_lock_directory_of_another_account_is_refused(env):
    image, _ = env.image("lockdir", 4, seed=210)
    env.guest("mv /run/vaf/lvmsnap /run/vaf/lvmsnap.saved && mkdir /run/vaf/lvmsnap && "
              "chown oneadmin /run/vaf/lvmsnap")
    try:
        reason = failed(env.clone(image, 210))
    finally:
        env.guest("rm -rf /run/vaf/lvmsnap && mv /run/vaf/lvmsnap.saved /run/vaf/lvmsnap")
    assert reason.startswith("refusing state directory /run/vaf/lvmsnap: owned by uid 9869")
    assert env.guest("stat -c %U:%a /run/vaf/lvmsnap").stdout.strip() == "root:700"


def test_chmod_does_not_refill_and_old_versions_and_locks_do_not_pile_up(env):
    image, sha = env.image("meta", 4, seed=220)
    ok(env.clone(image, 220))
    env.local(image).chmod(0o640)
    env.guest(["chown", "oneadmin:oneadmin", f"{env.tb.shared_dir}/meta"])
    warm = ok(env.clone(image, 221))
    assert not infos(warm, 221, "filling cache")  # same content: same cache
    for vmid in (220, 221):
        ok(env.delete(vmid, None))
    time.sleep(0.01)
    env.image("meta", 4, seed=221)  # a new version
    ok(env.clone(image, 222))
    ok(env.clone(image, 223))
    caches = [v for v in env.caches().values() if f"vaf.src={image}" in v["tags"]]
    assert len(caches) == 1  # the old version, unused, was removed
    locks = env.guest("ls /run/vaf/lvmsnap").stdout.split()
    assert [name for name in locks if name.startswith("fill-")] == []
