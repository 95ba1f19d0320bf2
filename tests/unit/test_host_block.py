"""The block store on real files, and the block device served by threads through the
transport: data safe across resets, no leaked threads or fds."""

import os
import struct
import threading
import time

import pytest

from lguest.config import DeviceSpec
from lguest.devices import block as blk
from lguest.errors import LauncherError
from lguest.host import build_device
from lguest.host.block import FileStore
from test_dev_transport import Guest


def test_store_reads_and_writes_in_place_over_many_buffers(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(bytes(8192))
    store = FileStore(str(path))
    assert store.size == 8192
    data = bytes(range(256)) * 8
    views = [memoryview(bytearray(data[i:i + 1])) for i in range(2048)]   # > IOV_MAX buffers
    views.insert(5, memoryview(bytearray()))
    assert store.writev_at(1000, views) == 2048
    assert path.read_bytes()[1000:3048] == data
    back = [memoryview(bytearray(1)) for _ in range(2048)]
    assert store.readv_at(1000, back) == 2048
    assert b"".join(bytes(v) for v in back) == data
    store.flush()
    store.close()
    assert os.path.getsize(path) == 8192


def test_store_short_file_is_an_io_error(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(bytes(4096))
    store = FileStore(str(path))
    os.truncate(path, 1024)                           # someone shrank it under us
    with pytest.raises(OSError):
        store.readv_at(512, [memoryview(bytearray(1024))])
    store.close()


def test_read_only_store_refuses_writes(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(b"k" * 512)
    store = FileStore(str(path), read_only=True)
    with pytest.raises(OSError):
        store.writev_at(0, [memoryview(b"x")])
    store.close()
    assert path.read_bytes() == b"k" * 512


def test_missing_image_is_a_launcher_error(tmp_path):
    with pytest.raises(LauncherError) as e:
        build_device(DeviceSpec("block", path=str(tmp_path / "nope")))
    assert "Failed to open" in str(e.value)
    with pytest.raises(LauncherError):
        build_device(DeviceSpec("block"))


def test_shrunk_file_answers_ioerr_through_the_transport(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(bytes(8 * 512))
    host = build_device(DeviceSpec("block", path=str(path)))
    guest = Guest(host.device)
    os.truncate(path, 512)
    (h,) = guest.handles
    alloc = guest.driver.allocator
    header, data, status = alloc.alloc(16), alloc.alloc(512), alloc.alloc(1)
    guest.memory.write(header, struct.pack("<IIQ", blk.T_IN, 0, 4))
    h.queue(0).add_chain([(header, 16)], [(data, 512), (status, 1)])
    h.kick(0)
    (used,) = h.queue(0).collect()
    assert used.len == 1 and guest.memory.read_u8(status) == blk.S_IOERR
    guest.close()
    host.close()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_threaded_block_serves_a_full_ring(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(bytes(256 * 512))
    host = build_device(DeviceSpec("block", path=str(path)))
    guest = Guest(host.device, runners=[host.runner])
    (h,) = guest.handles
    queue = h.queue(0)
    for sector in range(200):
        queue.add_buffer([struct.pack("<IIQ", blk.T_OUT, 0, sector), struct.pack("<I", sector) * 128], [1])
    h.kick(0)
    used = []
    assert wait_for(lambda: used.extend(queue.collect()) or len(used) == 200)
    assert all(u.data == bytes([blk.S_OK]) for u in used)
    contents = path.read_bytes()
    assert all(contents[s * 512:s * 512 + 4] == struct.pack("<I", s) for s in range(200))
    guest.close()
    host.close()


def test_many_resets_through_the_transport_leak_nothing(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(bytes(16 * 512))
    host = build_device(DeviceSpec("block", path=str(path)))
    guest = Guest(host.device, runners=[host.runner])
    (h,) = guest.handles
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    for i in range(40):
        h.negotiate()                       # resets first
        h.setup_queues()
        h.driver_ok()
        assert threading.active_count() == threads
        queue = h.queue(0)
        queue.add_buffer([struct.pack("<IIQ", blk.T_OUT, 0, i % 16), bytes([i]) * 512], [1])
        h.kick(0)
        assert wait_for(lambda: queue.poll(queue.last_used_idx))
    h.reset()
    assert threading.active_count() == threads - 1      # the thread of the first DRIVER_OK
    assert len(os.listdir("/proc/self/fd")) == fds - 2  # ... and its kick and stop eventfds
    guest.close()
    host.close()
