"""A minimal guest side for device unit tests: lays out one split ring in guest memory,
adds chains (direct or indirect), and reads back the used ring. The real guest-side
driver (lguest/driver) drives the devices through the transport in test_dev_transport.py;
this one lets the device logic be tested on its own, against the real Virtqueue."""

import struct

from lguest.memory import GuestMemory
from lguest.virtio import (DESC_SIZE, F_RING_INDIRECT_DESC, VRING_DESC_F_INDIRECT,
                           VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, bit)
from lguest.virtqueue import Virtqueue


class GuestRing:
    """The driver's half of a ring of `size` at `base`, with a bump allocator for buffers
    from `heap` on. Descriptors are handed out in order and never freed (tests are short)."""

    def __init__(self, memory, size=16, base=0x1000, heap=0x10000, features=bit(F_RING_INDIRECT_DESC)):
        self.memory, self.size = memory, size
        self.desc = base
        self.avail = base + DESC_SIZE * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.heap = heap
        self.next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        self.queue = Virtqueue(memory, size, self.desc, self.avail, self.used,
                               features=features, name="q", device="dev")

    def alloc(self, n):
        addr = self.heap
        self.heap += (max(n, 1) + 15) & ~15
        return addr

    def _write_desc(self, table, i, addr, length, flags, nxt):
        self.memory.write(table + DESC_SIZE * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, readable=(), writable=(), indirect=False):
        """readable: byte strings the device reads; writable: lengths it may fill.
        Returns (head, [guest addresses of the writable buffers])."""
        bufs = []
        for data in readable:
            addr = self.alloc(len(data))
            self.memory.write(addr, bytes(data))
            bufs.append((addr, len(data), 0))
        out_addrs = []
        for n in writable:
            addr = self.alloc(n)
            self.memory.write(addr, b"\xAA" * n)
            out_addrs.append(addr)
            bufs.append((addr, n, VRING_DESC_F_WRITE))
        if indirect:
            table = self.alloc(DESC_SIZE * len(bufs))
            for i, (addr, n, flags) in enumerate(bufs):
                more = VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._write_desc(table, i, addr, n, flags | more, i + 1 if more else 0)
            head = self._take(1)
            self._write_desc(self.desc, head, table, DESC_SIZE * len(bufs), VRING_DESC_F_INDIRECT, 0)
        else:
            first = self._take(len(bufs))
            for i, (addr, n, flags) in enumerate(bufs):
                more = VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._write_desc(self.desc, first + i, addr, n, flags | more, first + i + 1 if more else 0)
            head = first
        self.publish(head)
        return head, out_addrs

    def _take(self, n):
        if self.next_desc + n > self.size:
            self.next_desc = 0      # tests recycle the table once the device has used it
        first = self.next_desc
        self.next_desc += n
        return first

    def publish(self, head):
        self.memory.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    def used_entries(self):
        """New (head, written) entries since the last call."""
        idx = self.memory.read_u16(self.used + 2)
        out = []
        while self.used_seen != idx:
            slot = self.used + 4 + 8 * (self.used_seen % self.size)
            out.append(struct.unpack("<II", self.memory.read(slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out


def new_ring(size=16, mem=1 << 20, **kw):
    return GuestRing(GuestMemory(mem), size, **kw)


def test_ring_round_trip_direct_and_indirect():
    ring = new_ring()
    for indirect in (False, True):
        head, outs = ring.add([b"abc", b"de"], [4], indirect=indirect)
        chain = ring.queue.pop()
        assert chain.head == head
        assert [bytes(v) for v in chain.readable] == [b"abc", b"de"]
        chain.writable[0][:] = b"wxyz"
        ring.queue.push(chain.head, 4)
        assert ring.used_entries() == [(head, 4)]
        assert ring.memory.read(outs[0], 4) == b"wxyz"
    assert ring.queue.pop() is None
