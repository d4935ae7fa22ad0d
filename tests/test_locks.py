"""Host-local locks: a directory vaf owns, no symlinks followed, bounded waits."""

from __future__ import annotations

import os
import threading

import pytest

from vaf.errors import DriverError
from vaf.host import locks


def test_the_directory_is_created_with_our_owner_and_mode_0700(tmp_path):
    path = tmp_path / "state" / "lvmsnap"
    fd = locks.owned_directory(str(path))
    os.close(fd)
    info = path.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o700)


def test_a_directory_others_may_write_is_refused(tmp_path):
    path = tmp_path / "open"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(DriverError, match=r"^refusing state directory .*: writable by others"):
        locks.owned_directory(str(path))


def test_a_directory_of_another_account_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory of another account")
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 9869, 9869)
    with pytest.raises(DriverError, match=r"owned by uid 9869, not 0 \(remove it"):
        locks.owned_directory(str(path))


def test_a_symlink_on_the_way_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(DriverError, match="a component is a symlink"):
        locks.owned_directory(str(tmp_path / "link" / "locks"))
    assert list(target.iterdir()) == []  # nothing was created where it pointed


def test_a_planted_lock_symlink_is_not_followed(tmp_path):
    fd = locks.owned_directory(str(tmp_path / "d"))
    try:
        victim = tmp_path / "victim"
        (tmp_path / "d" / "x.lock").symlink_to(victim)
        with pytest.raises(DriverError, match="cannot open lock file x.lock"):
            with locks.exclusive(fd, "x", timeout=1, what="x"):
                pass
        assert not victim.exists()
    finally:
        os.close(fd)


def test_a_wait_ends_with_a_reason(tmp_path):
    fd = locks.owned_directory(str(tmp_path / "d"))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.exclusive(fd, "lvm-vg", timeout=5, what="the VG lock"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    waited = []
    try:
        with pytest.raises(DriverError, match=r"^gave up after 1 s waiting for the VG lock "
                                              r"\(another action on this host holds it\)$"):
            with locks.exclusive(fd, "lvm-vg", timeout=1, what="the VG lock",
                                 on_wait=lambda: waited.append(1)):
                pass
        assert waited == [1]
    finally:
        release.set()
        thread.join()
        os.close(fd)


def test_a_removed_lock_file_is_never_held_twice(tmp_path):
    fd = locks.owned_directory(str(tmp_path / "d"))
    try:
        with locks.exclusive(fd, "fill-a", timeout=1, what="f", remove=True):
            assert (tmp_path / "d" / "fill-a.lock").exists()
        assert not (tmp_path / "d" / "fill-a.lock").exists()  # nothing piles up
        with locks.exclusive(fd, "fill-a", timeout=1, what="f"):
            pass
    finally:
        os.close(fd)


def test_a_free_lock_left_by_a_killed_holder_is_dropped_and_a_held_one_is_kept(tmp_path):
    fd = locks.owned_directory(str(tmp_path / "d"))
    try:
        (tmp_path / "d" / "fill-vg-k1.lock").touch(mode=0o600)  # a killed holder's file
        with locks.exclusive(fd, "fill-vg-k2", timeout=1, what="f"):
            assert locks.names(fd, "fill-vg-") == ["fill-vg-k1", "fill-vg-k2"]
            for name in locks.names(fd, "fill-vg-"):
                with locks.if_free(fd, name, remove=True):
                    pass
            assert locks.names(fd, "fill-vg-") == ["fill-vg-k2"]  # still held: kept
    finally:
        os.close(fd)
