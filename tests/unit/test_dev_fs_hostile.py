"""virtio-fs against a hostile guest: escapes fail and touch nothing outside the share;
malformed requests get an error reply, never a crash, a hang, or a lost ring."""

import errno
import os
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lguest.devices import fuse_wire as W
from lguest.host import fs as host_fs
from fuse_client import FuseClient


@pytest.fixture
def world(tmp_path):
    """A share inside a directory that also holds a file the guest must never reach."""
    (tmp_path / "outside.txt").write_text("host secret")
    share = tmp_path / "share"
    share.mkdir()
    (share / "inside.txt").write_text("shared")
    c = FuseClient(str(share))
    c.init()
    yield c, share, tmp_path
    c.close()


def snapshot(top):
    out = {}
    for dirpath, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def outside_of(top, share):
    return {p: v for p, v in snapshot(top).items() if p != str(share) and not p.startswith(str(share) + os.sep)}


@pytest.mark.parametrize("name", [b"..", b".", b"../outside.txt", b"/etc/passwd",
                                  b"a/b", b"", b"x" * 300])
def test_names_that_are_not_one_component_are_refused(world, name):
    c, share, top = world
    before = outside_of(top, share)
    assert c.lookup(name).error in (-errno.EINVAL, -errno.ENAMETOOLONG)
    assert c.create(name)[0].error in (-errno.EINVAL, -errno.ENAMETOOLONG)
    assert c.mkdir(name).error in (-errno.EINVAL, -errno.ENAMETOOLONG)
    assert c.call(W.UNLINK, 1, name + b"\0").error in (-errno.EINVAL, -errno.ENAMETOOLONG)
    assert outside_of(top, share) == before


def test_symlinks_out_are_never_followed(world):
    c, share, top = world
    os.symlink("/", share / "root")
    os.symlink("../outside.txt", share / "up")
    os.symlink(str(top / "outside.txt"), share / "abs")
    before = outside_of(top, share)
    root = c.node(b"root")
    # The link itself is found (the guest resolves its target in the guest) ...
    assert c.call(W.READLINK, root).body == b"/"
    # ... but it is no directory to look beneath, and no file to open or write.
    assert c.lookup(b"etc", parent=root).error == -errno.ENOTDIR
    for name in (b"up", b"abs"):
        node = c.node(name)
        assert c.open(node, os.O_RDWR)[0].error == -errno.ELOOP
        assert c.create(name, flags=os.O_RDWR | os.O_CREAT | os.O_TRUNC)[0].error in (
            -errno.ELOOP, -errno.EEXIST)
        valid = W.FATTR_SIZE
        assert c.call(W.SETATTR, node, W.SETATTR_IN.pack(valid, 0, 0, 0, *[0] * 12)).error \
            == -errno.EINVAL
    # A hard link to the symlink is a link to the symlink, not to its target.
    r = c.call(W.LINK, 1, W.LINK_IN.pack(c.node(b"up")) + b"up2\0")
    assert r.error == 0 and os.path.islink(share / "up2")
    assert (top / "outside.txt").read_text() == "host secret"
    assert outside_of(top, share) == before


def test_a_dangling_symlink_is_not_created_through(world):
    c, share, top = world
    os.symlink("../made-outside", share / "trap")
    r, _, _ = c.create(b"trap", flags=os.O_RDWR | os.O_CREAT)
    assert r.error in (-errno.ELOOP, -errno.EEXIST)
    assert not (top / "made-outside").exists()


def test_unknown_node_ids_and_handles_fail(world):
    c, _, _ = world
    for nodeid in (0, 2, 999, 2**64 - 1):
        assert c.getattr(nodeid).error == -errno.EBADF
        assert c.lookup(b"inside.txt", parent=nodeid).error == -errno.EBADF
    node = c.node(b"inside.txt")
    assert c.read(node, 12345, 0, 10).error == -errno.EBADF
    assert c.lookup(b"x", parent=node).error == -errno.ENOTDIR


def test_directory_swapped_for_a_symlink_mid_walk_leads_nowhere(world):
    """A rename race: the guest holds a node for sub/, then sub is replaced on the host
    by a symlink to the outside. Lookups beneath the old node still see the old
    directory (it is held by fd); a fresh lookup finds a symlink, never the outside."""
    c, share, top = world
    (share / "sub").mkdir()
    (share / "sub" / "f").write_text("in sub")
    sub = c.node(b"sub")
    os.rename(share / "sub", share / "sub.old")
    os.symlink(str(top), share / "sub")
    assert c.lookup(b"outside.txt", parent=sub).error == -errno.ENOENT
    assert c.lookup(b"f", parent=sub).error == 0
    fresh = c.node(b"sub")
    assert c.lookup(b"outside.txt", parent=fresh).error == -errno.ENOTDIR


def test_racing_renames_never_let_a_lookup_out(world):
    c, share, top = world
    (share / "d").mkdir()
    (share / "d" / "outside.txt").write_text("decoy")
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            try:
                os.rename(share / "d", share / "d.tmp")
                os.symlink(str(top), share / "d")
                os.unlink(share / "d")
                os.rename(share / "d.tmp", share / "d")
            except OSError:
                pass

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(300):
            r = c.lookup(b"d")
            if r.error:
                continue
            d = r.entry()[0]
            r = c.lookup(b"outside.txt", parent=d)
            if r.error == 0:
                node = r.entry()[0]
                _, fh = c.open(node)
                assert c.read(node, fh, 0, 100).body == b"decoy"
                c.release(node, fh)
    finally:
        stop.set()
        t.join()


def test_openat2_fallback_is_just_as_strict(world, monkeypatch):
    c, share, top = world
    monkeypatch.setattr(host_fs, "HAVE_OPENAT2", False)
    os.symlink("/", share / "root")
    assert c.lookup(b"etc", parent=c.node(b"root")).error == -errno.ENOTDIR
    assert c.lookup(b"..").error == -errno.EINVAL
    assert c.lookup(b"inside.txt").error == 0
    # What only openat2 could confine is refused without it.
    dirfd = os.open(share, os.O_PATH | os.O_DIRECTORY)
    try:
        for name in (b"..", b"../outside.txt", b"root/etc"):
            with pytest.raises(OSError) as e:
                host_fs.open_beneath(dirfd, name, os.O_PATH)
            assert e.value.errno == errno.EXDEV
    finally:
        os.close(dirfd)


@pytest.fixture
def share_fd(world):
    c, share, top = world
    os.symlink("/", share / "root")
    os.symlink("../outside.txt", share / "up")
    os.symlink("../made-outside", share / "trap")
    os.symlink("/proc/self/cwd", share / "magic")
    fd = os.open(share, os.O_PATH | os.O_DIRECTORY)
    yield fd, share, top
    os.close(fd)


def test_one_component_is_opened_without_openat2_and_stays_inside(share_fd, monkeypatch):
    """The fast path of open_beneath (plain openat + O_NOFOLLOW for one component, not
    "." or ".."): each symlink out is the link itself for O_PATH, ELOOP for anything
    else, O_CREAT through a dangling one included; openat2 is never called."""
    fd, share, top = share_fd

    def no_openat2(*args):
        raise AssertionError("openat2 called for one component")

    monkeypatch.setattr(host_fs, "_openat2", no_openat2)
    before = outside_of(top, share)
    for name in (b"root", b"up", b"trap", b"magic"):
        link = host_fs.open_beneath(fd, name, os.O_PATH)
        try:
            assert stat.S_ISLNK(os.fstat(link).st_mode)
        finally:
            os.close(link)
        for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_TRUNC,
                      os.O_RDONLY | os.O_DIRECTORY):
            with pytest.raises(OSError) as e:
                host_fs.open_beneath(fd, name, flags, 0o644)
            assert e.value.errno in (errno.ELOOP, errno.ENOTDIR)
    # A name swapped for a symlink between lookups: the second open finds the link.
    inside = host_fs.open_beneath(fd, b"inside.txt", os.O_RDONLY)
    os.close(inside)
    os.rename(share / "inside.txt", share / "inside.old")
    os.symlink(str(top / "outside.txt"), share / "inside.txt")
    with pytest.raises(OSError) as e:
        host_fs.open_beneath(fd, b"inside.txt", os.O_RDONLY)
    assert e.value.errno == errno.ELOOP
    assert not (top / "made-outside").exists()
    assert (top / "outside.txt").read_text() == "host secret"
    assert outside_of(top, share) == before


@pytest.mark.skipif(not host_fs.HAVE_OPENAT2, reason="the kernel has no openat2")
def test_what_is_not_one_component_goes_through_openat2_beneath(share_fd):
    """".." and paths are never sent (check_name refuses them), but should a caller pass
    one, openat2's RESOLVE_BENEATH confines it: nothing outside opens."""
    fd, share, top = share_fd
    for name in (b"..", b"../outside.txt", b"root/etc", b"up/x", b"./../outside.txt",
                 str(top / "outside.txt").encode()):
        with pytest.raises(OSError) as e:
            host_fs.open_beneath(fd, name, os.O_RDONLY)
        assert e.value.errno in (errno.EXDEV, errno.ELOOP, errno.ENOTDIR), name
    # "." is the directory itself, which is inside.
    here = host_fs.open_beneath(fd, b".", os.O_PATH)
    try:
        assert os.fstat(here).st_ino == os.stat(share).st_ino
    finally:
        os.close(here)


def test_short_and_lying_requests_get_einval(world):
    c, _, _ = world
    # a header whose length disagrees with the chain
    hdr = W.IN_HEADER.pack(9999, W.GETATTR, 7, 1, 0, 0, 0, 0, 0)
    r = c.raw([hdr + W.GETATTR_IN.pack(0, 0, 0)])
    assert (r.error, r.unique) == (-errno.EINVAL, 7)
    # arguments shorter than the opcode's struct
    assert c.call(W.SETATTR, 1, b"\0" * 8).error == -errno.EINVAL
    # a name without its NUL
    assert c.call(W.LOOKUP, 1, b"inside.txt").error == -errno.EINVAL
    # a WRITE claiming more data than it carries
    r = c.call(W.WRITE, 1, W.WRITE_IN.pack(1, 0, 4096, 0, 0, 0, 0), data=b"abc")
    assert r.error == -errno.EINVAL
    # no header at all: nothing to answer, the ring goes on
    assert c.raw([b"\0" * 10]).written == 0
    # no room for a reply: the request is used with 0 bytes, the ring goes on
    assert c.call(W.GETATTR, 1, W.GETATTR_IN.pack(0, 0, 0), out_size=8).written == 0
    assert c.getattr(1).error == 0


OPCODES = st.sampled_from(sorted(set(W.OPCODE_NAMES)) + [0, 51, 0xFFFFFFFF])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opcode=OPCODES, nodeid=st.sampled_from([0, 1, 2, 3, 2**64 - 1]),
       args=st.binary(max_size=200), lie=st.integers(-8, 8),
       out_size=st.sampled_from([0, 8, 16, 64, 4096]), queue=st.sampled_from([0, 1]))
def test_random_requests_get_replies_never_crashes(world, opcode, nodeid, args, lie, out_size, queue):
    c, share, top = world
    before = outside_of(top, share)
    header = W.IN_HEADER.pack(max(0, W.IN_HEADER.size + len(args) + lie), opcode, 77,
                              nodeid, 0, 0, 0, 0, 0)
    r = c.raw([header + args], out_size=out_size, queue=queue)
    if out_size >= 16 and r.written:
        assert r.unique == 77 and r.length == r.written
        assert r.error <= 0
    assert c.getattr(1).error == 0                      # the device still answers
    assert c.dev.stats["bugs"] == 0
    assert outside_of(top, share) == before


NAMES = st.sampled_from([b"inside.txt", b"new", b"..", b".", b"a/b", b"", b"\xff\xfe",
                         b"x" * 256, b"outside.txt"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opcode=OPCODES, nodeid=st.sampled_from([1, 2, 3, 4]),
       fixed=st.binary(min_size=0, max_size=96), names=st.lists(NAMES, max_size=2),
       data=st.binary(max_size=64))
def test_well_framed_random_arguments_never_escape_or_crash(world, opcode, nodeid, fixed,
                                                            names, data):
    """Correct lengths, so the requests reach the handlers with random fields and names."""
    c, share, top = world
    before = outside_of(top, share)
    c.lookup(b"inside.txt")                              # give node 2 a meaning
    args = fixed + b"".join(n + b"\0" for n in names)
    r = c.call(opcode, nodeid, args, data=data if opcode == W.WRITE else b"")
    assert r.written >= 16 or opcode in (W.FORGET, W.BATCH_FORGET)
    assert c.getattr(1).error == 0
    assert c.dev.stats["bugs"] == 0
    assert outside_of(top, share) == before


def test_special_files_are_never_opened_on_the_host(world):
    """A FIFO would hang the server; a device node the guest made would open a host
    device. Neither is opened: the guest's kernel opens its own special files."""
    c, share, _ = world
    os.mkfifo(share / "fifo")
    fifo = c.node(b"fifo")
    assert c.open(fifo, os.O_WRONLY)[0].error == -errno.EPERM
    # (a FIFO without a reader refuses a non-blocking writer by itself: ENXIO)
    assert c.create(b"fifo", flags=os.O_WRONLY | os.O_CREAT)[0].error in (-errno.EPERM,
                                                                         -errno.ENXIO)
    assert c.create(b"fifo", flags=os.O_RDONLY | os.O_CREAT)[0].error == -errno.EPERM
    if os.geteuid() == 0:
        import stat as st_mod
        r = c.call(W.MKNOD, 1, W.MKNOD_IN.pack(st_mod.S_IFBLK | 0o600, os.makedev(7, 0), 0, 0)
                   + b"loop0\0")
        assert r.error == 0
        assert c.open(r.entry()[0], os.O_RDONLY)[0].error == -errno.EPERM
