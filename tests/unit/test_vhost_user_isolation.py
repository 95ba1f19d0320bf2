"""A process per front-end session (L:742): `lguest vhost-user` serves each session in a
forked child by default. Block I/O through it lands in the file; reconnects leave no fd
and no child (zombie) behind in the server; --no-isolate serves in-process; a library
server with isolate=True works with its front-end in the same process (the child drops
the copies of that front-end's socket). Sealing memfds against shrinking (L:712) is in
test_seals_*. The shrinking front-end itself: test_hostile_vhost_user.py."""

import contextlib
import os
import struct
import subprocess
import sys
import time

import pytest

from lguest.devices.block import BlockDevice
from lguest.host.block import FileStore
from lguest.uml.servers import wait_for_socket
from lguest.vhost_user import cli
from lguest.vhost_user.backend import VhostUserTransport
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.memory import RegionMemory, seal_against_shrinking
from lguest.vhost_user.protocol import MemRegion
from lguest.vhost_user.server import VhostUserServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTOR = 512
T_IN, T_OUT, T_FLUSH = 0, 1, 4


@contextlib.contextmanager
def backend_process(tmp_path, *options, sectors=64):
    """`lguest vhost-user --block` on a fresh image, its stderr in a file."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(sectors * SECTOR))
    sock = str(tmp_path / "blk.sock")
    log = open(tmp_path / "backend.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "vhost-user", f"--socket={sock}",
                             f"--block={image}", "-v", *options], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_socket(sock, proc, what="lguest vhost-user")
        yield proc, sock, image, log
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        log.close()


def connect(sock, **kw):
    for _ in range(200):            # the socket file exists a moment before listen()
        try:
            fe = Frontend.connect(sock, **kw)
            fe.sock.settimeout(10)  # a hang is a failure, not a stuck test run
            return fe
        except ConnectionRefusedError:
            time.sleep(0.01)
    raise AssertionError(f"nobody listening on {sock}")


def block_session(sock, sector, byte, during=None):
    """Write one sector, flush, read it back; `during(fe)` runs mid-session."""
    with connect(sock, regions=((0, 1 << 20),)) as fe:
        fe.negotiate()
        fe.set_mem_table()
        q = fe.setup_queue(0, 16)
        q.ring.add_buffer([struct.pack("<IIQ", T_OUT, 0, sector), bytes([byte]) * SECTOR], [1])
        q.ring.add_buffer([struct.pack("<IIQ", T_FLUSH, 0, 0)], [1])
        q.kick()
        assert [u.data for u in q.wait_used(2)] == [b"\0", b"\0"]
        q.ring.add_buffer([struct.pack("<IIQ", T_IN, 0, sector)], [SECTOR, 1])
        q.kick()
        (used,) = q.wait_used()
        if during is not None:
            during(fe)
        return used.data[:SECTOR]


def children_of(pid):
    """(pid, state) of every process whose parent is `pid` -- zombies included."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(name), fields[0]))
    return found


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled(probe, want, seconds=5.0):
    """probe() once it equals want, or its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def test_isolated_session_does_block_io_and_the_file_holds_the_bytes(tmp_path):
    with backend_process(tmp_path) as (proc, sock, image, _):
        seen = []
        data = block_session(sock, 3, 0x5A, during=lambda fe: seen.append(children_of(proc.pid)))
        assert data == b"\x5A" * SECTOR
        assert len(seen[0]) == 1 and seen[0][0][1] != "Z"   # the session had its own process
        assert settled(lambda: children_of(proc.pid), []) == []
        assert proc.poll() is None
    assert image.read_bytes()[3 * SECTOR:4 * SECTOR] == b"\x5A" * SECTOR
    assert proc.returncode == 0                  # SIGTERM: an orderly exit


def test_isolated_reconnects_leak_no_fds_or_children(tmp_path):
    with backend_process(tmp_path) as (proc, sock, image, _):
        block_session(sock, 0, 1)                # warm-up: imports, lazily opened files
        # The parent closes its copy of the connection just after reaping the child.
        assert settled(lambda: children_of(proc.pid), []) == []
        time.sleep(0.1)
        before = fd_count(proc.pid)
        for i in range(1, 31):
            assert block_session(sock, i % 64, i) == bytes([i]) * SECTOR
        assert settled(lambda: children_of(proc.pid), []) == []
        assert settled(lambda: fd_count(proc.pid), before) == before
    data = image.read_bytes()
    assert all(data[i * SECTOR] == i for i in range(1, 31))


def test_no_isolate_serves_in_the_server_process(tmp_path):
    assert cli.parse_args(["--socket", "/s", "--rng"]).isolate is True
    assert cli.parse_args(["--socket", "/s", "--rng", "--no-isolate"]).isolate is False
    with backend_process(tmp_path, "--no-isolate") as (proc, sock, image, _):
        seen = []
        block_session(sock, 5, 7, during=lambda fe: seen.append(children_of(proc.pid)))
        assert seen == [[]]
    assert image.read_bytes()[5 * SECTOR] == 7


def test_library_server_isolates_with_its_front_end_in_the_same_process(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    store = FileStore(str(image))
    path = str(tmp_path / "lib.sock")
    server = VhostUserServer(VhostUserTransport(BlockDevice(store)), path, isolate=True)
    thread = server.serve_in_thread()
    try:
        for i in range(3):      # would hang if the child kept a copy of our socket
            assert block_session(path, i, 0x40 + i) == bytes([0x40 + i]) * SECTOR
        assert server.connections == 3
    finally:
        server.close()
        store.close()
    assert not thread.is_alive() and children_of(os.getpid()) == []
    assert image.read_bytes()[2 * SECTOR] == 0x42


def test_close_ends_a_live_isolated_session(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    store = FileStore(str(image))
    path = str(tmp_path / "lib.sock")
    server = VhostUserServer(VhostUserTransport(BlockDevice(store)), path, isolate=True)
    server.serve_in_thread()
    fe = connect(path)
    try:
        fe.negotiate()
        started = time.monotonic()
        server.close()                           # the child sees the hang-up, exits, is reaped
        assert time.monotonic() - started < 5
        assert fe.sock.recv(1) == b""
    finally:
        fe.close()
        store.close()
    assert children_of(os.getpid()) == []


def test_a_failed_fork_refuses_one_front_end_and_serves_the_next(tmp_path, monkeypatch):
    import lguest.vhost_user.isolation as isolation
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    store = FileStore(str(image))
    path = str(tmp_path / "lib.sock")
    server = VhostUserServer(VhostUserTransport(BlockDevice(store)), path, isolate=True)
    real_fork, failures = os.fork, []

    def fork_once_failing():
        if not failures:
            failures.append(1)
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()
    monkeypatch.setattr(isolation.os, "fork", fork_once_failing)
    server.serve_in_thread()
    try:
        with connect(path) as fe:
            assert fe.sock.recv(1) == b""        # refused: hung up at once
        assert block_session(path, 1, 0x77) == b"\x77" * SECTOR
    finally:
        server.close()
        store.close()
    assert failures == [1] and children_of(os.getpid()) == []


def test_seals_a_memfd_that_allows_it_against_shrinking():
    fd = os.memfd_create("sealable", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 64 << 10)
        memory = RegionMemory([MemRegion(0, 64 << 10, 0, 0)], [fd])
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
            os.ftruncate(fd, 128 << 10)          # growing stays allowed
            memory.write(0x100, b"still here")
            assert memory.read(0x100, 10) == b"still here"
        finally:
            memory.close()
    finally:
        os.close(fd)


def test_seals_leave_files_that_cannot_be_sealed_alone(tmp_path):
    plain = os.memfd_create("plain", os.MFD_CLOEXEC)
    with open(tmp_path / "f", "wb+") as f:
        try:
            assert seal_against_shrinking(plain) is False
            assert seal_against_shrinking(f.fileno()) is False
            os.ftruncate(plain, 4096)
            os.ftruncate(plain, 0)               # still shrinkable: nothing was added
        finally:
            os.close(plain)


def test_net_pair_forks_its_sessions_from_a_single_threaded_server(tmp_path):
    """Issue 15: with two sockets the server had a thread per socket, so each fork()
    happened while the other thread ran (and could hold a lock the child inherits
    held). Now one thread serves both: at every fork the server is single-threaded,
    and both sessions are live at once."""
    socks = [str(tmp_path / "a.sock"), str(tmp_path / "b.sock")]
    log = open(tmp_path / "backend.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "vhost-user", "--net=pair", "-v",
                             *(f"--socket={s}" for s in socks)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        for s in socks:
            wait_for_socket(s, proc, what="lguest vhost-user")
        threads = lambda: len(os.listdir(f"/proc/{proc.pid}/task"))   # noqa: E731
        assert settled(threads, 1) == 1
        a = connect(socks[0])
        b = connect(socks[1])
        try:
            for fe in (a, b):
                assert fe.negotiate() & (1 << 32)          # VERSION_1: each session answers
            assert len(settled(lambda: children_of(proc.pid), [0, 0])) == 2
            assert threads() == 1
        finally:
            a.close()
            b.close()
        assert settled(lambda: children_of(proc.pid), []) == []
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_a_second_front_end_while_one_is_connected_is_refused_not_left_waiting(tmp_path):
    # Real QEMU, a second instance on a socket in use: it sent GET_FEATURES into our
    # listen backlog and waited for ever, silently. Now its socket closes at once and
    # we say why; the first session goes on, and the socket serves the next one after.
    from lguest.vhost_user.frontend import FrontendError
    with backend_process(tmp_path) as (proc, sock, image, log):
        def second_front_end(first):
            with connect(sock) as fe:
                start = time.monotonic()
                with pytest.raises((FrontendError, OSError)):
                    fe.negotiate()
                assert time.monotonic() - start < 5     # the socket closed: no 10 s timeout
        data = block_session(sock, 5, 0x33, during=second_front_end)
        assert data == b"\x33" * SECTOR
        assert block_session(sock, 6, 0x44) == b"\x44" * SECTOR
        log.seek(0)
        assert "refused a second front-end" in log.read()
