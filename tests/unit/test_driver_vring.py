"""The driver half of the split ring (lguest/driver/vring.py), against the device half."""

import pytest
from hypothesis import given, settings, strategies as st

from lguest.driver import DriverError, DriverQueue, GuestAllocator, vring_layout
from lguest.memory import GuestMemory
from lguest.virtio import (F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
                           VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                           VRING_USED_F_NO_NOTIFY, bit)
from lguest.virtqueue import Virtqueue

MEM = 256 * 1024
INDIRECT_F, EVENT_F = bit(F_RING_INDIRECT_DESC), bit(F_RING_EVENT_IDX)


@pytest.fixture
def mem():
    with GuestMemory(MEM) as m:
        yield m


def pair(mem, size=8, features=0, start=0):
    alloc = GuestAllocator(0x1000, MEM)
    drv = DriverQueue(mem, alloc, size, features=features, start_idx=start)
    dev = Virtqueue(mem, size, drv.desc_addr, drv.avail_addr, drv.used_addr,
                    features=features, last_avail_idx=start)
    dev.check_enable()
    return alloc, drv, dev


def read_desc(mem, table, i):
    at = table + 16 * i
    return mem.read_u64(at), mem.read_u32(at + 8), mem.read_u16(at + 12), mem.read_u16(at + 14)


# -- the allocator -------------------------------------------------------------------------

def test_allocator_aligns_frees_and_coalesces():
    a = GuestAllocator(0x1001, 0x2000)
    x = a.alloc(100, 64)
    y = a.alloc(10, 16)
    assert x % 64 == 0 and y % 16 == 0 and x >= 0x1001 and not x <= y < x + 100
    assert a.free_bytes == 0x2000 - 0x1001 - 110
    a.free(x)
    a.free(y)
    assert a.free_bytes == 0x2000 - 0x1001
    assert a._free == [(0x1001, 0x2000)]
    assert a.alloc(0x2000 - 0x1001, 1) == 0x1001
    with pytest.raises(DriverError):
        a.alloc(1)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from([1, 2, 16, 64]), st.booleans()),
                max_size=40))
def test_allocator_never_overlaps_and_returns_everything(ops):
    a = GuestAllocator(0x100, 0x4000)
    live = {}
    for size, align, free_one in ops:
        try:
            addr = a.alloc(size, align)
        except DriverError:
            continue
        assert addr % align == 0 and 0x100 <= addr and addr + size <= 0x4000
        assert all(addr + size <= lo or hi <= addr for lo, hi in live.values())
        live[addr] = (addr, addr + size)
        if free_one and live:
            a.free(next(iter(live)))
            live.pop(next(iter(live)))
    for addr in list(live):
        a.free(addr)
    assert a._free == [(0x100, 0x4000)]


@pytest.mark.parametrize("start,end,size,align", [(5, 5, 1, 1), (0, 10, -1, 1), (0, 10, 1, 3)])
def test_allocator_refuses_nonsense(start, end, size, align):
    with pytest.raises(DriverError):
        GuestAllocator(start, end).alloc(size, align)


# -- layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 4, 256, 32768])
def test_layout_is_aligned_and_disjoint(size):
    d, a, u, total = vring_layout(size)
    assert d == 0 and a == 16 * size and u % 64 == 0
    assert u >= a + 2 * (3 + size) and total == u + 6 + 8 * size


@pytest.mark.parametrize("size", [0, 3, 65536])
def test_queue_size_must_be_power_of_two(mem, size):
    with pytest.raises(DriverError):
        DriverQueue(mem, GuestAllocator(0x1000, MEM), size)


# -- direct and indirect chains ----------------------------------------------------------------

def test_direct_chain_takes_descriptors_from_the_free_list(mem):
    alloc, drv, dev = pair(mem)
    head = drv.add_buffer([b"ab", b"cde"], [4], token="t")
    assert drv.num_free == 5 and drv.kick_prepare()
    a0, l0, f0, n0 = read_desc(mem, drv.desc_addr, head)
    assert (l0, f0) == (2, VRING_DESC_F_NEXT)
    _, l1, f1, n1 = read_desc(mem, drv.desc_addr, n0)
    assert (l1, f1) == (3, VRING_DESC_F_NEXT)
    _, l2, f2, _ = read_desc(mem, drv.desc_addr, n1)
    assert (l2, f2) == (4, VRING_DESC_F_WRITE)
    chain = dev.pop()
    assert chain.head == head and chain.gather() == b"abcde"
    chain.scatter(b"wxyz")
    dev.push(chain.head, 3)
    used = drv.collect()
    assert [(u.head, u.len, u.token, u.data) for u in used] == [(head, 3, "t", b"wxy")]
    assert repr(used[0]) == f"Used(head={head}, len=3, token='t')"
    assert drv.num_free == 8 and drv.outstanding == 0


def test_indirect_chain_uses_one_slot(mem):
    alloc, drv, dev = pair(mem, features=INDIRECT_F)
    before = alloc.free_bytes
    head = drv.add_buffer([b"x" * 3], [2, 2])
    assert drv.num_free == 7
    addr, length, flags, _ = read_desc(mem, drv.desc_addr, head)
    assert flags == VRING_DESC_F_INDIRECT and length == 48
    assert read_desc(mem, addr, 2)[2] == VRING_DESC_F_WRITE
    chain = dev.pop()
    assert chain.gather() == b"xxx" and [len(w) for w in chain.writable] == [2, 2]
    chain.scatter(b"1234")
    dev.push(chain.head, 4)
    assert drv.get_used().data == b"1234"
    assert alloc.free_bytes == before and drv.num_free == 8


def test_single_buffer_stays_direct_even_with_indirect(mem):
    _, drv, _ = pair(mem, features=INDIRECT_F)
    head = drv.add_buffer([], [8])
    assert read_desc(mem, drv.desc_addr, head)[2] == VRING_DESC_F_WRITE


def test_full_ring_refuses_and_gives_memory_back(mem):
    alloc, drv, dev = pair(mem, size=2)
    drv.add_buffer([1], [])
    free = alloc.free_bytes
    with pytest.raises(DriverError):
        drv.add_buffer([1, 2], [])
    assert alloc.free_bytes == free and drv.num_free == 1
    with pytest.raises(DriverError):
        drv.add_buffer([], [])


def test_bad_used_ids_are_driver_errors(mem):
    _, drv, dev = pair(mem, size=4)
    dev.push(7, 0)
    with pytest.raises(DriverError, match="out of range"):
        drv.get_used()
    _, drv, dev = pair(mem, size=4)
    dev.push(1, 0)
    with pytest.raises(DriverError, match="not a head"):
        drv.get_used()


def test_used_length_beyond_the_buffers_gives_only_the_buffers(mem):
    _, drv, dev = pair(mem)
    drv.add_buffer([], [3])
    chain = dev.pop()
    chain.scatter(b"abc")
    dev.push(chain.head, 1000)
    u = drv.get_used()
    assert u.len == 1000 and u.data == b"abc"


# -- kicks and interrupts ---------------------------------------------------------------------

def test_kick_follows_no_notify(mem):
    _, drv, dev = pair(mem)
    dev.set_notifications(False)
    drv.add_buffer([1], [])
    assert not drv.kick_prepare()
    assert mem.read_u16(drv.used_addr) == VRING_USED_F_NO_NOTIFY
    dev.set_notifications(True)
    drv.add_buffer([1], [])
    assert drv.kick_prepare()


def test_kick_follows_avail_event_across_the_wrap(mem):
    _, drv, dev = pair(mem, features=EVENT_F, start=65534)
    dev.set_notifications(True)                 # avail_event = 65534
    drv.add_buffer([1], [])
    drv.add_buffer([1], [])
    assert drv.kick_prepare()                   # 65534 -> 0 passes 65534
    drv.add_buffer([1], [])
    assert not drv.kick_prepare()               # device did not move avail_event
    assert [dev.pop().head for _ in range(3)] == [0, 1, 2]
    dev.set_notifications(True)                 # avail_event = 1
    drv.add_buffer([1], [])
    assert drv.kick_prepare()


def test_disable_and_enable_cb_without_event_idx(mem):
    _, drv, dev = pair(mem)
    drv.disable_cb()
    assert mem.read_u16(drv.avail_addr) == VRING_AVAIL_F_NO_INTERRUPT
    drv.add_buffer([1], [])
    dev.push(dev.pop().head, 0)
    assert not dev.should_interrupt()
    assert not drv.enable_cb()                  # something is already used: don't sleep
    assert mem.read_u16(drv.avail_addr) == 0
    assert len(drv.collect()) == 1 and drv.enable_cb()


def test_event_idx_interrupts_for_the_next_entry_only(mem):
    _, drv, dev = pair(mem, features=EVENT_F, start=65535)
    drv.enable_cb()
    assert mem.read_u16(drv.used_event_addr) == 65535
    for _ in range(3):
        drv.add_buffer([1], [])
    dev.push(dev.pop().head, 0)
    assert dev.should_interrupt()               # entry 65535 was the event
    dev.push(dev.pop().head, 0)
    assert not dev.should_interrupt()           # driver has not collected: no news
    assert len(drv.collect()) == 2
    assert mem.read_u16(drv.used_event_addr) == 1
    dev.push(dev.pop().head, 0)
    assert dev.should_interrupt()
    drv.disable_cb()
    assert mem.read_u16(drv.used_event_addr) == 0   # Linux's "hack" value


def test_enable_cb_delayed_asks_for_three_quarters(mem):
    _, drv, dev = pair(mem, features=EVENT_F)
    drv.disable_cb()
    for _ in range(8):
        drv.add_buffer([1], [])
    assert drv.enable_cb_delayed()
    assert mem.read_u16(drv.used_event_addr) == 6
    heads = [dev.pop().head for _ in range(8)]
    interrupts = []
    for h in heads:
        dev.push(h, 0)
        interrupts.append(dev.should_interrupt())
    assert interrupts == [False] * 6 + [True, False]


def test_enable_cb_delayed_flag_mode(mem):
    _, drv, dev = pair(mem)
    drv.disable_cb()
    drv.add_buffer([1], [])
    dev.push(dev.pop().head, 0)
    assert not drv.enable_cb_delayed()          # already past 3/4 of one buffer
    assert mem.read_u16(drv.avail_addr) == 0


@settings(max_examples=60)
@given(entries=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                        min_size=1, max_size=8),
       small=st.booleans())
def test_a_hostile_device_only_causes_driver_errors(entries, small):
    """Whatever a device writes into the used ring, the driver raises DriverError or
    hands back what it had outstanding, never more bytes than it offered."""
    with GuestMemory(MEM) as mem:
        _, drv, dev = pair(mem, size=8)
        for _ in range(4):
            drv.add_buffer([b"q"], [5])
        for head, length in entries:
            dev.push(head % 8 if small else head, length)
        try:
            for u in drv.collect():
                assert len(u.data) <= 5
        except DriverError:
            pass
        assert drv.num_free + 2 * drv.outstanding == 8
