"""virtio-fs device logic: FUSE requests through a real ring, answered from a temp dir."""

import errno
import os
import stat
import struct

import pytest

from lguest.devices import fuse_wire as W
from lguest.devices.fs import FsDevice
from lguest.host.fs import SharedDirectory
from fuse_client import HEAP, FuseClient, attr_mode


@pytest.fixture
def share(tmp_path):
    root = tmp_path / "share"
    root.mkdir()
    return root


@pytest.fixture
def client(share):
    c = FuseClient(str(share))
    c.init()
    yield c
    c.close()


def test_config_space_is_tag_and_queue_count(share):
    dev = FsDevice(SharedDirectory(str(share)), "myfs", request_queues=2)
    assert dev.device_id == 26
    assert dev.queue_names == ("hiprio", "request0", "request1")
    assert bytes(dev.config[:36]) == b"myfs".ljust(36, b"\0")
    assert struct.unpack_from("<I", dev.config, 36)[0] == 2
    with pytest.raises(ValueError):
        FsDevice(SharedDirectory(str(share)), "x" * 37)
    dev.close()


def test_init_negotiates_the_lower_minor_and_only_flags_offered(share):
    c = FuseClient(str(share))
    r = c.init(minor=36, flags=0xFFFFFFFF)
    major, minor, readahead, flags, *_rest = W.INIT_OUT.unpack_from(r.body)
    assert (major, minor, readahead) == (7, 31, 1 << 17)
    assert flags & W.DO_READDIRPLUS and flags & W.MAX_PAGES
    assert not flags & (1 << 1)                       # no POSIX locks offered
    r = c.init(minor=27, flags=0)
    assert W.INIT_OUT.unpack_from(r.body)[1:4:2] == (27, 0)
    c.close()


def test_create_write_read_back_and_host_sees_it(client, share):
    r, node, fh = client.create(b"hello.txt")
    assert r.error == 0 and attr_mode(r.entry()[1]) == 0o100644
    assert W.WRITE_OUT.unpack_from(client.write(node, fh, 0, b"hello, world").body)[0] == 12
    r = client.read(node, fh, 7, 100)
    assert r.error == 0 and r.body == b"world"
    assert client.release(node, fh).error == 0
    assert (share / "hello.txt").read_bytes() == b"hello, world"
    size = client.getattr(node).attr()[1]
    assert size == 12


def test_a_read_into_pages_laid_out_as_linux_does_fills_each_one(client, share):
    # The out header in a buffer of its own, then 8 pages back to back: the fs queues
    # coalesce them (L:236) into one view, and every page gets its own bytes.
    data = os.urandom(8 * 4096)
    (share / "big").write_bytes(data)
    node = client.node(b"big")
    _, fh = client.open(node)
    assert all(q.coalesce for q in client.dev.queues)
    ring = client.ring
    ring.heap = HEAP
    header = client.header(W.READ, node, W.READ_IN.size)
    head, outs = ring.add([header, W.READ_IN.pack(fh, 4096, len(data), 0, 0, 0, 0)],
                          [16] + [4096] * 8, indirect=True)
    client.dev.process(1)
    (used,) = ring.used_entries()
    assert used == (head, 16 + 7 * 4096)                  # from 4096 to the end: 7 pages
    length, error, _ = W.OUT_HEADER.unpack(ring.memory.read(outs[0], 16))
    assert (length, error) == (16 + 7 * 4096, 0)
    assert b"".join(ring.memory.read(a, 4096) for a in outs[1:8]) == data[4096:]
    assert ring.memory.read(outs[8], 4096) == b"\xAA" * 4096   # past the end: untouched


def test_attributes_carry_times_as_the_kernel_keeps_them(client, share):
    """Whole seconds rounded down and nanoseconds 0..999999999, also before 1970."""
    (share / "old").write_bytes(b"x")
    os.utime(share / "old", ns=(-1_500_000_000, 1_700_000_000_250_000_000))
    ino, size, _, atime, mtime, ctime, atime_ns, mtime_ns, *_ = client.getattr(
        client.node(b"old")).attr()
    assert (ino, size) == (os.stat(share / "old").st_ino, 1)
    assert (atime, atime_ns) == (-2, 500_000_000)
    assert (mtime, mtime_ns) == (1_700_000_000, 250_000_000)


def test_lookup_gives_one_node_per_inode_and_forget_releases_it(client, share):
    (share / "a").write_text("x")
    os.link(share / "a", share / "b")
    na, nb = client.node(b"a"), client.node(b"b")
    assert na == nb                                   # hard links: the same inode
    assert client.forget(na, 1).written == 0          # FORGET has no reply
    assert client.getattr(na).error == 0              # one lookup still counted
    client.forget(na, 1)
    assert client.getattr(na).error == -errno.EBADF
    assert client.lookup(b"missing").error == -errno.ENOENT


def test_forget_in_one_buffer_or_split_or_malformed(client, share):
    """Linux sends FORGET as one 48-byte buffer; split in two it is the same request;
    with a wrong length it is refused, the inode kept."""
    (share / "f").write_text("x")
    n = client.node(b"f")
    for _ in range(3):
        client.node(b"f")                             # 4 lookups
    header = client.header(W.FORGET, n, W.FORGET_IN.size)
    client.raw([header + W.FORGET_IN.pack(1)], out_size=0, queue=0)
    client.raw([header, W.FORGET_IN.pack(1)], out_size=0, queue=0)
    bad = W.IN_HEADER.pack(W.IN_HEADER.size + 16, W.FORGET, 99, n, 0, 0, 0, 0, 0)
    malformed = client.dev.stats["malformed"]
    client.raw([bad + W.FORGET_IN.pack(2)], out_size=0, queue=0)
    assert client.dev.stats["malformed"] == malformed + 1
    assert client.getattr(n).error == 0               # 2 of 4 forgotten, not 4
    client.forget(n, 2)
    assert client.getattr(n).error == -errno.EBADF


def test_a_forget_that_fails_in_our_code_is_counted_not_raised(client, share, monkeypatch):
    (share / "f").write_text("x")
    n = client.node(b"f")

    def broken(nodeid, nlookup):
        raise RuntimeError("a bug of ours")
    monkeypatch.setattr(client.fs, "forget", broken)
    bugs = client.dev.stats["bugs"]
    assert client.forget(n, 1).written == 0
    assert client.dev.stats["bugs"] == bugs + 1
    assert client.getattr(n).error == 0               # the queue and the device go on


def test_batch_forget_on_hiprio(client, share):
    (share / "f").write_text("x")
    n = client.node(b"f")
    args = W.BATCH_FORGET_IN.pack(2, 0) + W.FORGET_ONE.pack(n, 1) + W.FORGET_ONE.pack(999, 5)
    assert client.call(W.BATCH_FORGET, 0, args, out_size=0, queue=0).written == 0
    assert client.getattr(n).error == -errno.EBADF


def test_mkdir_symlink_readlink_rename_unlink_rmdir(client, share):
    r = client.mkdir(b"d", mode=0o750)
    d = r.entry()[0]
    assert stat.S_ISDIR(attr_mode(r.entry()[1])) and (share / "d").is_dir()
    r = client.symlink(b"l", b"../../etc/passwd", parent=d)
    assert r.error == 0
    assert client.call(W.READLINK, r.entry()[0]).body == b"../../etc/passwd"
    assert os.readlink(share / "d" / "l") == "../../etc/passwd"
    args = W.RENAME_IN.pack(1) + b"l\0moved\0"
    assert client.call(W.RENAME, d, args).error == 0
    assert os.path.islink(share / "moved")
    noreplace = W.RENAME2_IN.pack(1, W.RENAME_NOREPLACE, 0) + b"moved\0d\0"
    assert client.call(W.RENAME2, 1, noreplace).error == -errno.EEXIST
    assert client.call(W.UNLINK, 1, b"moved\0").error == 0
    assert client.call(W.RMDIR, 1, b"d\0").error == 0
    assert os.listdir(share) == []


def test_link_mknod_setattr(client, share):
    _, node, fh = client.create(b"f", mode=0o100600)
    r = client.call(W.LINK, 1, W.LINK_IN.pack(node) + b"g\0")
    assert r.error == 0 and r.entry()[0] == node and r.entry()[1][10] == 2      # nlink
    r = client.call(W.MKNOD, 1, W.MKNOD_IN.pack(stat.S_IFIFO | 0o644, 0, 0, 0) + b"fifo\0")
    assert r.error == 0 and stat.S_ISFIFO(os.lstat(share / "fifo").st_mode)
    valid = W.FATTR_MODE | W.FATTR_SIZE | W.FATTR_MTIME
    args = W.SETATTR_IN.pack(valid, 0, 0, 5000, 0, 0, 1_000_000, 0, 0, 7, 0,
                             0o100640, 0, 0, 0, 0)
    r = client.call(W.SETATTR, node, args)
    assert r.error == 0
    st = os.stat(share / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns) == (0o640, 5000, 1_000_000_000_000_007)


def test_readdir_and_readdirplus_list_everything_across_small_buffers(client, share):
    names = {f"file{i:03d}".encode() for i in range(150)}
    for n in names:
        (share / n.decode()).write_bytes(b"")
    listed = client.readdir(1, size=512)
    assert {n for n, _, _ in listed} == names | {b".", b".."}
    plus = client.readdir(1, plus=True, size=1024)
    got = {n: node for n, _, node in plus}
    assert set(got) == names | {b".", b".."}
    assert got[b"."] == 0 and all(got[n] > 1 for n in names)
    # each entry was looked up exactly once: one FORGET of 1 releases it
    some = got[b"file007"]
    client.forget(some, 1)
    assert client.getattr(some).error == -errno.EBADF


def test_read_only_share_refuses_every_write(share):
    (share / "f").write_text("data")
    c = FuseClient(str(share), read_only=True)
    c.init()
    node = c.node(b"f")
    assert c.create(b"new")[0].error == -errno.EROFS
    assert c.open(node, os.O_RDWR)[0].error == -errno.EROFS
    assert c.mkdir(b"d").error == -errno.EROFS
    assert c.call(W.UNLINK, 1, b"f\0").error == -errno.EROFS
    _, fh = c.open(node, os.O_RDONLY)
    assert c.read(node, fh, 0, 10).body == b"data"
    assert c.write(node, fh, 0, b"x").error == -errno.EROFS
    assert (share / "f").read_text() == "data" and os.listdir(share) == ["f"]
    c.close()


def test_statfs_lseek_fallocate_fsync(client, share):
    r = client.call(W.STATFS, 1)
    assert r.error == 0 and W.STATFS_OUT.unpack_from(r.body)[5] > 0       # bsize
    _, node, fh = client.create(b"sparse")
    client.write(node, fh, 1 << 20, b"end")
    r = client.call(W.LSEEK, node, W.LSEEK_IN.pack(fh, 0, os.SEEK_DATA, 0))
    assert r.error == 0
    assert client.call(W.FALLOCATE, node, W.FALLOCATE_IN.pack(fh, 0, 4096, 0, 0)).error == 0
    assert client.call(W.FSYNC, node, W.FSYNC_IN.pack(fh, 1, 0)).error == 0
    assert client.call(W.FLUSH, node, W.FLUSH_IN.pack(fh, 0, 0, 0)).error == 0
    assert os.path.getsize(share / "sparse") == (1 << 20) + 3


def test_syncfs_writes_back_the_shares_file_system(client, share, monkeypatch):
    # Linux sends SYNCFS for a sync(1) in the guest once a server has answered one.
    synced = []
    real = client.fs.syncfs
    monkeypatch.setattr(client.fs, "syncfs", lambda: (synced.append(1), real())[1])
    assert client.call(W.SYNCFS, 1, b"\0" * 8).error == 0
    assert synced == [1]


def test_syncfs_of_a_read_only_share_answers_without_writing_anything(share, monkeypatch):
    calls = []
    monkeypatch.setattr("lguest.host.fs._libc.syncfs", lambda fd: calls.append(fd) or 0,
                        raising=False)
    c = FuseClient(str(share), read_only=True)
    c.init()
    try:
        assert c.call(W.SYNCFS, 1, b"\0" * 8).error == 0
        assert calls == []
    finally:
        c.close()
    rw = FuseClient(str(share))
    rw.init()
    try:
        assert rw.call(W.SYNCFS, 1, b"\0" * 8).error == 0
        assert len(calls) == 1                 # an fd of the share's root, then closed
        with pytest.raises(OSError):
            os.fstat(calls[0])
    finally:
        rw.close()


def test_unknown_opcodes_get_enosys(client):
    for opcode in (W.GETXATTR, W.SETLK, W.IOCTL, W.SETUPMAPPING, 99, 0xFFFFFFFF):
        assert client.call(opcode, 1, b"\0" * 16).error == -errno.ENOSYS


def test_access_checks_mode_bits_for_the_caller(share):
    (share / "secret").write_text("x")
    os.chmod(share / "secret", 0o600)
    c = FuseClient(str(share), uid=12345, gid=12345)
    c.init()
    node = c.node(b"secret")
    assert c.call(W.ACCESS, node, W.ACCESS_IN.pack(4, 0)).error == -errno.EACCES
    c.uid = os.getuid()
    assert c.call(W.ACCESS, node, W.ACCESS_IN.pack(4, 0)).error == 0
    c.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="owning files as another user needs root")
def test_files_made_as_root_belong_to_the_requesting_user(share):
    os.chmod(share, 0o777)
    c = FuseClient(str(share), uid=1234, gid=5678)
    c.init()
    _, node, fh = c.create(b"mine")
    c.mkdir(b"dir")
    c.symlink(b"ln", b"mine")
    for name in ("mine", "dir", "ln"):
        st = os.lstat(share / name)
        assert (st.st_uid, st.st_gid) == (1234, 5678), name
    c.close()
    assert (os.getuid(), os.getgid()) == (0, 0)


def test_readdirplus_lists_every_entry_even_out_of_file_descriptors(client, share):
    import resource
    for i in range(60):
        (share / f"n{i:02d}").write_bytes(b"")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 12, hard))
    try:
        plus = client.readdir(1, plus=True, size=1 << 16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    names = {n for n, _, _ in plus}
    assert names == {f"n{i:02d}".encode() for i in range(60)} | {b".", b".."}
    unresolved = [n for n, _, node in plus if node == 0 and n not in (b".", b"..")]
    assert unresolved                        # some could not be looked up, and were listed


def test_a_large_write_keeps_its_data_in_guest_memory_and_lands_whole(client, share):
    _, node, fh = client.create(b"large")
    data = bytes(range(256)) * 256                    # 64 KiB: more than any other request
    r = client.write(node, fh, 4096, data)
    assert r.error == 0 and W.WRITE_OUT.unpack_from(r.body)[0] == len(data)
    assert (share / "large").read_bytes() == bytes(4096) + data


def test_oversized_arguments_and_replies_that_do_not_fit(client):
    assert client.call(W.LOOKUP, 1, b"x" * 20000 + b"\0").error == -errno.EINVAL
    r = client.call(W.GETATTR, 1, W.GETATTR_IN.pack(0, 0, 0), out_size=40)
    assert r.error == -errno.EIO                     # a 104-byte attr_out in 24 bytes of room


def test_surprises_in_the_host_side_are_eio_and_counted(client, monkeypatch):
    def broken(*args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(client.fs, "getattr", broken)
    assert client.getattr(1).error == -errno.EIO
    assert client.dev.stats["bugs"] == 1
    monkeypatch.setattr(client.fs, "statfs", lambda n: (_ for _ in ()).throw(ValueError("x")))
    assert client.call(W.STATFS, 1).error == -errno.EINVAL


def test_chown_touch_now_fsyncdir_and_a_name_gone_from_the_listing(client, share):
    _, node, fh = client.create(b"f")
    valid = W.FATTR_UID | W.FATTR_ATIME | W.FATTR_ATIME_NOW | W.FATTR_MTIME | W.FATTR_MTIME_NOW
    uid = os.getuid()
    r = client.call(W.SETATTR, node, W.SETATTR_IN.pack(valid, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                         0, 0, uid, 0, 0))
    assert r.error == 0
    st = os.stat(share / "f")
    assert st.st_uid == uid and abs(st.st_mtime - __import__("time").time()) < 60
    r = client.call(W.OPENDIR, 1, W.OPEN_IN.pack(0, 0))
    dfh = W.OPEN_OUT.unpack_from(r.body)[0]
    assert client.call(W.FSYNCDIR, 1, W.FSYNC_IN.pack(dfh, 0, 0)).error == 0
    # list (snapshot at offset 0), then remove a name before READDIRPLUS reaches it
    first = client.call(W.READDIRPLUS, 1, W.READ_IN.pack(dfh, 0, 200, 0, 0, 0, 0), out_size=216)
    assert first.error == 0
    os.unlink(share / "f")
    assert len(first.body) == W.ENTRY_OUT_SIZE + W.dirent_size(b".")     # "." only fitted
    rest = client.call(W.READDIRPLUS, 1, W.READ_IN.pack(dfh, 1, 4096, 0, 0, 0, 0))
    assert rest.error == 0                           # "..", and "f" skipped: it is gone
    assert len(rest.body) == W.ENTRY_OUT_SIZE + W.dirent_size(b"..")


def test_a_read_only_share_lets_the_guest_keep_its_page_cache(share):
    (share / "lib.so").write_bytes(b"\x7fELF")
    for read_only, want in ((True, W.FOPEN_KEEP_CACHE | W.FOPEN_NOFLUSH), (False, 0)):
        c = FuseClient(str(share), read_only=read_only)
        flags = W.INIT_OUT.unpack_from(c.init().body)[3]
        # The guest drops cached pages when it sees mtime or size change: the host may
        # still change a read-only share's files.
        assert flags & W.AUTO_INVAL_DATA
        node = c.node(b"lib.so")
        r, fh = c.open(node)
        assert r.error == 0
        assert W.OPEN_OUT.unpack_from(r.body)[1] == want
        c.release(node, fh)
        c.close()


def test_a_read_only_share_answers_a_missing_name_with_a_cacheable_negative_entry(share):
    ro = FuseClient(str(share), read_only=True)
    rw = FuseClient(str(share))
    try:
        ro.init()
        rw.init()
        r = ro.lookup(b"not-there")
        assert r.error == 0
        nodeid, _, entry_valid, _, _, _ = W.ENTRY_OUT_HEAD.unpack_from(r.body)
        assert (nodeid, entry_valid) == (0, 1) and len(r.body) == W.ENTRY_OUT_SIZE
        assert rw.lookup(b"not-there").error == -errno.ENOENT   # may appear any moment
        (share / "there").write_text("x")
        assert ro.lookup(b"there").entry()[0] != 0
        assert ro.lookup(b"a/b").error == -errno.EINVAL          # refused, not "absent"
    finally:
        ro.close()
        rw.close()


def test_closing_twice_closes_nothing_twice(share):
    # A second close of the same numbers could close descriptors opened meanwhile
    # (the served device and its transport both close the device at the end).
    shared = SharedDirectory(str(share))
    shared.close()
    bystander = os.open(str(share), os.O_PATH)     # likely the number the root had
    try:
        shared.close()
        os.fstat(bystander)                         # still open
    finally:
        os.close(bystander)


def test_trim_keeps_whole_buffers_and_slices_only_the_last():
    from lguest.devices.fs import trim
    a, b = memoryview(bytearray(b"abcd")), memoryview(bytearray(b"efgh"))
    assert [bytes(v) for v in trim([a, b], 6)] == [b"abcd", b"ef"]
    whole = trim([a, b], 8)
    assert whole[0] is a and whole[1] is b              # no new views for what fits
    assert [bytes(v) for v in trim([a, b], 100)] == [b"abcd", b"efgh"]
    assert trim([a, b], 0) == [] and trim([], 5) == []
    assert [bytes(v) for v in trim([a, b], 4)] == [b"abcd"]
