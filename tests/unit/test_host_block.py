"""The block store on real files, and what a block device over one answers when the file
goes wrong. The block device served by the threaded runner is in test_host_runner.py."""

import os
import struct

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


def test_a_short_transfer_is_carried_on_from_where_it_stopped(tmp_path):
    # preadv may stop short (a signal, a file system's own limit): the first call is
    # all a request needs nearly always, the rest must still follow, in place.
    path = tmp_path / "img"
    data = os.urandom(8192)
    path.write_bytes(data)
    store = FileStore(str(path))
    offsets = []

    def at_most_300_bytes(fd, views, offset):
        offsets.append(offset)
        first = next(v for v in views if v.nbytes)
        return os.preadv(fd, [first[:300]], offset)

    views = [memoryview(bytearray(n)) for n in (1000, 0, 24, 1024)]
    assert store._transfer(at_most_300_bytes, 512, views) == 2048
    assert b"".join(bytes(v) for v in views) == data[512:2560]
    assert offsets[:2] == [512, 812] and len(offsets) == 9
    store.close()


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
