"""The console's host side over a real pty: raw mode set and restored (also on
SIGTERM), both directions through the transport and the threaded runner, ^C^C^C."""

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time

import pytest

from lguest.config import DeviceSpec
from lguest.host import build_device
from lguest.host.console import FdSink, RawTerminal
from test_dev_transport import Guest

RAW_OFF = termios.ECHO | termios.ICANON | termios.ISIG


def lflag(fd):
    return termios.tcgetattr(fd)[3]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def read_master(master, want, timeout=5.0):
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < want and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            data += os.read(master, 4096)
    return data


@pytest.fixture
def tty():
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_raw_mode_is_set_and_restored(tty):
    master, slave = tty
    assert lflag(slave) & RAW_OFF == RAW_OFF
    with pytest.raises(RuntimeError):
        with RawTerminal(slave):
            assert lflag(slave) & RAW_OFF == 0
            raise RuntimeError("a way out")
    assert lflag(slave) & RAW_OFF == RAW_OFF


def test_raw_mode_is_a_no_op_on_a_non_terminal(tmp_path):
    with open(tmp_path / "f", "w") as f:
        term = RawTerminal(f.fileno()).enter()
        assert term.saved is None
        term.restore()


CHILD = """
import os, sys, time
from lguest.host.console import RawTerminal
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
RawTerminal(fd).enter()
print("raw", flush=True)
time.sleep(30)
"""


def test_raw_mode_is_restored_when_killed_by_sigterm(tty):
    master, slave = tty
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    child = subprocess.Popen([sys.executable, "-c", CHILD, os.ttyname(slave)],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline() == b"raw\n"
        assert lflag(slave) & RAW_OFF == 0
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert lflag(slave) & RAW_OFF == RAW_OFF
    finally:
        child.kill()
        child.wait()


def test_sink_loops_over_partial_writes():
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)     # short writes guaranteed past 64 KiB
    data = bytes(range(256)) * 1024 * 2               # 512 KiB
    got = bytearray()

    def reader():
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    views = [memoryview(data)[i:i + 100_000] for i in range(0, len(data), 100_000)]
    FdSink(w).write(views)
    os.close(w)
    t.join(timeout=10)
    os.close(r)
    assert bytes(got) == data


@pytest.fixture
def console(tty):
    master, slave = tty
    host = build_device(DeviceSpec("console"), stdin=slave, stdout=slave)
    guest = Guest(host.device, runners=[host.runner])
    yield master, slave, host, guest
    guest.close()
    host.close()


def test_console_both_directions_through_a_pty(console):
    master, slave, host, guest = console
    (h,) = guest.handles
    assert lflag(slave) & RAW_OFF == 0              # raw from setup on, as the seed
    h.queue(1).add_buffer([b"hello ", b"world\n"], [])
    h.kick(1)
    assert read_master(master, 13) == b"hello world\r\n"
    rx = h.queue(0)
    rx.add_buffer([], [64])
    h.kick(0)
    os.write(master, b"ls")                          # no newline: not line-buffered
    assert wait_for(lambda: rx.poll(rx.last_used_idx))
    (used,) = rx.collect()
    assert used.data == b"ls"
    assert read_master(master, 1, timeout=0.1) == b""   # no echo
    assert wait_for(lambda: guest.irqs)
    guest.close()
    host.close()
    assert lflag(slave) & RAW_OFF == RAW_OFF         # restored when the device closes


@pytest.fixture
def sigint_raises():
    """SIGINT as a terminal session has it (a background job may inherit it ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_three_ctrl_c_interrupt_the_main_thread(console, sigint_raises):
    master, slave, host, guest = console
    (h,) = guest.handles
    rx = h.queue(0)
    got = []
    for _ in range(2):
        rx.add_buffer([], [8])
        h.kick(0)
        os.write(master, b"\x03")
        assert wait_for(lambda: rx.poll(rx.last_used_idx))
        got += rx.collect()
    rx.add_buffer([], [8])
    h.kick(0)
    with pytest.raises(KeyboardInterrupt):
        os.write(master, b"\x03")
        wait_for(lambda: False, timeout=3)          # the SIGINT lands in here
    got += rx.collect()
    assert [u.data for u in got] == [b"\x03"] * 3
