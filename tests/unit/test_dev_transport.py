"""Every device driven through the virtio-PCI transport by the guest-side driver
(lguest.driver: plays Linux's virtio_pci_modern), with real host resources where they
are cheap (temp files, /dev/urandom). The console over a pty and the net device over
a real tap are in test_host_console.py and test_host_tap.py."""

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from lguest.config import DeviceSpec
from lguest.devices import block as blk
from lguest.devices.console import ConsoleDevice
from lguest.devices.rng import RngDevice
from lguest.errors import GuestError
from lguest.host import build_device
from lguest.host.rng import UrandomSource
from lguest.memory import GuestMemory
from lguest.pci.bus import PciBus
from lguest.devices.inmemory import BufferSink as ListSink
from lguest.testing import DriverHarness

MEM = 8 << 20


# The harness is lguest.testing's; the host tests import it from here as Guest.
Guest = DriverHarness


def hdr(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 2 * 64)       # 64 sectors, a known pattern
    return path


def block_guest(path, read_only=False):
    host = build_device(DeviceSpec("block", path=str(path), read_only=read_only))
    guest = Guest(host.device)
    return guest, host


def test_block_config_and_features_through_the_transport(image):
    guest, host = block_guest(image, read_only=True)
    (h,) = guest.handles
    assert h.device_type == 2
    assert h.read_config(0, 8) == 64
    assert h.read_config(12, 4) == 254
    assert h.features & (1 << blk.F_RO) and h.features & (1 << blk.F_FLUSH)
    guest.close()
    host.close()


def test_block_read_write_flush_get_id(image):
    guest, host = block_guest(image)
    (h,) = guest.handles
    (used,) = guest.request(h, 0, [hdr(blk.T_IN, 1)], [512, 1])
    assert used.len == 513 and used.data == image.read_bytes()[512:1024] + b"\0"
    (used,) = guest.request(h, 0, [hdr(blk.T_OUT, 2), b"w" * 1024], [1])
    assert used.data == bytes([blk.S_OK])
    (used,) = guest.request(h, 0, [hdr(blk.T_FLUSH, 0)], [1])
    assert used.data == bytes([blk.S_OK])
    assert image.read_bytes()[1024:2048] == b"w" * 1024
    (used,) = guest.request(h, 0, [hdr(blk.T_GET_ID, 0)], [20, 1])
    assert used.data[:8] == b"disk.img" and used.data[-1] == blk.S_OK
    assert guest.irqs, "the guest was never interrupted"
    guest.close()
    host.close()


def test_block_write_past_end_is_refused_and_file_keeps_its_size(image):
    guest, host = block_guest(image)
    (h,) = guest.handles
    before = image.read_bytes()
    with pytest.raises(GuestError) as e:
        guest.request(h, 0, [hdr(blk.T_OUT, 63), b"x" * 1024], [1])
    assert e.value.rule == "Write past end"
    assert (e.value.device, e.value.queue) == ("block", "request")
    assert os.path.getsize(image) == 64 * 512 and image.read_bytes() == before
    host.close()


def test_block_read_only_image_is_untouched(image):
    os.utime(image, (1_000_000, 1_000_000))
    before = image.read_bytes()
    guest, host = block_guest(image, read_only=True)
    (h,) = guest.handles
    (used,) = guest.request(h, 0, [hdr(blk.T_OUT, 0), b"x" * 512], [1])
    assert used.data == bytes([blk.S_IOERR])
    (used,) = guest.request(h, 0, [hdr(blk.T_FLUSH, 0)], [1])
    (used,) = guest.request(h, 0, [hdr(blk.T_IN, 0)], [512, 1])
    assert used.data == before[:512] + bytes([blk.S_OK])
    guest.close()
    host.close()
    assert image.read_bytes() == before and os.stat(image).st_mtime == 1_000_000


SECTORS = 32
request_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SECTORS - 1), st.integers(1, 8),
              st.integers(1, 255), st.lists(st.integers(1, 511), max_size=3, unique=True)),
    st.tuples(st.just("read"), st.integers(0, SECTORS - 1), st.integers(1, 8),
              st.just(0), st.lists(st.integers(1, 511), max_size=3, unique=True)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0), st.just([])),
)


def cut(length, cuts):
    """Buffer sizes for a chain shape: cut points (bytes into the data) give segments."""
    points = sorted(c for c in cuts if c < length) + [length]
    sizes, last = [], 0
    for p in points:
        sizes.append(p - last)
        last = p
    return sizes


@settings(max_examples=25)
@given(ops=st.lists(request_op, min_size=1, max_size=20), indirect=st.booleans())
def test_block_request_mix_matches_a_model_of_the_file(tmp_path_factory, ops, indirect):
    path = tmp_path_factory.mktemp("mix") / "disk.img"
    path.write_bytes(bytes(SECTORS * 512))
    model = bytearray(SECTORS * 512)
    guest, host = block_guest(path)
    (h,) = guest.handles
    queue = h.queue(0)
    try:
        for kind, sector, count, fill, cuts in ops:
            count = min(count, SECTORS - sector) if kind != "flush" else 0
            off, length = sector * 512, count * 512
            sizes = cut(length, cuts)
            if kind == "write":
                data = bytes((fill + i) & 0xFF for i in range(length))
                pieces, pos = [], 0
                for n in sizes:
                    pieces.append(data[pos:pos + n])
                    pos += n
                queue.add_buffer([hdr(blk.T_OUT, sector)] + pieces, [1], indirect=indirect)
                model[off:off + length] = data
            elif kind == "read":
                queue.add_buffer([hdr(blk.T_IN, sector)], sizes + [1], indirect=indirect)
            else:
                queue.add_buffer([hdr(blk.T_FLUSH, 0)], [1], indirect=indirect)
            h.kick(0)
            (used,) = queue.collect()
            assert used.data[-1] == blk.S_OK
            if kind == "read":
                assert used.data[:-1] == model[off:off + length]
            if kind == "flush":
                assert path.read_bytes() == model
    finally:
        guest.close()
        host.close()


def test_rng_buffers_filled_from_urandom():
    source = UrandomSource()
    guest = Guest(RngDevice(source))
    (h,) = guest.handles
    assert h.device_type == 4
    queue = h.queue(0)
    for n in (1, 64, 4096):
        queue.add_buffer([], [n])
    h.kick(0)
    used = queue.collect()
    assert [u.len for u in used] == [1, 64, 4096]
    assert used[2].data != bytes(4096) and used[1].data != used[2].data[:64]
    guest.close()
    source.close()


def test_console_is_device_one_and_output_and_emergency_write_reach_the_sink():
    sink = ListSink()
    guest = Guest(ConsoleDevice(sink), RngDevice(UrandomSource()))
    console = guest.handles[0]
    assert console.slot == 1 and console.device_type == 3
    assert console.features & (1 << 2)          # EMERG_WRITE
    console.write_config(8, 4, ord("!"))
    guest.request(console, 1, [b"hello ", b"world"], [])
    assert sink.data == b"!hello world"
    with pytest.raises(GuestError) as e:
        guest.request(console, 1, [b"x"], [8])
    assert e.value.rule == "Input buffers in console output queue?"


def test_net_rx_burst_costs_one_interrupt_and_tx_reaches_the_tap():
    from lguest.devices.net import RX, TX, NetDevice
    from test_dev_net import FakeTap, vnet
    tap = FakeTap()
    guest = Guest(NetDevice(tap, mac="52:54:00:00:00:01"))
    (h,) = guest.handles
    assert h.device_type == 1 and h.features & (1 << 28)    # INDIRECT_DESC, as the seed
    rx = h.queue(RX)
    for _ in range(6):
        rx.add_buffer([], [1526])
    tap.incoming = [vnet() + bytes([i]) * 60 for i in range(5)]
    h.kick(RX)
    used = rx.collect()
    assert [u.data[12] for u in used] == [0, 1, 2, 3, 4]
    assert len(guest.irqs) == 1            # the burst is drained in one pass: one interrupt
    h.queue(TX).add_buffer([vnet(), b"\xff" * 60], [])
    h.kick(TX)
    assert tap.sent == [vnet() + b"\xff" * 60]
    guest.close()
