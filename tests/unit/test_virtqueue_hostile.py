"""A hostile guest: random bytes and random fields in the rings.

Whatever the guest writes, the device side may only ever raise GuestError with one of
the known rules, never another exception; and it never touches memory outside the
guest: the guest memory is small and has PROT_NONE guard pages on both sides, so a
stray access would kill the test process, and every buffer handed out is checked to
lie inside guest memory.
"""

import random
import struct

from hypothesis import given, settings, strategies as st
from hypothesis_budget import examples

from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.virtio import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, bit
from lguest.virtqueue import SEED_RULES, Virtqueue

MEM = 16 * 1024
DESC, AVAIL, USED = 0x0, 0x1000, 0x1800

sizes = st.sampled_from([1, 2, 4, 8, 16, 64, 128])
features = st.sampled_from([0, bit(F_RING_INDIRECT_DESC), bit(F_RING_EVENT_IDX),
                            bit(F_RING_INDIRECT_DESC) | bit(F_RING_EVENT_IDX)])
addrs = st.one_of(st.integers(0, MEM - 64), st.integers(0, 8).map(lambda k: DESC + 16 * k),
                  st.sampled_from([MEM - 1, MEM - 16, 2**32 - 1, 2**64 - 1,
                                                        2**64 - 16]),
                  st.integers(0, 2**64 - 1))
lengths = st.one_of(st.integers(0, 64), st.integers(0, 9).map(lambda k: 16 * k), st.sampled_from([16 * 129, 2**31, 2**32 - 1]),
                    st.integers(0, 2**32 - 1))
descs = st.tuples(addrs, lengths, st.one_of(st.integers(0, 7), st.integers(0, 7), st.integers(0, 0xFFFF)),
                  st.one_of(st.integers(0, 999), st.integers(0, 999), st.integers(0, 0xFFFF)))
mostly_none = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 0xFFFF))
flag_words = st.one_of(st.just(0), st.just(1), st.integers(0, 0xFFFF))


def inside_guest(mem, view):
    """A view is inside guest RAM if it is a slice of the guest's own buffer."""
    base = mem._ram
    return view.obj is base.obj and len(view) <= mem.size


def exercise(mem, vq, rounds=8):
    """Drive the device side the way a device would, for a few rounds."""
    rules = []
    for _ in range(rounds):
        try:
            vq.set_notifications(False)
            chain = vq.pop()
            if chain is None:
                vq.set_notifications(True)
                vq.should_interrupt()
                break
            for view in chain.readable + chain.writable:
                assert inside_guest(mem, view)
            bytes(chain.gather())
            n = chain.scatter(b"\xee" * 40)
            vq.push(chain.head, n)
            vq.should_interrupt()
        except GuestError as e:
            assert e.rule in SEED_RULES, e.rule
            assert e.device == "dev" and e.queue == "q"
            rules.append(e.rule)
            break
    return rules


@settings(max_examples=examples(150))
@given(size=sizes, feats=features, seed=st.integers(0, 2**32), desc=st.binary(max_size=2048),
       avail=st.binary(max_size=262), last=st.integers(0, 0xFFFF), offered=mostly_none)
def test_random_bytes_in_the_rings(size, feats, seed, desc, avail, last, offered):
    with GuestMemory(MEM) as mem:
        # All of memory random (so indirect tables and used.flags are too), then the
        # descriptor table and avail ring from Hypothesis, so failures shrink.
        mem.write(0, random.Random(seed).randbytes(MEM))
        mem.write(DESC, desc)
        mem.write(AVAIL, avail)
        if offered is None:     # mostly a believable avail.idx, so pop() reads on
            mem.write_u16(AVAIL + 2, (last + 1 + mem.read_u8(AVAIL + 2) % size) & 0xFFFF)
            mem.write_u16(AVAIL, mem.read_u8(AVAIL) & 1)
            for n in range(size):
                slot = AVAIL + 4 + 2 * n
                mem.write_u16(slot, mem.read_u16(slot) % size)
        vq = Virtqueue(mem, size, DESC, AVAIL, USED, features=feats, name="q", device="dev",
                       last_avail_idx=last)
        try:
            vq.check_enable()
        except GuestError as e:
            assert e.rule in SEED_RULES
        exercise(mem, vq)
        del vq


@settings(max_examples=examples(200))
@given(size=sizes, feats=features, table=st.lists(descs, min_size=1, max_size=16),
       heads=st.lists(st.integers(0, 999), min_size=1, max_size=6), wild_head=mostly_none,
       avail_jump=mostly_none, avail_flags=flag_words, last=st.integers(0, 0xFFFF))
def test_random_fields_in_descriptors(size, feats, table, heads, wild_head, avail_jump,
                                      avail_flags, last):
    """Structured garbage reaches deeper than random bytes: plausible tables whose
    heads, nexts, lengths and flags are sometimes wrong. Indirect tables point into
    the same descriptor area, so they are garbage too."""
    with GuestMemory(MEM) as mem:
        # Small numbers (< 1000) are folded into the ring, so most heads and nexts
        # are in range and chains go on (and loop); the rest stay wild.
        def fold(n):
            return n % size if n < 1000 else n
        for i, (addr, length, flags, nxt) in enumerate(table[:size]):
            struct.pack_into("<QIHH", mem._ram, DESC + 16 * i, addr, length, flags, fold(nxt))
        heads = heads[:size] if wild_head is None else heads[:size - 1] + [wild_head]
        for n, head in enumerate(heads):
            mem.write_u16(AVAIL + 4 + 2 * ((last + n) % size), fold(head))
        idx = (last + len(heads)) & 0xFFFF if avail_jump is None else avail_jump
        mem.write_u16(AVAIL + 2, idx)
        mem.write_u16(AVAIL, avail_flags)
        vq = Virtqueue(mem, size, DESC, AVAIL, USED, features=feats, name="q", device="dev",
                       last_avail_idx=last)
        vq.check_enable()
        exercise(mem, vq)
        del vq


@settings(max_examples=examples(50))
@given(size=sizes, feats=features, where=st.tuples(st.integers(0, 2**64 - 1),
                                                   st.integers(0, 2**64 - 1),
                                                   st.integers(0, 2**64 - 1)))
def test_random_ring_addresses(size, feats, where):
    with GuestMemory(MEM) as mem:
        vq = Virtqueue(mem, size, *where, features=feats, name="q", device="dev")
        try:
            vq.check_enable()
        except GuestError as e:
            assert e.rule in SEED_RULES
        exercise(mem, vq, rounds=2)
        del vq
