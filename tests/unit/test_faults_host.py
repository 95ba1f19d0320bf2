"""Host faults: the guest sees VIRTIO_BLK_S_IOERR (and we log a line) when the image
cannot be written (ENOSPC on a full tmpfs, EFBIG past RLIMIT_FSIZE, EIO from a
device-mapper error target); a tap that disappears, a vhost-user front-end that leaves
mid-request and stdin closing leave the launcher running. Never a crash, never a file
extended."""

import json
import logging
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from lguest.config import DeviceSpec
from lguest.devices import net
from lguest.devices.block import BlockDevice
from lguest.host import build_device
from lguest.vhost_user.backend import VhostUserTransport
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import VhostUserServer
from host_probes import needs_tap
from test_dev_transport import Guest

SECTOR = 512
T_IN, T_OUT, T_FLUSH = 0, 1, 4
S_OK, S_IOERR = 0, 1
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def wait_used(queue, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    got = []
    while len(got) < count:
        got += queue.collect()
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(got)} of {count} buffers back after {timeout} s")
        time.sleep(0.002)
    return got


def blk(handle, kind, sector, data=b"", read_len=0):
    q = handle.queue(0)
    q.add_buffer([struct.pack("<IIQ", kind, 0, sector)] + ([data] if data else []),
                 [read_len + 1] if read_len else [1])
    handle.kick(0)
    (used,) = wait_used(q)
    return used.data[-1], used.data[:-1]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_enospc_gives_the_guest_ioerr_and_a_log_line(tiny_tmpfs, caplog):
    image = tiny_tmpfs / "sparse.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)                   # 1 MiB of holes on a 64 KiB filesystem
    host = build_device(DeviceSpec("block", path=str(image)))
    guest = Guest(host.device, runners=[host.runner])
    (h,) = guest.handles
    statuses = []
    try:
        with caplog.at_level(logging.WARNING):
            for n in range(64):               # 64 x 8 KiB = 512 KiB: cannot all fit
                statuses.append(blk(h, T_OUT, n * 16, os.urandom(8192))[0])
            # The device goes on: reads answer, even of what could not be written.
            status, data = blk(h, T_IN, 0, read_len=SECTOR)
    finally:
        guest.close()
        host.close()
    assert S_IOERR in statuses and statuses[0] == S_OK
    assert set(statuses) <= {S_OK, S_IOERR}
    assert status == S_OK
    assert any("failed" in r.getMessage() and "No space" in r.getMessage()
               for r in caplog.records)
    assert os.path.getsize(image) == 1 << 20       # never extended


FSIZE_CHILD = r"""
import json, os, resource, signal, struct, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from lguest.config import DeviceSpec
from lguest.host import build_device
from test_dev_transport import Guest
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
host = build_device(DeviceSpec("block", path=sys.argv[3]))
guest = Guest(host.device, runners=[host.runner])
(h,) = guest.handles
out = []
import time
for sector in (0, 16, 32, 64, 100):
    q = h.queue(0)
    q.add_buffer([struct.pack("<IIQ", 1, 0, sector), b"w" * 4096], [1])
    h.kick(0)
    got = []
    while not got:
        got = q.collect(); time.sleep(0.001)
    out.append(got[0].data[-1])
guest.close(); host.close()
print(json.dumps(out))
"""


def test_file_size_limit_gives_ioerr_past_the_limit(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(128 * SECTOR))
    done = subprocess.run([sys.executable, "-c", FSIZE_CHILD, ROOT, HERE, str(image)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Sectors 0 and 16 end at or below 16 KiB; the others start past the limit.
    assert json.loads(done.stdout) == [S_OK, S_OK, S_IOERR, S_IOERR, S_IOERR]
    assert "File too large" in done.stderr
    assert os.path.getsize(image) == 128 * SECTOR


def _device_mapper_missing():
    if not os.path.exists("/usr/sbin/dmsetup") and not os.path.exists("/sbin/dmsetup"):
        return "no dmsetup"
    done = subprocess.run(["dmsetup", "version"], capture_output=True, text=True)
    if done.returncode:
        return "device-mapper unavailable: " + " ".join(done.stderr.split())
    return None


@pytest.mark.skipif(_device_mapper_missing() is not None,
                    reason=f"EIO target: {_device_mapper_missing()}")
def test_eio_from_a_device_mapper_error_target(caplog):
    name = f"lguest-err-{os.getpid()}"
    subprocess.run(["dmsetup", "create", name, "--table", "0 128 error"], check=True)
    try:
        host = build_device(DeviceSpec("block", path=f"/dev/mapper/{name}"))
        guest = Guest(host.device, runners=[host.runner])
        (h,) = guest.handles
        try:
            with caplog.at_level(logging.WARNING):
                assert blk(h, T_IN, 0, read_len=SECTOR)[0] == S_IOERR
                assert blk(h, T_OUT, 0, b"x" * SECTOR)[0] == S_IOERR
        finally:
            guest.close()
            host.close()
        assert any("Input/output error" in r.getMessage() for r in caplog.records)
    finally:
        subprocess.run(["dmsetup", "remove", name], check=False)


@needs_tap
def test_tap_that_disappears_is_survived_without_spinning(caplog):
    host = build_device(DeviceSpec("net", ip="10.213.9.1", prefix=24))
    guest = Guest(host.device, runners=[host.runner])
    (h,) = guest.handles
    tap = host.resources[0]
    try:
        rx = h.queue(net.RX)
        for _ in range(4):
            rx.add_buffer([], [1526])
        h.kick(net.RX)
        subprocess.run(["ip", "link", "del", tap.name], check=True)
        time.sleep(0.2)
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        # Transmit still gives the buffer back (the frame is lost, as on a real wire).
        tx = h.queue(net.TX)
        tx.add_buffer([bytes(12) + b"\xff" * 60], [])
        h.kick(net.TX)
        assert len(wait_used(tx)) == 1
        assert host.runner.running and host.runner.errors == []
    finally:
        guest.close()
        host.close()
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 1 s with the tap gone: a busy loop"
    assert any("tun" in r.getMessage() for r in caplog.records)


class SlowStore:
    """A block store whose writes wait until released: a request stays in flight."""

    def __init__(self, size=64 * SECTOR):
        self.size = size
        self.data = bytearray(size)
        self.entered = threading.Event()
        self.release = threading.Event()

    def readv_at(self, offset, views):
        n = 0
        for v in views:
            v[:] = self.data[offset + n:offset + n + len(v)]
            n += len(v)
        return n

    def writev_at(self, offset, views):
        self.entered.set()
        self.release.wait(10)
        for v in views:
            self.data[offset:offset + len(v)] = bytes(v)
            offset += len(v)
        return sum(len(v) for v in views)

    def flush(self):
        pass

    def close(self):
        pass


def test_front_end_disconnecting_mid_request(tmp_path):
    store = SlowStore()
    path = f"/tmp/lguest-faults-{os.getpid()}.sock"
    server = VhostUserServer(VhostUserTransport(BlockDevice(store)), path)
    server.serve_in_thread()
    threads_before = threading.active_count()
    try:
        fe = Frontend.connect(path, regions=((0, 1 << 20),))
        fe.negotiate()
        fe.set_mem_table()
        q = fe.setup_queue(0, 16)
        q.ring.add_buffer([struct.pack("<IIQ", T_OUT, 0, 3), b"m" * SECTOR], [1])
        q.kick()
        assert store.entered.wait(5)
        fe.close()                             # gone, with the write in the device's hands
        store.release.set()
        # The back-end finishes the write, forgets the front-end, and serves the next.
        fe2 = Frontend.connect(path, regions=((0, 1 << 20),))
        fe2.negotiate()
        fe2.set_mem_table()
        q2 = fe2.setup_queue(0, 16)
        q2.ring.add_buffer([struct.pack("<IIQ", T_IN, 0, 3)], [SECTOR, 1])
        q2.kick()
        (used,) = q2.wait_used()
        assert used.data == b"m" * SECTOR + b"\0"
        fe2.close()
    finally:
        store.release.set()
        server.close()
    assert server.connections == 2
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads_before - 1   # the server thread is gone too


def test_stdin_closing_leaves_console_output_working(caplog):
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    host = build_device(DeviceSpec("console"), stdin=r, stdout=out_w, raw_terminal=False)
    guest = Guest(host.device, runners=[host.runner])
    (h,) = guest.handles
    try:
        h.queue(0).add_buffer([], [64])
        h.kick(0)
        os.write(w, b"hi")
        (got,) = wait_used(h.queue(0))
        assert got.data == b"hi"
        h.queue(0).add_buffer([], [64])
        h.kick(0)
        os.close(w)
        w = None
        deadline = time.monotonic() + 5
        while not host.device.input_ended and time.monotonic() < deadline:
            time.sleep(0.005)
        assert host.device.input_ended
        h.queue(1).add_buffer([b"still here\n"], [])
        h.kick(1)
        wait_used(h.queue(1))
        assert select.select([out_r], [], [], 5)[0]
        assert os.read(out_r, 100) == b"still here\n"
        assert host.runner.running and host.runner.errors == []
    finally:
        guest.close()
        host.close()
        for fd in (r, out_r, out_w) + ((w,) if w is not None else ()):
            try:
                os.close(fd)
            except OSError:
                pass
