"""The split virtqueue, seen from the driver's side: what Linux's virtio_ring.c does.

#L:280 The guest's half of the ring. To test a device we need something that plays
# the guest's driver honestly, so this follows Linux's drivers/virtio/virtio_ring.c
# (the split ring): it lays the rings out in guest memory, keeps a free list of
# descriptors (in its own memory, not the guest-visible table, as Linux's desc_extra
# does, so a device scribbling on the table cannot confuse it), adds chains direct or
# through an indirect table, publishes avail.idx after the ring entry, asks whether
# the device wants a kick, suppresses interrupts with the flag or used_event, and
# takes used buffers back. The device's half is L:200.
"""

from __future__ import annotations

import _thread
from typing import TYPE_CHECKING, Iterable

from ..errors import LguestError
from ..virtio import (DESC_SIZE, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, USED_ELEM_SIZE,
                      VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
                      VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY, bit)
from ..virtqueue import vring_need_event

if TYPE_CHECKING:
    from ..memory import Memory


class DriverError(LguestError):
    """The test driver could not do what it was asked (out of guest memory or
    descriptors), or the device broke the ring as seen from the driver's side."""


class GuestAllocator:
    """A first-fit allocator over [start, end) of guest-physical memory.

    Rings are allocated once and kept; buffers come and go, so free() coalesces
    neighbours. Addresses are aligned as asked (a power of two)."""

    def __init__(self, start: int, end: int):
        if not 0 <= start < end:
            raise DriverError(f"empty allocator region {start:#x}-{end:#x}")
        self.start, self.end = start, end
        self._free = [(start, end)]        # sorted, disjoint [lo, hi) holes
        self._sizes = {}                    # addr -> (lo, hi) it came from

    def alloc(self, size: int, align: int = 16) -> int:
        """Reserve `size` bytes aligned to `align`; return their guest address."""
        if size < 0 or align <= 0 or align & (align - 1):
            raise DriverError(f"bad allocation size {size} / alignment {align}")
        size = max(size, 1)
        for n, (lo, hi) in enumerate(self._free):
            addr = (lo + align - 1) & ~(align - 1)
            if addr + size <= hi:
                pieces = [(a, b) for a, b in ((lo, addr), (addr + size, hi)) if b > a]
                self._free[n:n + 1] = pieces
                self._sizes[addr] = (addr, addr + size)
                return addr
        raise DriverError(f"guest allocator out of memory for {size} bytes")

    def free(self, addr: int) -> None:
        """Give back what alloc() returned at `addr`."""
        lo, hi = self._sizes.pop(addr)
        holes = self._free
        n = 0
        while n < len(holes) and holes[n][0] < lo:
            n += 1
        holes.insert(n, (lo, hi))
        # Coalesce with the hole after, then the hole before.
        if n + 1 < len(holes) and holes[n][1] == holes[n + 1][0]:
            holes[n:n + 2] = [(holes[n][0], holes[n + 1][1])]
        if n > 0 and holes[n - 1][1] == holes[n][0]:
            holes[n - 1:n + 1] = [(holes[n - 1][0], holes[n][1])]

    @property
    def free_bytes(self) -> int:
        """How many bytes are not allocated."""
        return sum(hi - lo for lo, hi in self._free)


class Used:
    """One buffer the device gave back: its head, the length it wrote, the token the
    adder attached, and the bytes written (at most the writable space)."""

    __slots__ = ("head", "len", "token", "data")

    def __init__(self, head: int, length: int, token: object, data: bytes):
        self.head, self.len, self.token, self.data = head, length, token, data

    def __repr__(self):
        return f"Used(head={self.head}, len={self.len}, token={self.token!r})"


class _Outstanding:
    """What the driver remembers about a chain the device holds (Linux's desc_state)."""

    __slots__ = ("token", "count", "indirect_table", "owned", "writable")

    def __init__(self, token, count, indirect_table, owned, writable):
        self.token = token
        self.count = count                    # descriptors of the main table it uses
        self.indirect_table = indirect_table  # guest address of its table, or None
        self.owned = owned                    # buffer addresses we allocated for it
        self.writable = writable              # [(addr, len)] to read the answer from


#L:285 Layout. A modern driver may place the three parts anywhere with their own
# alignments (2.4.1: descriptor table 16, available ring 2, used ring 4). Linux's
# vring_create_virtqueue() still lays them out as one block in the legacy way:
# descriptors, then the available ring, then the used ring rounded up to an
# alignment (SMP_CACHE_BYTES for virtio_pci_modern), and so do we. With EVENT_IDX
# the available ring ends with used_event and the used ring with avail_event.
def vring_layout(size, align=64):
    """(desc offset, avail offset, used offset, total bytes) of one ring block."""
    avail = DESC_SIZE * size
    used = (avail + 2 * (3 + size) + align - 1) & ~(align - 1)
    total = used + 2 * 3 + USED_ELEM_SIZE * size
    return 0, avail, used, total


class DriverQueue:
    """One split ring as Linux's driver keeps it."""

    def __init__(self, memory: Memory, allocator: GuestAllocator, size: int, *,
                 features: int = 0, start_idx: int = 0, align: int = 64):
        if size <= 0 or size & (size - 1) or size > 32768:
            raise DriverError(f"queue size {size} is not a power of two up to 32768")
        self.memory, self.allocator, self.size = memory, allocator, size
        self.features = features
        self.event_idx = bool(features & bit(F_RING_EVENT_IDX))
        self.indirect = bool(features & bit(F_RING_INDIRECT_DESC))
        d, a, u, total = vring_layout(size, align)
        base = allocator.alloc(total, max(align, 4096))
        memory.write(base, bytes(total))
        self.desc_addr, self.avail_addr, self.used_addr = base + d, base + a, base + u
        self.avail_idx_shadow = start_idx & 0xFFFF   # Linux's avail_idx_shadow
        self.last_used_idx = start_idx & 0xFFFF
        self.avail_flags_shadow = 0
        self.num_added = 0
        # A ring that starts at start_idx is one a device already used that far: both
        # indices say so (a fresh ring has start_idx 0; tests use 65530 for the wrap).
        memory.write_u16(self.avail_addr + 2, self.avail_idx_shadow)
        memory.write_u16(self.used_addr + 2, self.last_used_idx)
        # The free list, chained through our private copy of `next` (desc_extra).
        self._next = [i + 1 for i in range(size)]
        self.free_head = 0
        self.num_free = size
        self._state = [None] * size
        self._fence = _thread.allocate_lock()

    def _full_barrier(self):
        # virtio_mb(): a lock's acquire is a locked read-modify-write, a full barrier
        # on x86. It matters when the device is another thread or process (the
        # vhost-user front-end): our stores must land before we read the device's word.
        with self._fence:
            pass

    # Addresses of the fields, for readers of this code and for tests.
    @property
    def used_event_addr(self) -> int:
        """Guest address of used_event (the avail ring's last u16)."""
        return self.avail_addr + 4 + 2 * self.size

    @property
    def avail_event_addr(self) -> int:
        """Guest address of avail_event (the used ring's last u16)."""
        return self.used_addr + 4 + USED_ELEM_SIZE * self.size

    def _write_desc(self, table, i, addr, length, flags, nxt):
        at = table + DESC_SIZE * i
        self.memory.write_u64(at, addr)
        self.memory.write_u32(at + 8, length)
        self.memory.write_u16(at + 12, flags)
        self.memory.write_u16(at + 14, nxt)

    #L:287 Adding a buffer: virtqueue_add_split(). "If the host supports indirect
    # descriptor tables, and we have multiple buffers, then go indirect": one main
    # descriptor then points at a table of its own, so a long chain costs one slot of
    # the ring. Otherwise each buffer takes a descriptor off the free list, chained by
    # NEXT, readable ones first (2.4.4.2: "The driver MUST place any device-writable
    # descriptor elements after any device-readable descriptor elements").
    def add_chain(self, readable: Iterable[tuple[int, int]] = (),
                  writable: Iterable[tuple[int, int]] = (), *, token: object = None,
                  indirect: bool | None = None, _owned: Iterable[int] = ()) -> int:
        """Add a chain of (guest address, length) buffers; return its head."""
        bufs = [(a, n, 0) for a, n in readable] + [(a, n, VRING_DESC_F_WRITE) for a, n in writable]
        if not bufs:
            raise DriverError("a chain needs at least one buffer")
        # 2.4.5.3.1: "A driver MUST NOT create a descriptor chain longer than the Queue
        # Size of the device", indirect or not.
        if len(bufs) > self.size:
            raise DriverError(f"a chain of {len(bufs)} buffers is longer than the ring ({self.size})")
        if indirect is None:
            indirect = self.indirect and len(bufs) > 1 and self.num_free > 0
        table = None
        if indirect:
            table = self.allocator.alloc(DESC_SIZE * len(bufs), 16)
            for i, (addr, length, flags) in enumerate(bufs):
                more = VRING_DESC_F_NEXT if i + 1 < len(bufs) else 0
                self._write_desc(table, i, addr, length, flags | more, i + 1 if more else 0)
            bufs = [(table, DESC_SIZE * len(bufs), VRING_DESC_F_INDIRECT)]
        if len(bufs) > self.num_free:
            if table is not None:
                self.allocator.free(table)
            raise DriverError(f"{len(bufs)} descriptors wanted, {self.num_free} free")
        head = i = self.free_head
        for n, (addr, length, flags) in enumerate(bufs):
            last = n + 1 == len(bufs)
            nxt = self._next[i]
            self._write_desc(self.desc_addr, i, addr, length,
                             flags | (0 if last else VRING_DESC_F_NEXT), 0 if last else nxt)
            if not last:
                i = nxt
        self.free_head = self._next[i]
        self.num_free -= len(bufs)
        self._state[head] = _Outstanding(token, len(bufs), table, list(_owned), list(writable))
        self._publish(head)
        return head

    def add_buffer(self, readable: Iterable[bytes | bytearray | memoryview | int] = (),
                   writable: Iterable[int] = (), *, token: object = None,
                   indirect: bool | None = None) -> int:
        """Copy `readable` (bytes, or int lengths of zeroed bytes) into fresh guest
        buffers, allocate `writable` buffers of the given lengths, add the chain."""
        owned, rd, wr = [], [], []
        try:
            for item in readable:
                data = bytes(item)     # an int gives that many zero bytes
                addr = self.allocator.alloc(len(data), 16)
                owned.append(addr)
                self.memory.write(addr, data)
                rd.append((addr, len(data)))
            for length in writable:
                addr = self.allocator.alloc(length, 16)
                owned.append(addr)
                wr.append((addr, length))
            return self.add_chain(rd, wr, token=token, indirect=indirect, _owned=owned)
        except DriverError:
            for addr in owned:
                self.allocator.free(addr)
            raise

    #L:289 Publishing. The ring entry must be visible before the index that covers it
    # (Linux: virtio_wmb() before avail->idx). Our writes are separate stores made in
    # program order, which x86 keeps in order, so writing the entry first is the
    # barrier. Linux publishes at once, in add, and counts num_added for the kick test.
    def _publish(self, head):
        slot = self.avail_idx_shadow & (self.size - 1)
        self.memory.write_u16(self.avail_addr + 4 + 2 * slot, head)
        self.avail_idx_shadow = (self.avail_idx_shadow + 1) & 0xFFFF
        self.memory.write_u16(self.avail_addr + 2, self.avail_idx_shadow)
        self.num_added += 1

    #L:291 virtqueue_kick_prepare(): does the device want to hear about what we
    # added since the last kick? With EVENT_IDX, if we moved avail.idx past its
    # avail_event (L:265); otherwise unless it set VRING_USED_F_NO_NOTIFY. Linux puts
    # a full barrier (virtio_mb) between publishing avail.idx and reading the device's
    # word, or a device going to sleep and a driver deciding not to kick could miss
    # each other; so do we.
    def kick_prepare(self) -> bool:
        """Does the device want a kick for what we added since the last one?"""
        self._full_barrier()
        new = self.avail_idx_shadow
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        if self.event_idx:
            return vring_need_event(self.memory.read_u16(self.avail_event_addr), new, old)
        return not self.memory.read_u16(self.used_addr) & VRING_USED_F_NO_NOTIFY

    #L:293 Interrupt suppression. disable_cb() sets VRING_AVAIL_F_NO_INTERRUPT; with
    # EVENT_IDX Linux writes 0 to used_event instead ("a hack", its comment says:
    # the device then interrupts only when used.idx crosses 0). enable_cb_prepare()
    # clears the flag and sets used_event to the next entry we expect, returning that
    # index; poll() says whether the device used something since. enable_cb() is the
    # two together: True means nothing is pending and it is safe to wait.
    def disable_cb(self) -> None:
        """Ask the device not to interrupt us."""
        if not self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            self.avail_flags_shadow |= VRING_AVAIL_F_NO_INTERRUPT
            if self.event_idx:
                self.memory.write_u16(self.used_event_addr, 0)
            else:
                self.memory.write_u16(self.avail_addr, self.avail_flags_shadow)

    def enable_cb_prepare(self) -> int:
        """Ask for interrupts again; return the used index to poll() against."""
        if self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            self.avail_flags_shadow &= ~VRING_AVAIL_F_NO_INTERRUPT
            if not self.event_idx:
                self.memory.write_u16(self.avail_addr, self.avail_flags_shadow)
        self.memory.write_u16(self.used_event_addr, self.last_used_idx)
        return self.last_used_idx

    def poll(self, last_used_idx: int) -> bool:
        """True if the device used something since `last_used_idx`."""
        self._full_barrier()     # our used_event store before the device's used.idx
        return self.memory.read_u16(self.used_addr + 2) != last_used_idx

    def enable_cb(self) -> bool:
        """Ask for interrupts again; True if nothing is pending (safe to wait)."""
        return not self.poll(self.enable_cb_prepare())

    def enable_cb_delayed(self) -> bool:
        """Ask for an interrupt only after 3/4 of the outstanding buffers are used."""
        if self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            self.avail_flags_shadow &= ~VRING_AVAIL_F_NO_INTERRUPT
            if not self.event_idx:
                self.memory.write_u16(self.avail_addr, self.avail_flags_shadow)
        bufs = ((self.avail_idx_shadow - self.last_used_idx) & 0xFFFF) * 3 // 4
        self.memory.write_u16(self.used_event_addr, (self.last_used_idx + bufs) & 0xFFFF)
        self._full_barrier()
        return (self.memory.read_u16(self.used_addr + 2) - self.last_used_idx) & 0xFFFF <= bufs

    #L:295 virtqueue_get_buf(): take back the next used buffer. The device's id must
    # name a chain we gave it (Linux's BAD_RING "id %u out of range" / "is not a
    # head"). Its length we trust only up to the space we offered. Then the chain's
    # descriptors go back on the free list, and if interrupts are on and EVENT_IDX was
    # negotiated, used_event moves to the next entry, so the device interrupts for it.
    def get_used(self) -> Used | None:
        """Take back the next used buffer, or None; DriverError if the device broke the ring."""
        if self.memory.read_u16(self.used_addr + 2) == self.last_used_idx:
            return None
        slot = self.last_used_idx & (self.size - 1)
        elem = self.used_addr + 4 + USED_ELEM_SIZE * slot
        head, length = self.memory.read_u32(elem), self.memory.read_u32(elem + 4)
        if head >= self.size:
            raise DriverError(f"device used id {head} out of range")
        state = self._state[head]
        if state is None:
            raise DriverError(f"device used id {head}, which is not a head")
        data = self._gather(state.writable, length)
        self._detach(head, state)
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        if self.event_idx and not self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            self.memory.write_u16(self.used_event_addr, self.last_used_idx)
        return Used(head, length, state.token, data)

    def collect(self) -> list[Used]:
        """Every used buffer there is now, in order."""
        out = []
        while (u := self.get_used()) is not None:
            out.append(u)
        return out

    def _gather(self, writable, length):
        parts = []
        for addr, n in writable:
            if length <= 0:
                break
            take = min(n, length)
            parts.append(self.memory.read(addr, take))
            length -= take
        return b"".join(parts)

    def _detach(self, head, state):
        self._state[head] = None
        i = head
        for _ in range(state.count - 1):
            i = self._next[i]
        self._next[i] = self.free_head
        self.free_head = head
        self.num_free += state.count
        if state.indirect_table is not None:
            self.allocator.free(state.indirect_table)
        for addr in state.owned:
            self.allocator.free(addr)

    @property
    def outstanding(self) -> int:
        """How many chains the device holds."""
        return sum(1 for s in self._state if s is not None)
