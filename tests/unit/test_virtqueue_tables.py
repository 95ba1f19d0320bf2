"""Indirect tables as Linux builds them take a quick path through pop() (L:236), and
queues that ask for it (virtio-fs) get buffers that touch as one view. The quick path
must give what the descriptor-by-descriptor walk gives -- the same bytes, the same
lengths, the same rule broken -- for every table, Linux-shaped or not."""

import os
import struct
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from lguest import virtqueue as vqmod
from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.virtio import (F_RING_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
                           VRING_DESC_F_WRITE, bit)
from lguest.virtqueue import Virtqueue

MEM = 256 * 1024
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
TABLE = 0x4000
DATA = 0x10000
NEXT, WRITE, INDIRECT = VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT


def offer_table(mem, entries, head=0):
    """Write `entries` (addr, len, flags, next) as an indirect table at TABLE, one ring
    descriptor pointing at it, and offer it."""
    for i, entry in enumerate(entries):
        struct.pack_into("<QIHH", mem._ram, TABLE + 16 * i, *entry)
    struct.pack_into("<QIHH", mem._ram, DESC + 16 * head, TABLE, 16 * len(entries), INDIRECT, 0)
    mem.write_u16(AVAIL + 4, head)
    mem.write_u16(AVAIL + 2, 1)


def queue(mem, coalesce):
    vq = Virtqueue(mem, 8, DESC, AVAIL, USED, features=bit(F_RING_INDIRECT_DESC),
                   name="rq", device="fs")
    vq.coalesce = coalesce
    return vq


def outcome(vq):
    """What pop() gives, in comparable terms: the rule broken, or the head, the buffers'
    bytes and lengths on each side."""
    try:
        chain = vq.pop()
    except GuestError as e:
        return ("error", e.rule)
    return ("chain", chain.head, [bytes(v) for v in chain.readable],
            [bytes(v) for v in chain.writable])


def joined(result):
    """An outcome with each side's buffers joined: what coalescing must not change."""
    if result[0] == "error":
        return result
    return result[:2] + (b"".join(result[2]), b"".join(result[3]))


def walked_one_by_one(mem):
    """The outcome of the general walk alone, the quick path turned off."""
    with mock.patch.object(vqmod, "linux_table", lambda memory, table, coalesce: None):
        return outcome(queue(mem, False))


def linux_entries(buffers):
    """A table as alloc_indirect_split() fills it: next = i + 1, NEXT on all but the last."""
    n = len(buffers)
    return [(addr, length, flags | (NEXT if i + 1 < n else 0), i + 1)
            for i, (addr, length, flags) in enumerate(buffers)]


def random_memory():
    m = GuestMemory(MEM)
    m.write(DATA, os.urandom(MEM - DATA))         # every range's bytes are its own
    return m


@pytest.fixture
def mem():
    with random_memory() as m:
        yield m


def test_a_fuse_read_of_touching_pages_comes_as_one_view_a_side(mem):
    # header and arguments, then the out header and 32 pages, all back to back
    buffers = [(DATA, 40, 0), (DATA + 40, 40, 0), (DATA + 80, 16, WRITE)]
    buffers += [(DATA + 96 + 4096 * i, 4096, WRITE) for i in range(32)]
    offer_table(mem, linux_entries(buffers))
    chain = queue(mem, True).pop()
    assert [v.nbytes for v in chain.readable] == [80]     # never merged with the writable
    assert [v.nbytes for v in chain.writable] == [16 + 32 * 4096]
    assert bytes(chain.writable[0][16:32]) == mem.read(DATA + 96, 16)


def test_a_gap_in_guest_memory_starts_a_new_view(mem):
    buffers = [(DATA, 64, 0), (DATA + 0x2000, 16, WRITE), (DATA + 0x2010, 4096, WRITE),
               (DATA + 0x8000, 4096, WRITE), (DATA + 0x9000, 4096, WRITE)]
    offer_table(mem, linux_entries(buffers))
    chain = queue(mem, True).pop()
    assert [v.nbytes for v in chain.readable] == [64]
    assert [v.nbytes for v in chain.writable] == [16 + 4096, 2 * 4096]
    assert bytes(chain.writable[1]) == mem.read(DATA + 0x8000, 2 * 4096)


def test_without_coalesce_every_descriptor_is_its_own_view(mem):
    buffers = [(DATA + 4096 * i, 4096, WRITE if i else 0) for i in range(8)]
    offer_table(mem, linux_entries(buffers))
    chain = queue(mem, False).pop()
    assert [v.nbytes for v in chain.readable] == [4096]
    assert [v.nbytes for v in chain.writable] == [4096] * 7


def test_the_quick_path_leaves_a_broken_table_to_the_walk_that_names_the_rule(mem):
    # readable after writable, inside a Linux-looking table
    buffers = [(DATA, 16, 0), (DATA + 16, 16, WRITE), (DATA + 32, 16, 0)]
    offer_table(mem, linux_entries(buffers))
    with pytest.raises(GuestError) as e:
        queue(mem, True).pop()
    assert e.value.rule == vqmod.RULE_OUT_AFTER_IN
    # a buffer past the end of guest memory
    offer_table(mem, linux_entries([(DATA, 16, 0), (MEM - 8, 16, WRITE)]))
    with pytest.raises(GuestError) as e:
        queue(mem, True).pop()
    assert e.value.rule == vqmod.RULE_ADDRESS


# Addresses near each other (so buffers often touch), lengths small, and flags and nexts
# mostly as Linux sets them, sometimes not: each table is Linux-shaped or one step off.
FLAG_CHOICES = [0, WRITE, NEXT, NEXT | WRITE, INDIRECT, NEXT | INDIRECT, 0x80]


@st.composite
def tables(draw):
    n = draw(st.integers(1, 40))
    at = DATA + draw(st.integers(0, 64)) * 16
    first_write = draw(st.integers(0, n))
    buffers = []
    for i in range(n):
        length = draw(st.sampled_from([0, 1, 16, 40, 4096, draw(st.integers(0, 9000))]))
        buffers.append((at, length, WRITE if i >= first_write else 0))
        at += length if draw(st.booleans()) else draw(st.integers(1, 4096))
    entries = linux_entries(buffers)
    for _ in range(draw(st.integers(0, 2))):       # a few fields changed, or none
        i = draw(st.integers(0, n - 1))
        addr, length, flags, nxt = entries[i]
        field = draw(st.sampled_from(["addr", "flags", "next"]))
        if field == "addr":
            addr = draw(st.sampled_from([0, MEM - 8, MEM, MEM + 4096, 1 << 63]))
        elif field == "flags":
            flags = draw(st.sampled_from(FLAG_CHOICES))
        else:
            nxt = draw(st.integers(0, n + 1))
        entries[i] = (addr, length, flags, nxt)
    return entries


@settings(max_examples=examples(300), deadline=None)
@given(entries=tables())
def test_the_quick_path_gives_what_the_walk_gives(entries):
    with random_memory() as mem:
        offer_table(mem, entries)
        walked = walked_one_by_one(mem)
        assert outcome(queue(mem, False)) == walked
        assert joined(outcome(queue(mem, True))) == joined(walked)
