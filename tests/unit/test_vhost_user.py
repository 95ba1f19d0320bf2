"""vhost-user wire format and the front-end's memory regions (sans-I/O parts)."""

import mmap
import os

import pytest
from hypothesis import given, settings, strategies as st

from lguest.errors import GuestMemoryError
from lguest.vhost_user import protocol as P
from lguest.vhost_user.memory import RegionMemory

PAGE = mmap.PAGESIZE


def msg(request, payload=b"", fds=()):
    return P.Message(request, P.VERSION, payload, list(fds))


# -- protocol ------------------------------------------------------------------------

def test_header_round_trip_and_reply_flags():
    raw = P.encode(P.GET_FEATURES)
    assert P.parse_header(raw[:12]) == (P.GET_FEATURES, P.VERSION, 0)
    reply = P.encode_reply(P.GET_FEATURES, P.pack_u64(0x1234))
    assert P.parse_header(reply[:12]) == (P.GET_FEATURES, P.VERSION | P.FLAG_REPLY, 8)
    assert P.U64.unpack(reply[12:])[0] == 0x1234


@pytest.mark.parametrize("flags", [0, 2, 3])
def test_header_with_wrong_version_is_refused(flags):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_header(P.HEADER.pack(P.GET_FEATURES, flags, 0))
    assert e.value.rule == "unsupported vhost-user version"


def test_oversized_payload_is_refused_before_reading_it():
    with pytest.raises(P.ProtocolError) as e:
        P.parse_header(P.HEADER.pack(P.SET_MEM_TABLE, P.VERSION, P.MAX_PAYLOAD + 1))
    assert e.value.rule == "message too large"


@given(st.binary(max_size=48))
def test_fixed_payloads_must_have_their_exact_size(payload):
    for decode, size in ((P.decode_u64, 8), (P.decode_state, 8), (P.decode_vring_addr, 40)):
        if len(payload) == size:
            decode(msg(P.SET_VRING_NUM, payload))
        else:
            with pytest.raises(P.ProtocolError) as e:
                decode(msg(P.SET_VRING_NUM, payload))
            assert e.value.rule == "bad message size"


def test_vring_addr_field_order_is_desc_used_avail():
    addr = P.decode_vring_addr(msg(P.SET_VRING_ADDR, P.pack_vring_addr(3, 0x1000, 0x3000, 0x2000)))
    assert (addr.index, addr.desc, addr.used, addr.avail) == (3, 0x1000, 0x3000, 0x2000)


def test_vring_fd_takes_the_fd_or_honours_no_fd_bit():
    m = msg(P.SET_VRING_KICK, P.pack_u64(2), [77])
    assert P.decode_vring_fd(m) == (2, 77) and m.fds == []
    m = msg(P.SET_VRING_KICK, P.pack_u64(2 | P.VRING_NOFD_MASK), [])
    assert P.decode_vring_fd(m) == (2, None)
    with pytest.raises(P.ProtocolError) as e:
        P.decode_vring_fd(msg(P.SET_VRING_CALL, P.pack_u64(1)))
    assert e.value.rule == "missing file descriptor"
    with pytest.raises(P.ProtocolError):
        P.decode_vring_fd(msg(P.SET_VRING_CALL, P.pack_u64(1 << 9), [5]))


@pytest.mark.parametrize("declared", [1, 2, 8])
def test_mem_table_accepts_uml_and_qemu_sizes(declared):
    regions = [P.MemRegion(0x1000, 0x2000, 0x7000, 0)]
    m = msg(P.SET_MEM_TABLE, P.pack_mem_table(regions, declared), [9, 10])
    got, fds = P.decode_mem_table(m)
    assert got == regions and fds == [9] and m.fds == [10]


@pytest.mark.parametrize("count,fds,declared,rule", [
    (0, 0, 8, "bad memory table"),
    (9, 9, 9, "bad memory table"),
    (2, 1, 2, "missing file descriptor"),
    (2, 2, 1, "bad memory table"),        # payload shorter than its regions
])
def test_bad_mem_tables(count, fds, declared, rule):
    regions = [P.MemRegion(i << 20, 1 << 20, i << 20, 0) for i in range(count)]
    payload = P.MEM_TABLE_HEAD.pack(count, 0) + b"".join(P.MEM_REGION.pack(*r) for r in regions[:declared])
    payload += bytes(P.MEM_REGION.size * max(0, declared - count))
    with pytest.raises(P.ProtocolError) as e:
        P.decode_mem_table(msg(P.SET_MEM_TABLE, payload, range(fds)))
    assert e.value.rule == rule


def test_config_message_sizes():
    access = P.decode_config(msg(P.SET_CONFIG, P.pack_config(4, b"\x01\x02")))
    assert access == (4, 2, 0, b"\x01\x02")
    with pytest.raises(P.ProtocolError):
        P.decode_config(msg(P.GET_CONFIG, P.pack_config(0, b"\0" * 3, size=4)))
    with pytest.raises(P.ProtocolError):
        P.decode_config(msg(P.GET_CONFIG, P.pack_config(0, bytes(300))))
    with pytest.raises(P.ProtocolError):
        P.decode_config(msg(P.GET_CONFIG, b"\0" * 5))


# -- memory ---------------------------------------------------------------------------

@pytest.fixture
def memfd():
    fd = os.memfd_create("test-guest")
    os.ftruncate(fd, 16 * PAGE)
    yield fd
    os.close(fd)


def test_regions_map_at_their_offsets_and_translate(memfd):
    os.pwrite(memfd, b"second", 8 * PAGE)
    regions = [P.MemRegion(0x100000, 4 * PAGE, 0x7F0000000000, 0),
               P.MemRegion(0x200000, 8 * PAGE, 0x7F0000400000, 8 * PAGE)]
    mem = RegionMemory(regions, [memfd, memfd])
    try:
        assert mem.read(0x200000, 6) == b"second"
        mem.write(0x100010, b"first")
        assert os.pread(memfd, 5, 0x10) == b"first"
        assert mem.user_to_guest(0x7F0000400010, 16) == 0x200010
        with pytest.raises(P.RequestError) as e:
            mem.user_to_guest(0x7F0000000000 + 4 * PAGE - 8, 16)    # runs off region 0
        assert e.value.rule == "ring outside guest memory"
        for addr, length in ((0, 1), (0x100000 + 4 * PAGE - 1, 2), (0x200000 + 8 * PAGE, 1), (0x1FFFFF, 2)):
            with pytest.raises(GuestMemoryError):
                mem.view(addr, length)
    finally:
        mem.close()


def test_span_is_the_region_holding_an_address(memfd):
    # virtqueue.py's quick path (L:236) checks a whole table against one span.
    regions = [P.MemRegion(0x100000, 4 * PAGE, 0x7F0000000000, 0),
               P.MemRegion(0x100000 + 4 * PAGE, 8 * PAGE, 0x7F0000400000, 8 * PAGE)]
    mem = RegionMemory(regions, [memfd, memfd])
    try:
        os.pwrite(memfd, b"there", 8 * PAGE + 16)
        view, start, end = mem.span(0x100000 + 4 * PAGE + 20)
        assert (start, end) == (0x100000 + 4 * PAGE, 0x100000 + 12 * PAGE)
        assert bytes(view[16:21]) == b"there"
        assert mem.span(0x100000 + 4 * PAGE - 1)[1:] == (0x100000, 0x100000 + 4 * PAGE)
        assert mem.span(0x100000 + 12 * PAGE) is None and mem.span(0) is None
    finally:
        mem.close()


def test_unaligned_mmap_offset_is_honoured(memfd):
    os.pwrite(memfd, b"here", PAGE + 100)
    mem = RegionMemory([P.MemRegion(0, PAGE, 0, PAGE + 100)], [memfd])
    try:
        assert mem.read(0, 4) == b"here"
    finally:
        mem.close()


@pytest.mark.parametrize("regions,rule", [
    ([P.MemRegion(0, 0, 0, 0)], "empty memory region"),
    ([P.MemRegion(0, 17 * PAGE, 0, 0)], "memory region outside its file"),
    ([P.MemRegion(0, 4 * PAGE, 0, 14 * PAGE)], "memory region outside its file"),
    ([P.MemRegion(0, 4 * PAGE, 0, 0), P.MemRegion(3 * PAGE, 4 * PAGE, 1 << 30, 0)], "memory regions overlap"),
    ([P.MemRegion(0, 4 * PAGE, 0, 0), P.MemRegion(1 << 30, 4 * PAGE, 2 * PAGE, 0)], "memory regions overlap"),
    ([P.MemRegion((1 << 64) - PAGE, 2 * PAGE, 0, 0)], "memory region wraps around"),
])
def test_bad_regions_are_refused_before_mapping(memfd, regions, rule):
    with pytest.raises(P.RequestError) as e:
        RegionMemory(regions, [memfd] * len(regions))
    assert e.value.rule == rule


def test_region_fd_must_be_a_file(memfd):
    r, w = os.pipe()
    try:
        with pytest.raises(P.RequestError) as e:
            RegionMemory([P.MemRegion(0, PAGE, 0, 0)], [r])
        assert e.value.rule == "memory region fd is not a file"
    finally:
        os.close(r)
        os.close(w)


@settings(max_examples=40)
@given(st.integers(0, 20 * PAGE), st.integers(0, 3 * PAGE))
def test_every_access_is_inside_one_region_or_refused(addr, length):
    fd = os.memfd_create("prop")
    os.ftruncate(fd, 8 * PAGE)
    regions = [P.MemRegion(0, 4 * PAGE, 0, 0), P.MemRegion(8 * PAGE, 4 * PAGE, 8 * PAGE, 4 * PAGE)]
    mem = RegionMemory(regions, [fd, fd])
    try:
        inside = any(r.guest_addr <= addr and addr + length <= r.guest_addr + r.size for r in regions)
        if inside:
            assert len(mem.view(addr, length)) == length
        else:
            with pytest.raises(GuestMemoryError):
                mem.view(addr, length)
    finally:
        mem.close()
        os.close(fd)
