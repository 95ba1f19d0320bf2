"""Issue 15's review of lguest/vhost_user/, one test per finding: a hostile front-end
(or its guest) costs only its own ring or session -- no spinning thread, no swallowed
error, no device reset it did not ask for, no leaked fd or mapping."""

import errno
import logging
import os
import socket
import stat
import struct
import threading
import time

import pytest

from lguest.devices.block import BlockDevice
from lguest.devices.console import ConsoleDevice
from lguest.devices.base import give_back
from lguest.devices.inmemory import MemoryStore
from lguest.errors import LauncherError
from lguest.host.runner import ThreadedRunner
from lguest.vhost_user import protocol as P
from lguest.vhost_user.backend import VhostUserBackend
from lguest.vhost_user.frontend import FrontendError
from lguest.vhost_user.rings import DirectRunner
from lguest.vhost_user.server import VhostUserServer
from lguest.vhost_user.trace import TraceRecorder
from test_vhost_user_backend import Session, blk_request, disk  # noqa: F401 - fixtures
from test_lenient_vhost_user import wait_for

SECTOR = 512


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class CountingRunner(DirectRunner):
    calls = 0

    def serve(self, queue_index):
        CountingRunner.calls += 1
        return super().serve(queue_index)


def ring_without_kick_fd(fe, size=8):
    """Set up vq 0 as setup_queue() does, but leave the kick for the test to send."""
    q = fe.setup_queue(0, size, enable=False)
    return q


@pytest.mark.parametrize("kind", ["memfd", "devnull", "closed-pipe"])
def test_a_kick_fd_that_is_not_an_eventfd_does_not_spin(disk, kind):
    _, store, _ = disk
    CountingRunner.calls = 0
    with Session(VhostUserBackend(BlockDevice(store), runner_factory=CountingRunner)) as s:
        fe, q = s.fe, s.ready_queue()
        if kind == "memfd":
            fd = os.memfd_create("kick")
            os.write(fd, b"x" * 64)
            os.lseek(fd, 0, os.SEEK_SET)
        elif kind == "devnull":
            fd = os.open("/dev/null", os.O_RDONLY)
        else:
            fd, w = os.pipe()
            os.close(w)
        fe.request(P.SET_VRING_KICK, P.pack_u64(0), [fd])
        os.close(fd)
        time.sleep(0.3)
        calls = CountingRunner.calls
        # Before: 150-300 k serve() calls in 0.3 s. Now: the first pass, one more at
        # most (the memfd's first 8 bytes read like a kick), then it stops watching.
        assert calls <= 12, calls
        # The session still answers, and a proper kick fd serves the ring again.
        fe.request(P.SET_VRING_KICK, P.pack_u64(0), [q.kick_fd])
        assert blk_request(q, 0, 0, read_len=SECTOR)[-1:] == b"\0"


def console_session():
    sink = bytearray()

    class Sink:
        def write(self, data):
            sink.extend(data)
            return len(data)

        def writev(self, views):
            n = sum(len(v) for v in views)
            for v in views:
                sink.extend(v)
            return n

    device = ConsoleDevice(sink=Sink())
    return Session(VhostUserBackend(device, runner_factory=ThreadedRunner))


def test_a_console_ring_error_on_a_runner_thread_is_reported_and_fires_the_err_fd():
    s = console_session()
    try:
        fe, backend = s.fe, s.backend
        fe.negotiate()
        fe.set_mem_table()
        err_fd = os.eventfd(0, os.EFD_NONBLOCK)
        fe.request(P.SET_VRING_ERR, P.pack_u64(1), [err_fd])
        fe.setup_queue(0, 8)
        out = fe.setup_queue(1, 8)
        out.ring.add_chain([(1 << 40, 16)])             # output outside guest memory
        out.kick()
        assert wait_for(lambda: backend.errors, 3), "the error was swallowed"
        index, error = backend.errors[0]
        assert index == 1 and error.rule == "Invalid address"
        assert backend.vrings[1].broken and not backend.vrings[0].broken
        assert struct.unpack("<Q", os.read(err_fd, 8))[0] == 1
        os.close(err_fd)
    finally:
        s.close()


def test_give_back_through_the_trace_recorder_reaches_the_queue(disk):
    _, store, _ = disk
    backend = VhostUserBackend(BlockDevice(store))
    backend.recorder = TraceRecorder().device("vda")
    s = Session(backend)
    try:
        fe = s.fe
        fe.negotiate()
        fe.set_mem_table()
        fe.setup_queue(0, 8, enable=False)
        vring = backend.vrings[0]
        queue = backend._build_queue(vring)          # the RecordingQueue a device gets
        inner = queue._queue
        fe.queues[0].ring.add_buffer([struct.pack("<IIQ", 0, 0, 0)], [SECTOR, 1])
        assert queue.pop() is not None and inner.last_avail_idx == 1
        give_back(queue)
        assert inner.last_avail_idx == 0          # before: set on the wrapper only
        assert queue.pop() is not None            # the chain is found again
    finally:
        s.close()


class CountingDevice(BlockDevice):
    resets = activations = 0

    def reset(self):
        CountingDevice.resets += 1
        super().reset()

    def activate(self, queues, negotiated):
        CountingDevice.activations += 1
        super().activate(queues, negotiated)


def test_set_vring_call_and_err_do_not_reset_the_device(disk):
    _, store, _ = disk
    with Session(VhostUserBackend(CountingDevice(store))) as s:
        fe, q = s.fe, s.ready_queue()
        blk_request(q, 0, 0, read_len=SECTOR)
        before = (CountingDevice.resets, CountingDevice.activations)
        for _ in range(3):                    # QEMU: at each MSI-X mask and unmask
            fd = os.eventfd(0, os.EFD_NONBLOCK)
            fe.request(P.SET_VRING_CALL, P.pack_u64(0), [fd])
            os.close(fd)
            fd = os.eventfd(0, os.EFD_NONBLOCK)
            fe.request(P.SET_VRING_ERR, P.pack_u64(0), [fd])
            os.close(fd)
        assert (CountingDevice.resets, CountingDevice.activations) == before
        fe.request(P.SET_VRING_CALL, P.pack_u64(0), [q.call_fd])
        assert blk_request(q, 0, 1, read_len=SECTOR)[-1:] == b"\0"


def test_get_vring_base_after_a_broken_ring_counts_the_chains_taken(disk):
    _, store, _ = disk
    with Session(VhostUserBackend(BlockDevice(store))) as s:
        fe, backend, q = s.fe, s.backend, s.ready_queue()
        blk_request(q, 0, 0, read_len=SECTOR)               # avail index 1
        q.ring.add_chain([(1 << 40, 16)], [(0x10000, 1)])   # index 2: broken
        q.kick()
        assert wait_for(lambda: backend.errors, 3)
        assert fe.get_vring_base(0) == 2                      # before: 0


def test_call_and_err_fds_stay_blocking_for_the_front_end(disk):
    _, store, _ = disk
    with Session(VhostUserBackend(BlockDevice(store))) as s:
        fe = s.fe
        fe.negotiate()
        fe.set_mem_table()
        call, err = os.eventfd(0), os.eventfd(0)          # the front-end's, blocking
        fe.request(P.SET_VRING_ERR, P.pack_u64(0), [err])
        q = fe.setup_queue(0, 8)
        fe.request(P.SET_VRING_CALL, P.pack_u64(0), [call])
        q.ring.add_buffer([struct.pack("<IIQ", 0, 0, 0)], [SECTOR, 1])
        q.kick()
        assert os.eventfd_read(call) == 1                 # the interrupt came
        # The open file is shared with the back-end: its flags are ours too.
        assert os.get_blocking(call) and os.get_blocking(err)
        os.close(call)
        os.close(err)


def test_a_full_pipe_as_call_fd_never_blocks_the_ring(disk):
    _, store, _ = disk
    with Session(VhostUserBackend(BlockDevice(store))) as s:
        fe, q = s.fe, s.ready_queue()
        r, w = os.pipe()                                   # blocking, as virtio_uml's
        os.set_blocking(w, False)
        while True:
            try:
                os.write(w, b"\0" * 4096)
            except BlockingIOError:
                break
        os.set_blocking(w, True)
        fe.request(P.SET_VRING_CALL, P.pack_u64(0), [w])
        os.close(w)
        for sector in range(3):
            q.ring.add_buffer([struct.pack("<IIQ", 0, 0, sector)], [SECTOR, 1])
        q.kick()
        assert wait_for(lambda: len(q.ring.collect()) or False, 3)
        assert fe.get_vring_base(0) == 3                   # and the session answers
        os.close(r)


def test_a_buffer_across_two_adjacent_regions_is_served(disk):
    _, store, pattern = disk
    with Session(VhostUserBackend(BlockDevice(store)), regions=((0, 1 << 20), (1 << 20, 1 << 20))) as s:
        fe, q = s.fe, s.ready_queue()
        header = 0x8000
        fe.memory.write(header, struct.pack("<IIQ", 0, 0, 3))
        across = (1 << 20) - 100                 # 100 bytes in the first, 412 in the next
        status = 0x9000
        q.ring.add_chain([(header, 16)], [(across, SECTOR), (status, 1)])
        q.kick()
        assert q.wait_used()[0].len == SECTOR + 1
        assert fe.memory.read(across, SECTOR) == pattern[3 * SECTOR:4 * SECTOR]
        assert fe.memory.read(status, 1) == b"\0"
        assert not s.backend.errors


def test_a_queue_larger_than_the_device_takes_is_refused(disk):
    _, store, _ = disk
    device = BlockDevice(store)
    with Session(VhostUserBackend(device)) as s:
        fe = s.fe
        fe.negotiate()
        with pytest.raises(FrontendError, match="failed"):
            fe.request(P.SET_VRING_NUM, P.pack_state(0, device.vhost_user_queue_max_size * 2))
        fe.request(P.SET_VRING_NUM, P.pack_state(0, device.vhost_user_queue_max_size))


def test_ring_errors_served_in_process_leak_no_fd_or_mapping(disk):
    _, store, _ = disk
    backend = VhostUserBackend(BlockDevice(store))

    def one_session():
        s = Session(backend)
        fe = s.fe
        fe.negotiate()
        fe.set_mem_table()
        q = fe.setup_queue(0, 8)
        # Popped fine (views into guest memory made), refused by the device.
        q.ring.add_chain([(0x8000, 8)], [(0x9000, 1)])
        q.kick()
        assert wait_for(lambda: len(backend.errors) > errors, 3)
        s.close()

    errors = 0
    one_session()                      # the first one warms up whatever is cached
    errors = len(backend.errors)
    before = open_fds()
    for _ in range(4):
        one_session()
        errors = len(backend.errors)
    assert open_fds() == before, "a session's memory fd outlived it"
    assert all(e.__traceback__ is None for _, e in backend.errors)


def test_a_listener_that_cannot_bind_is_closed(tmp_path, disk):
    _, store, _ = disk
    before = open_fds()
    kept = []                  # as a caller that logs or re-raises keeps them alive
    for _ in range(3):
        try:
            VhostUserServer(VhostUserBackend(BlockDevice(store)), str(tmp_path / "no" / "dir.sock"))
        except LauncherError as e:
            assert "cannot listen" in str(e)
            kept.append(e)
    assert len(kept) == 3 and open_fds() == before


def test_the_socket_appears_only_once_it_listens(tmp_path, disk, monkeypatch):
    """A front-end that connects as soon as the path exists is never refused: the
    path comes into being (by link) only after listen()."""
    _, store, _ = disk
    (tmp_path / "s").mkdir()
    path = str(tmp_path / "s" / "blk.sock")
    seen = []
    real_link = os.link

    def link(src, dst):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(src)          # refused (ECONNREFUSED) if not yet listening
        probe.close()
        seen.append(os.path.exists(dst))
        real_link(src, dst)
    monkeypatch.setattr(os, "link", link)
    with VhostUserServer(VhostUserBackend(BlockDevice(store)), path):
        assert seen == [False] and stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.listdir(tmp_path / "s") == ["blk.sock"]   # no hidden name left
    assert not os.path.exists(path)


def test_a_file_in_the_socket_s_way_is_not_clobbered(tmp_path, disk):
    _, store, _ = disk
    (tmp_path / "s").mkdir()
    path = tmp_path / "s" / "blk.sock"
    path.write_bytes(b"precious")
    with pytest.raises(LauncherError, match="cannot listen"):
        VhostUserServer(VhostUserBackend(BlockDevice(store)), str(path))
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path / "s") == ["blk.sock"]


def test_a_socket_path_too_long_for_a_hidden_name_still_listens(tmp_path, disk):
    _, store, _ = disk
    room = 107 - len(os.fsencode(str(tmp_path))) - 1
    path = str(tmp_path / ("s" * (room - 2)))           # fits; its hidden twin would not
    with VhostUserServer(VhostUserBackend(BlockDevice(store)), path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()


def test_a_filesystem_without_hard_links_gets_the_socket_bound_in_place(tmp_path, disk,
                                                                       monkeypatch):
    _, store, _ = disk
    (tmp_path / "s").mkdir()
    path = str(tmp_path / "s" / "blk.sock")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    before = open_fds()
    with VhostUserServer(VhostUserBackend(BlockDevice(store)), path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()
        assert os.listdir(tmp_path / "s") == ["blk.sock"]
    assert open_fds() == before
