"""The device side of the split ring: one test per seed rule, and the happy paths.

Rings are written by hand here (RawRing), so each test states exactly which bytes the
guest put where; tests/unit/test_virtqueue_machine.py drives it with the real driver.
"""

import struct

import pytest

from lguest import virtqueue as vqmod
from lguest.devices.base import give_back
from lguest.errors import GuestError, GuestMemoryError
from lguest.memory import GuestMemory
from lguest.virtio import (F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, VRING_AVAIL_F_NO_INTERRUPT,
                           VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                           VRING_USED_F_NO_NOTIFY, bit)
from lguest.virtqueue import Chain, Virtqueue, vring_need_event

MEM = 64 * 1024
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
DATA = 0x8000
NEXT, WRITE, INDIRECT = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT
INDIRECT_F, EVENT_F = bit(F_RING_INDIRECT_DESC), bit(F_RING_EVENT_IDX)


@pytest.fixture
def mem():
    with GuestMemory(MEM) as m:
        yield m


class RawRing:
    """A guest that writes ring fields directly, right or wrong."""

    def __init__(self, mem, size=8, features=0, start=0):
        self.mem, self.size = mem, size
        mem.write_u16(AVAIL + 2, start)
        mem.write_u16(USED + 2, start)
        self.idx = start
        self.vq = Virtqueue(mem, size, DESC, AVAIL, USED, features=features,
                            name="rx", device="net", last_avail_idx=start)

    def desc(self, i, addr, length, flags=0, nxt=0, table=DESC):
        struct.pack_into("<QIHH", self.mem._ram, table + 16 * i, addr, length, flags, nxt)

    def offer(self, head):
        self.mem.write_u16(AVAIL + 4 + 2 * (self.idx % self.size), head)
        self.idx = (self.idx + 1) & 0xFFFF
        self.mem.write_u16(AVAIL + 2, self.idx)


def rule_of(excinfo):
    err = excinfo.value
    assert isinstance(err, GuestError)
    assert (err.device, err.queue) == ("net", "rx")
    return err.rule


def pop_error(ring):
    with pytest.raises(GuestError) as excinfo:
        ring.vq.pop()
    return rule_of(excinfo)


# -- happy paths -----------------------------------------------------------------------

def test_pop_gives_zero_copy_views_in_order_and_push_writes_used(mem):
    ring = RawRing(mem)
    mem.write(DATA, b"hello")
    ring.desc(3, DATA, 5, NEXT, 5)
    ring.desc(5, DATA + 0x100, 4, WRITE | NEXT, 1)
    ring.desc(1, DATA + 0x200, 6, WRITE)
    ring.offer(3)
    assert ring.vq.has_available()
    chain = ring.vq.pop()
    assert chain.head == 3
    assert [bytes(b) for b in chain.readable] == [b"hello"]
    assert [len(b) for b in chain.writable] == [4, 6]
    assert chain.scatter(b"0123456789xyz") == 10
    assert mem.read(DATA + 0x100, 4) == b"0123" and mem.read(DATA + 0x200, 6) == b"456789"
    assert ring.vq.pop() is None and not ring.vq.has_available()
    ring.vq.push(chain.head, 10)
    assert mem.read_u16(USED + 2) == 1 and ring.vq.used_idx == 1
    assert struct.unpack_from("<II", mem.read(USED + 4, 8)) == (3, 10)


def test_chain_helpers(mem):
    ring = RawRing(mem)
    mem.write(DATA, b"abcdef")
    ring.desc(0, DATA, 2, NEXT, 1)
    ring.desc(1, DATA + 2, 4, NEXT, 2)
    ring.desc(2, DATA + 0x100, 3, WRITE | NEXT, 3)
    ring.desc(3, DATA + 0x200, 3, WRITE)
    ring.offer(0)
    chain = ring.vq.pop()
    assert chain.gather() == b"abcdef"
    assert (chain.readable_len, chain.writable_len) == (6, 6)
    assert chain.scatter(b"XY", offset=4) == 2
    assert mem.read(DATA + 0x200, 3) == b"\0XY"   # offset 4 = 1 into the second
    assert "head=0" in repr(chain) and "rx" in repr(ring.vq)


def test_indirect_chain(mem):
    ring = RawRing(mem, features=INDIRECT_F)
    table = DATA + 0x1000
    mem.write(DATA, b"req")
    ring.desc(0, DATA, 3, NEXT, 1, table=table)
    ring.desc(1, DATA + 0x100, 16, WRITE, 0, table=table)
    ring.desc(2, table, 32, INDIRECT | WRITE)   # WRITE on the indirect one is ignored
    ring.offer(2)
    chain = ring.vq.pop()
    assert chain.head == 2 and chain.gather() == b"req" and chain.writable_len == 16


def test_push_many_publishes_once(mem):
    ring = RawRing(mem, size=4, start=65534)
    ring.vq.push_many([(1, 10), (2, 20), (3, 30)])
    assert ring.vq.used_idx == 1 and mem.read_u16(USED + 2) == 1
    elems = [struct.unpack_from("<II", mem.read(USED + 4 + 8 * s, 8)) for s in (2, 3, 0)]
    assert elems == [(1, 10), (2, 20), (3, 30)]
    ring.vq.push_many([])
    assert ring.vq.used_idx == 1


def test_wraps_across_65535(mem):
    ring = RawRing(mem, size=2, start=65535)
    ring.desc(0, DATA, 1)
    ring.desc(1, DATA, 1)
    for head in (0, 1, 0):
        ring.offer(head)
        assert ring.vq.pop().head == head
        ring.vq.push(head, 0)
    assert ring.vq.last_avail_idx == 2 and ring.vq.used_idx == 2


# -- notification suppression ------------------------------------------------------------

def test_interrupt_follows_no_interrupt_flag(mem):
    ring = RawRing(mem)
    assert not ring.vq.should_interrupt()           # nothing used: never
    ring.vq.push(0, 0)
    assert ring.vq.should_interrupt()
    assert not ring.vq.should_interrupt()           # pending state was reset
    mem.write_u16(AVAIL, VRING_AVAIL_F_NO_INTERRUPT)
    ring.vq.push(0, 0)
    assert not ring.vq.should_interrupt()


def test_interrupt_follows_used_event_across_wrap(mem):
    ring = RawRing(mem, features=EVENT_F, start=65534)
    used_event = AVAIL + 4 + 2 * 8
    mem.write_u16(AVAIL, VRING_AVAIL_F_NO_INTERRUPT | 6)   # flags ignored with EVENT_IDX
    mem.write_u16(used_event, 0)        # "interrupt me when you write entry 0"
    ring.vq.push(0, 0)                  # wrote entry 65534
    assert not ring.vq.should_interrupt()
    ring.vq.push(0, 0)                  # 65535
    ring.vq.push(0, 0)                  # 0: crossed
    assert ring.vq.should_interrupt()
    ring.vq.push(0, 0)                  # 1: already past the event
    assert not ring.vq.should_interrupt()


def test_notifications_flag(mem):
    ring = RawRing(mem)
    mem.write_u16(USED, 0x8000)         # a bit we do not own survives
    ring.vq.set_notifications(False)
    assert mem.read_u16(USED) == 0x8000 | VRING_USED_F_NO_NOTIFY
    ring.vq.set_notifications(True)
    assert mem.read_u16(USED) == 0x8000


def test_notifications_event_idx_writes_avail_event(mem):
    ring = RawRing(mem, features=EVENT_F, start=65535)
    avail_event = USED + 4 + 8 * 8
    mem.write_u16(avail_event, 1234)
    ring.vq.set_notifications(False)
    assert mem.read_u16(avail_event) == 1234 and mem.read_u16(USED) == 0
    ring.vq.set_notifications(True)
    assert mem.read_u16(avail_event) == 65535


def test_avail_event_after_give_back_is_past_the_chains_popped(mem):
    # Chains popped and given back (give_back) were seen: avail_event must ask for the
    # next chain the driver adds, not for one it published long ago (it would never kick).
    ring = RawRing(mem, features=EVENT_F, start=65534)
    avail_event = USED + 4 + 8 * 8
    for head in range(3):
        ring.desc(head, DATA + 0x100 * head, 16, WRITE)
        ring.offer(head)
    assert [ring.vq.pop().head for _ in range(3)] == [0, 1, 2]
    give_back(ring.vq, 2)
    ring.vq.set_notifications(True)
    assert mem.read_u16(avail_event) == 1           # 65534 + 3, across the wrap
    assert [ring.vq.pop().head for _ in range(2)] == [1, 2]   # popped again: no change
    ring.vq.set_notifications(True)
    assert mem.read_u16(avail_event) == 1
    assert vring_need_event(1, 2, 1)                # the driver's next chain kicks


@pytest.mark.parametrize("event,new,old,expected", [
    (0, 1, 0, True), (0, 2, 1, False), (5, 6, 0, True), (6, 6, 0, False),
    (65535, 0, 65535, True), (65535, 1, 65534, True), (1, 0, 65534, False),
    (7, 7, 7, False),
])
def test_vring_need_event(event, new, old, expected):
    assert vring_need_event(event, new, old) is expected


# -- the rules, one test each ------------------------------------------------------------

def test_rule_avail_moved_too_far(mem):
    ring = RawRing(mem, size=4, start=100)
    mem.write_u16(AVAIL + 2, 105)
    assert pop_error(ring) == vqmod.RULE_AVAIL_MOVED == "Guest moved used index"


def test_rule_avail_moved_backwards_is_too_far(mem):
    ring = RawRing(mem, size=4, start=0)
    mem.write_u16(AVAIL + 2, 65535)
    assert pop_error(ring) == vqmod.RULE_AVAIL_MOVED


def test_avail_moved_exactly_the_ring_size_is_fine(mem):
    ring = RawRing(mem, size=4, start=65533)
    ring.desc(2, DATA, 1)
    for _ in range(4):
        ring.offer(2)
    assert [ring.vq.pop().head for _ in range(4)] == [2, 2, 2, 2]


def test_rule_head_out_of_range(mem):
    ring = RawRing(mem, size=4)
    ring.offer(4)
    assert pop_error(ring) == vqmod.RULE_HEAD_RANGE


def test_rule_next_out_of_range(mem):
    ring = RawRing(mem, size=4)
    ring.desc(0, DATA, 1, NEXT, 4)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_NEXT_RANGE


def test_rule_looped_descriptor(mem):
    ring = RawRing(mem, size=4)
    ring.desc(0, DATA, 1, NEXT, 1)
    ring.desc(1, DATA, 1, NEXT, 0)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_LOOP == "Looped descriptor"


def test_a_chain_as_long_as_the_ring_is_not_a_loop(mem):
    ring = RawRing(mem, size=4)
    for i in range(4):
        ring.desc(i, DATA, 1, NEXT if i < 3 else 0, i + 1)
    ring.offer(0)
    assert len(ring.vq.pop().readable) == 4


def test_rule_out_after_in(mem):
    ring = RawRing(mem)
    ring.desc(0, DATA, 1, WRITE | NEXT, 1)
    ring.desc(1, DATA, 1)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_OUT_AFTER_IN == "Descriptor has out after in"


def test_rule_indirect_not_negotiated(mem):
    ring = RawRing(mem)
    ring.desc(0, DATA, 16, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_INDIRECT_FEATURE == "vq indirect not negotiated"


def test_rule_indirect_within_indirect(mem):
    ring = RawRing(mem, features=INDIRECT_F)
    ring.desc(0, DATA, 16, INDIRECT, table=DATA)    # the table points at itself
    ring.desc(0, DATA, 16, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_INDIRECT_NESTED == "Indirect within indirect"


def test_rule_indirect_and_next(mem):
    ring = RawRing(mem, features=INDIRECT_F)
    ring.desc(0, DATA, 16, INDIRECT | NEXT, 1)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_INDIRECT_NEXT == "indirect and next together"


@pytest.mark.parametrize("length", [15, 17, 0])
def test_rule_indirect_size(mem, length):
    ring = RawRing(mem, features=INDIRECT_F)
    ring.desc(0, DATA, length, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_INDIRECT_SIZE == "Invalid size for indirect table"


def test_rule_indirect_too_many(mem):
    ring = RawRing(mem, size=4, features=INDIRECT_F)
    ring.desc(0, DATA, 16 * (vqmod.INDIRECT_MAX + 1), INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_INDIRECT_TOO_MANY == "indirect has too many entries"


def test_an_indirect_table_longer_than_a_small_ring_is_taken(mem):
    """Issue 15: QEMU's 128-entry ring, Linux's tables of seg_max + 2 = 256 entries
    ("indirect has too many entries (249 entries, queue size 128)" hung the guest)."""
    ring = RawRing(mem, size=128, features=INDIRECT_F)
    table = DATA
    for i in range(249):
        last = i == 248
        ring.desc(i, 0x100, 8, (WRITE if last else 0) | (0 if last else NEXT), i + 1, table=table)
    ring.desc(0, table, 16 * 249, INDIRECT)
    ring.offer(0)
    chain = ring.vq.pop()
    assert len(chain.readable) == 248 and len(chain.writable) == 1


def test_rule_indirect_loop_is_bounded_by_its_table(mem):
    ring = RawRing(mem, size=8, features=INDIRECT_F)
    ring.desc(0, DATA + 0x100, 1, NEXT, 1, table=DATA)
    ring.desc(1, DATA + 0x100, 1, NEXT, 0, table=DATA)
    ring.desc(0, DATA, 32, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_LOOP


def test_rule_indirect_next_out_of_its_table(mem):
    ring = RawRing(mem, size=8, features=INDIRECT_F)
    ring.desc(0, DATA + 0x100, 1, NEXT, 2, table=DATA)   # table has 2 entries
    ring.desc(0, DATA, 32, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_NEXT_RANGE


@pytest.mark.parametrize("addr,length", [(MEM - 4, 5), (MEM, 1), (2**64 - 1, 2), (0, 2**32 - 1)])
def test_rule_buffer_outside_guest_memory(mem, addr, length):
    ring = RawRing(mem)
    ring.desc(0, addr, length)
    ring.offer(0)
    with pytest.raises(GuestMemoryError) as excinfo:
        ring.vq.pop()
    assert rule_of(excinfo) == vqmod.RULE_ADDRESS


def test_rule_indirect_table_outside_guest_memory(mem):
    ring = RawRing(mem, features=INDIRECT_F)
    ring.desc(0, MEM - 16, 32, INDIRECT)
    ring.offer(0)
    assert pop_error(ring) == vqmod.RULE_ADDRESS


def test_a_buffer_ending_at_the_last_byte_is_fine(mem):
    ring = RawRing(mem)
    ring.desc(0, MEM - 4, 4, WRITE)
    ring.offer(0)
    assert ring.vq.pop().writable_len == 4


@pytest.mark.parametrize("desc,avail,used", [(DESC + 8, AVAIL, USED), (DESC, AVAIL + 1, USED),
                                             (DESC, AVAIL, USED + 2)])
def test_rule_alignment(mem, desc, avail, used):
    vq = Virtqueue(mem, 8, desc, avail, used, name="rx", device="net")
    with pytest.raises(GuestError) as excinfo:
        vq.check_enable()
    assert rule_of(excinfo) == vqmod.RULE_ALIGNMENT


def test_aligned_queue_enables(mem):
    Virtqueue(mem, 8, DESC + 16, AVAIL + 2, USED + 4).check_enable()


@pytest.mark.parametrize("where", ["desc", "avail", "used"])
def test_rule_ring_part_outside_memory(mem, where):
    addrs = {"desc": DESC, "avail": AVAIL, "used": USED}
    addrs[where] = MEM - 16
    vq = Virtqueue(mem, 8, features=EVENT_F, name="rx", device="net", **addrs)
    with pytest.raises(GuestMemoryError) as excinfo:
        vq.check_enable()
    assert rule_of(excinfo) == vqmod.RULE_ADDRESS
    with pytest.raises(GuestMemoryError):
        vq.pop()


def test_event_idx_ring_needs_its_extra_u16(mem):
    # used ring of size 8 is 4 + 64 bytes; with EVENT_IDX, 2 more.
    used = MEM - 68
    Virtqueue(mem, 8, DESC, AVAIL, used).check_enable()
    with pytest.raises(GuestMemoryError):
        Virtqueue(mem, 8, DESC, AVAIL, used, features=EVENT_F).check_enable()


def test_rule_used_flags_at_enable(mem):
    mem.write_u16(USED, 1)
    vq = Virtqueue(mem, 8, DESC, AVAIL, USED, name="rx", device="net")
    with pytest.raises(GuestError) as excinfo:
        vq.check_enable()
    assert rule_of(excinfo) == vqmod.RULE_USED_FLAGS


def test_rule_avail_flags_without_event_idx(mem):
    ring = RawRing(mem)
    mem.write_u16(AVAIL, 2)
    ring.vq.push(0, 0)
    with pytest.raises(GuestError) as excinfo:
        ring.vq.should_interrupt()
    assert rule_of(excinfo) == vqmod.RULE_AVAIL_FLAGS


@pytest.mark.parametrize("size", [0, -1, 32769])
def test_rule_queue_size(mem, size):
    with pytest.raises(GuestError) as excinfo:
        Virtqueue(mem, size, DESC, AVAIL, USED, name="rx", device="net")
    assert rule_of(excinfo) == vqmod.RULE_QUEUE_SIZE


def test_every_rule_is_known():
    rules = {v for k, v in vars(vqmod).items() if k.startswith("RULE_")}
    assert rules == vqmod.SEED_RULES


def test_used_idx_starts_from_the_ring(mem):
    mem.write_u16(USED + 2, 4242)
    vq = Virtqueue(mem, 8, DESC, AVAIL, USED, last_avail_idx=70000)
    assert vq.used_idx == 4242 and vq.last_avail_idx == 70000 & 0xFFFF
    assert isinstance(Chain(1, [], []), Chain)


def test_a_queue_outside_memory_refuses_every_operation(mem):
    vq = Virtqueue(mem, 8, DESC, AVAIL, MEM - 8, name="rx", device="net")
    for op in (vq.has_available, vq.pop, lambda: vq.push(0, 0), lambda: vq.push_many([(0, 0)]),
               lambda: vq.set_notifications(True)):
        with pytest.raises(GuestMemoryError) as excinfo:
            op()
        assert rule_of(excinfo) == vqmod.RULE_ADDRESS
    assert not vq.should_interrupt()        # nothing was ever pushed


def test_direct_descriptors_before_an_indirect_one_count_against_its_table(mem):
    # The seed refuses only INDIRECT|NEXT, but its loop count carries on into the
    # table and is compared with the table's size, so any direct prefix overflows
    # it: "Looped descriptor". Linux never builds such a chain; we keep the seed's rule.
    ring = RawRing(mem, size=4, features=INDIRECT_F)
    table = DATA + 0x1000
    ring.desc(0, DATA, 1, NEXT, 1, table=table)
    ring.desc(1, DATA, 1, 0, 0, table=table)
    ring.desc(1, DATA, 1, NEXT, 2)
    ring.desc(2, table, 32, INDIRECT)
    ring.offer(1)
    assert pop_error(ring) == vqmod.RULE_LOOP
    ring.offer(2)                       # the same table on its own is fine
    assert len(ring.vq.pop().readable) == 2
