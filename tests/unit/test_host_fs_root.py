"""The host's root as a share (lguest/host/fs_root.py): its kernel mounts show empty."""

import errno
import os

import pytest

from lguest.host.fs import SharedDirectory
from lguest.host.fs_root import HostRoot
from lguest.vhost_user import served

ROOT_ID = 1


def names(share, nodeid):
    fh = share.opendir(nodeid)
    try:
        return [name for _, name, _, _ in share.readdir(fh, 0)]
    finally:
        share.releasedir(fh)


@pytest.fixture
def root():
    if os.stat("/proc").st_dev == os.stat("/").st_dev:
        pytest.skip("/proc is not a mount of its own here")
    share = HostRoot("/")
    yield share
    share.close()


def test_proc_and_sys_are_empty_directories(root):
    for name in (b"proc", b"sys"):
        nodeid, st = root.lookup(ROOT_ID, name)
        assert os.path.stat.S_ISDIR(st.st_mode)             # still there: a mount point
        assert names(root, nodeid) == [b".", b".."]
        with pytest.raises(OSError) as e:
            root.lookup(nodeid, b"self" if name == b"proc" else b"kernel")
        assert e.value.errno == errno.ENOENT


def test_the_rest_of_the_root_is_served(root):
    assert b"etc" in names(root, ROOT_ID) and b"proc" in names(root, ROOT_ID)
    etc, _ = root.lookup(ROOT_ID, b"etc")
    assert root.lookup(etc, b"passwd")[1].st_size > 0
    assert root.read_only


def test_a_plain_directory_hides_nothing(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "x").write_text("x")
    share = HostRoot(str(tmp_path))
    try:
        assert share.hidden_devs == set()                  # the same file system
        nodeid, _ = share.lookup(ROOT_ID, b"proc")
        assert share.lookup(nodeid, b"x")[1].st_size == 1
    finally:
        share.close()


def test_serving_slash_picks_the_host_root_kind(tmp_path):
    item = served.fs("/", "lgroot", read_only=True)
    other = served.fs(str(tmp_path), "t")
    try:
        assert isinstance(item.device.fs, HostRoot)
        assert type(other.device.fs) is SharedDirectory
    finally:
        item.close()
        other.close()
