"""lvmsnap for real: transfer files through the oned harness, LVM in the test hypervisor.

Each test uses its own images (and VM ids) so the state the others leave behind (caches are
meant to persist) does not matter; the module's VG lives on the guest's /dev/vdb.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from vaf.lab.lvmsnap_env import MB, SYS_DS, LvmsnapEnv, oned

pytestmark = pytest.mark.testbed
VG = f"vg-one-{SYS_DS}"


@pytest.fixture(scope="module")
def env(testbed, tmp_path_factory):
    guest = testbed.ssh
    guest(f"pvcreate -qff -y /dev/vdb && vgcreate -q {VG} /dev/vdb && "
          "mkdir -p /var/lib/one/datastores && "
          "chown oneadmin: /var/lib/one /var/lib/one/datastores")
    try:
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
    with open(image, "rb") as handle:
        data = handle.read()
    assert data[:9] == b"PERSISTED" and len(data) == 8 * MB
    assert "lv-one-30-0" not in env.lvs()


def test_resize_saveas_and_move_in_place(env):
    image, sha = env.image("grow", 8, seed=12)
    ok(env.clone(image, 35))
    disk, host = env.disk_path(35, 0), env.tb.host
    ok(env.transfer(35, f"RESIZE lvmsnap {host}:{disk} 16 35 1"))
    assert env.guest(["blockdev", "--getsize64", disk]).stdout.strip() == str(16 * MB)
    saved = f"{env.tb.shared_dir}/saved-35"
    ok(env.transfer(35, f"CPDS lvmsnap {host}:{disk} {saved} -1 35 1"))
    with open(saved, "rb") as handle:
        data = handle.read()
    assert len(data) == 16 * MB and data[8 * MB:] == bytes(8 * MB)
    assert env.sha_of(saved, 8 * MB) == sha
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


@pytest.mark.parametrize("point", ["after-create", "after-dd", "before-rename"])
def test_killed_fill_is_never_used_and_cleaned(env, point):
    vmid = 70 + ["after-create", "after-dd", "before-rename"].index(point)
    image, sha = env.image(f"kill-{point}", 8, seed=9)
    env.set_conf(TEST_KILL_AT=point)
    try:
        reply = env.clone(image, vmid)
    finally:
        env.set_conf()
    failed(reply)
    leftovers = [n for n in env.lvs() if n.startswith("vaf-fill-")]
    assert len(leftovers) == 1  # the killed fill, never renamed into a cache
    ok(env.clone(image, vmid))
    assert_disk(env, vmid, sha, 8 * MB)
    assert not [n for n in env.lvs() if n.startswith("vaf-fill-")]


def test_fill_whose_dd_is_killed_fails_cleanly(env):
    image, sha = env.image("kill-dd", 16, seed=10)
    env.set_conf(DD_BLOCK_SIZE="16K")  # a slower copy, so there is time to kill it
    killer = "for i in $(seq 300); do pkill -KILL -x dd && exit 0; sleep 0.1; done; exit 1"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        killed = pool.submit(env.guest, killer, False)
        reply = env.clone(image, 75)
        assert killed.result().returncode == 0
    env.set_conf()
    reason = failed(reply)
    assert "dd" in reason or "incomplete" in reason
    assert not [n for n in env.lvs() if n.startswith("vaf-fill-")]
    ok(env.clone(image, 75))
    assert_disk(env, 75, sha, 16 * MB)


def test_full_volume_group_fails_with_one_reason_and_leaves_nothing(env):
    image, _ = env.image("too-big", 40, seed=11)
    with env.tb.loop_vg("vg-one-101", 48):  # 11 extents, 8 left beside the pool
        env.set_conf(THIN_POOL_SIZE="4M")
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
        env.set_conf(THIN_POOL_SIZE="4M")
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


def test_monitor_reports_vgs_figures_and_pool_fullness(env):
    reply = env.monitor(SYS_DS, f"<BRIDGE_LIST>{env.tb.host}</BRIDGE_LIST>")
    values = oned.decode_monitor_reply(reply[-1])
    size, free = env.guest(["vgs", "--noheadings", "--units", "m", "--nosuffix", "-o",
                            "vg_size,vg_free", VG]).stdout.split()
    assert values["TOTAL_MB"] == str(int(float(size)))
    assert values["FREE_MB"] == str(int(float(free)))
    assert int(values["USED_MB"]) == int(float(size)) - int(float(free))
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
