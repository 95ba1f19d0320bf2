"""The interrupt's write (rings.Signaller, L:735): one write, never blocking, and the
front-end's own open file left as it was."""

import os
import socket
import struct
import threading

from lguest.vhost_user.rings import Signaller, Vring

FULL = 0xFFFFFFFFFFFFFFFE         # the most an eventfd's counter holds


def signal_in_thread(signaller):
    """Call it on a thread; True if it returned within 2 s (it must never block)."""
    t = threading.Thread(target=signaller, daemon=True)
    t.start()
    t.join(2)
    return not t.is_alive()


def test_a_pipe_is_written_through_our_own_non_blocking_open_file():
    r, w = os.pipe()                      # virtio_uml's call fd: a blocking pipe
    s = Signaller(w)
    try:
        assert os.get_blocking(w), "the front-end's open file must stay blocking"
        assert s.write_fd != w and s._poller is None
        s()
        assert os.read(r, 8) == struct.pack("<Q", 1)
        # Fill the pipe: the next interrupts are already pending, and must not block.
        os.set_blocking(r, False)
        for _ in range(10_000):
            s()
        assert signal_in_thread(s)
        assert len(os.read(r, 1 << 20)) % 8 == 0
    finally:
        s.close()
        os.close(r)
        os.close(w)
    assert s.write_fd is None


def test_a_non_blocking_eventfd_is_written_as_it_is():
    e = os.eventfd(0, os.EFD_NONBLOCK)    # QEMU's and DPDK's
    s = Signaller(e)
    try:
        assert s.write_fd == e and s._poller is None
        s()
        s()
        assert os.eventfd_read(e) == 2
        os.eventfd_write(e, FULL)         # a front-end that never reads: EAGAIN, quietly
        assert signal_in_thread(s)
        assert os.eventfd_read(e) == FULL
    finally:
        s.close()
        os.close(e)


def test_a_blocking_eventfd_is_polled_before_the_write():
    e = os.eventfd(0)                     # cannot be opened again through /proc
    s = Signaller(e)
    try:
        assert s._poller is not None and os.get_blocking(e)
        s()
        assert os.eventfd_read(e) == 1
        os.eventfd_write(e, FULL)         # a plain write now would block for ever
        assert signal_in_thread(s)
        assert os.eventfd_read(e) == FULL
    finally:
        s.close()
        os.close(e)


def test_a_pipe_without_a_reader_neither_blocks_nor_raises(caplog):
    r, w = os.pipe()
    os.close(r)
    s = Signaller(w)
    assert signal_in_thread(s)            # EPIPE is logged, not raised
    for _ in range(5):
        s()
    assert len([m for m in caplog.messages if "cannot signal" in m]) == 1   # said once
    s.close()
    os.close(w)


def test_a_socket_is_sent_to_once_per_interrupt_and_left_blocking(caplog):
    # virtio_uml's call fd: UML's os_pipe() is a blocking AF_UNIX socketpair. One
    # send(MSG_DONTWAIT) per interrupt, not a poll() and a write.
    a, b = socket.socketpair()
    before = open_fds()
    s = Signaller(a.fileno())
    try:
        assert s._poller is None and os.get_blocking(a.fileno())
        s()
        assert b.recv(8) == struct.pack("<Q", 1)
        a.setblocking(False)              # fill it, then hand it back blocking
        while True:
            try:
                a.send(b"\0" * 65536)
            except BlockingIOError:
                break
        a.setblocking(True)
        assert signal_in_thread(s)        # full: an interrupt is pending, no wait
        b.close()
        for _ in range(3):
            s()                           # the peer is gone: EPIPE said once, no SIGPIPE
        assert len([m for m in caplog.messages if "cannot signal" in m]) == 1
    finally:
        s.close()
    assert open_fds() == before - 1       # b is closed, and our dup of a; a is open
    os.fstat(a.fileno())
    a.close()


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_a_vring_makes_a_new_signaller_for_each_call_fd_and_closes_the_old():
    v = Vring(0)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    before = open_fds()
    v.replace_fd("call_fd", w1)          # ours now: w1, and our own opening of it
    assert open_fds() == before + 1
    first = v.call
    v.replace_fd("call_fd", w2)          # w1 and its opening closed, w2's opened
    assert v.call is not first and first.write_fd is None
    assert open_fds() == before - 1 + 1
    v.call()
    assert os.read(r2, 8) == struct.pack("<Q", 1)
    v.close_fds()                         # w2 and our opening of it
    assert v.call.write_fd is None and open_fds() == before - 2
    for fd in (r1, r2):
        os.close(fd)
