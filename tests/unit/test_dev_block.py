"""virtio-blk device logic against an in-memory store, through the real Virtqueue."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from lguest.devices import block as blk
from lguest.errors import GuestError
from test_dev_rings import new_ring


class MemStore:
    """The store interface over a bytearray, counting what is done to it."""

    def __init__(self, size, fail=False):
        self.data = bytearray(size)
        self.size = size
        self.fail = fail
        self.flushes = 0
        self.writes = 0

    def readv_at(self, offset, views):
        if self.fail:
            raise OSError(5, "Input/output error")
        n = 0
        for v in views:
            v[:] = self.data[offset + n:offset + n + v.nbytes]
            n += v.nbytes
        return n

    def writev_at(self, offset, views):
        if self.fail:
            raise OSError(5, "Input/output error")
        self.writes += 1
        for v in views:
            self.data[offset:offset + v.nbytes] = v
            offset += v.nbytes
        return offset

    def flush(self):
        if self.fail:
            raise OSError(5, "Input/output error")
        self.flushes += 1


def make(size=64 * 512, **kw):
    store = MemStore(size)
    dev = blk.BlockDevice(store, **kw)
    ring = new_ring(size=32, mem=4 << 20)
    dev.activate([ring.queue], 0)
    return dev, store, ring


def hdr(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def request(dev, ring, readable, writable, indirect=False):
    head, outs = ring.add(readable, writable, indirect=indirect)
    assert dev.process(0)
    (used_head, written), = ring.used_entries()
    assert used_head == head
    return written, outs


def test_config_and_features():
    dev, _, _ = make(size=10 * 512 + 100, serial="disk0")
    capacity, = struct.unpack_from("<Q", dev.config, 0)
    seg_max, = struct.unpack_from("<I", dev.config, 12)
    assert capacity == 10                   # the 100-byte tail is not a sector
    assert seg_max == blk.QUEUE_SIZE - 2
    assert dev.features & (1 << blk.F_SEG_MAX) and dev.features & (1 << blk.F_FLUSH)
    assert not dev.features & (1 << blk.F_RO)
    assert blk.BlockDevice(MemStore(512), read_only=True).features & (1 << blk.F_RO)
    assert dev.read_config(0, 8) == 10


def test_write_then_read_round_trip_with_split_buffers():
    dev, store, ring = make()
    data = bytes(range(256)) * 4
    written, outs = request(dev, ring, [hdr(blk.T_OUT, 3)[:5], hdr(blk.T_OUT, 3)[5:], data[:100], data[100:]], [1])
    assert written == 1
    assert ring.memory.read(outs[0], 1) == bytes([blk.S_OK])
    assert store.data[3 * 512:3 * 512 + 1024] == data
    written, outs = request(dev, ring, [hdr(blk.T_IN, 3)], [300, 724, 1], indirect=True)
    assert written == 1025
    assert ring.memory.read(outs[0], 300) + ring.memory.read(outs[1], 724) == data
    assert ring.memory.read(outs[2], 1) == bytes([blk.S_OK])


def test_status_is_last_byte_of_last_nonempty_writable_buffer():
    dev, store, ring = make()
    store.data[0:512] = b"x" * 512
    written, outs = request(dev, ring, [hdr(blk.T_IN, 0)], [513, 0])
    assert written == 513
    assert ring.memory.read(outs[0], 513) == b"x" * 512 + bytes([blk.S_OK])


@pytest.mark.parametrize("writable", [[], [0], [0, 0]])
def test_no_room_for_status_is_a_guest_error(writable):
    dev, _, ring = make()
    ring.add([hdr(blk.T_IN, 0)], writable)
    with pytest.raises(GuestError) as e:
        dev.process(0)
    assert e.value.rule == "Bad virtblk cmd with no room for status"
    assert e.value.device == "block" and e.value.queue == "request"


def test_short_header_is_a_guest_error():
    dev, _, ring = make()
    ring.add([hdr(blk.T_IN, 0)[:15]], [1])
    with pytest.raises(GuestError) as e:
        dev.process(0)
    assert e.value.rule == "iovec too short!"


@pytest.mark.parametrize("kind,rule", [(blk.T_OUT, "Write past end"), (blk.T_IN, "Read past end")])
@pytest.mark.parametrize("sector,length", [(63, 1024), (64, 512), (2**55, 512), (0, 64 * 512 + 1)])
def test_request_past_end_is_refused_before_touching_the_store(kind, rule, sector, length):
    dev, store, ring = make()
    before = bytes(store.data)
    if kind == blk.T_OUT:
        ring.add([hdr(kind, sector), b"z" * length], [1])
    else:
        ring.add([hdr(kind, sector)], [length, 1])
    with pytest.raises(GuestError) as e:
        dev.process(0)
    assert e.value.rule == rule
    assert store.data == before and store.writes == 0 and len(store.data) == store.size


def test_last_sector_is_writable():
    dev, store, ring = make()
    written, outs = request(dev, ring, [hdr(blk.T_OUT, 63), b"e" * 512], [1])
    assert ring.memory.read(outs[0], 1) == bytes([blk.S_OK])
    assert store.data[-512:] == b"e" * 512


def test_read_only_refuses_writes_with_ioerr_and_leaves_store_alone():
    dev, store, ring = make(read_only=True)
    store.data[0:4] = b"keep"
    written, outs = request(dev, ring, [hdr(blk.T_OUT, 0), b"gone"], [1])
    assert written == 1 and ring.memory.read(outs[0], 1) == bytes([blk.S_IOERR])
    assert store.writes == 0 and store.data[0:4] == b"keep"
    written, outs = request(dev, ring, [hdr(blk.T_IN, 0)], [512, 1])
    assert ring.memory.read(outs[0], 4) == b"keep"
    assert ring.memory.read(outs[1], 1) == bytes([blk.S_OK])


def test_flush_calls_the_store():
    dev, store, ring = make()
    written, outs = request(dev, ring, [hdr(blk.T_FLUSH, 0)], [1])
    assert store.flushes == 1 and written == 1
    assert ring.memory.read(outs[0], 1) == bytes([blk.S_OK])


@pytest.mark.parametrize("kind", [blk.T_IN, blk.T_OUT, blk.T_FLUSH])
def test_host_errors_answer_ioerr_and_log(kind, caplog):
    dev, store, ring = make()
    store.fail = True
    readable = [hdr(kind, 0)] + ([b"d" * 512] if kind == blk.T_OUT else [])
    written, outs = request(dev, ring, readable, [512, 1] if kind == blk.T_IN else [1])
    assert written == 1
    assert ring.memory.read(outs[-1], 1) == bytes([blk.S_IOERR])
    assert "failed" in caplog.text
    assert dev.stats["ioerr"] == 1


@pytest.mark.parametrize("kind", [2, 5, 11, 0xFFFFFFFF])
def test_unknown_types_answer_unsupp(kind):
    dev, store, ring = make()
    written, outs = request(dev, ring, [hdr(kind, 0), b"q" * 512], [1])
    assert written == 1 and ring.memory.read(outs[0], 1) == bytes([blk.S_UNSUPP])
    assert store.writes == 0 and store.flushes == 0


@pytest.mark.parametrize("serial,expect", [("disk0", b"disk0" + b"\0" * 15),
                                           ("x" * 25, b"x" * 20)])
def test_get_id_returns_serial(serial, expect):
    dev, _, ring = make(serial=serial)
    written, outs = request(dev, ring, [hdr(blk.T_GET_ID, 0)], [7, 13, 1])
    assert written == 21
    assert ring.memory.read(outs[0], 7) + ring.memory.read(outs[1], 13) == expect
    assert ring.memory.read(outs[2], 1) == bytes([blk.S_OK])


def test_get_id_without_serial_is_unsupp():
    dev, _, ring = make()
    written, outs = request(dev, ring, [hdr(blk.T_GET_ID, 0)], [20, 1])
    assert written == 1 and ring.memory.read(outs[1], 1) == bytes([blk.S_UNSUPP])


# -- hypothesis: request mixes against a model of the disk --------------------------------

SECTORS = 32

def split(data, cuts):
    """Cut data at the given fractions into chain buffers (a chain shape)."""
    points = sorted({int(len(data) * c) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SECTORS - 1), st.integers(1, 4),
              st.binary(min_size=1, max_size=8), st.lists(st.floats(0, 1), max_size=4), st.booleans()),
    st.tuples(st.just("read"), st.integers(0, SECTORS - 1), st.integers(1, 4),
              st.just(b""), st.lists(st.floats(0, 1), max_size=4), st.booleans()),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(b""), st.just([]), st.just(False)),
)


@settings(max_examples=60)
@given(st.lists(op, min_size=1, max_size=25))
def test_request_mix_matches_model(ops):
    dev, store, ring = make(size=SECTORS * 512)
    model = bytearray(SECTORS * 512)
    for kind, sector, count, pattern, cuts, indirect in ops:
        if kind != "flush" and sector + count > SECTORS:
            count = SECTORS - sector
        length = count * 512
        off = sector * 512
        if kind == "write":
            data = (pattern * (length // len(pattern) + 1))[:length]
            written, outs = request(dev, ring, [hdr(blk.T_OUT, sector)] + split(data, cuts), [1], indirect)
            model[off:off + length] = data
            assert written == 1
        elif kind == "read":
            sizes = [len(p) for p in split(bytes(length), cuts)]
            written, outs = request(dev, ring, [hdr(blk.T_IN, sector)], sizes + [1], indirect)
            got = b"".join(ring.memory.read(a, n) for a, n in zip(outs, sizes))
            assert got == model[off:off + length]
            assert written == length + 1
        else:
            written, outs = request(dev, ring, [hdr(blk.T_FLUSH, 0)], [1], indirect)
            assert store.data == model
        assert ring.memory.read(outs[-1], 1) == bytes([blk.S_OK])
