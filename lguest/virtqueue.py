"""The split virtqueue, seen from the device's side.

#L:200 Device Handling: the virtqueue. A virtio device talks to its driver through
# rings in guest memory. Each queue has three parts, all placed by the driver:
#   the descriptor table: size x {u64 addr, u32 len, u16 flags, u16 next};
#   the available ring: {u16 flags, u16 idx, u16 ring[size], u16 used_event};
#   the used ring: {u16 flags, u16 idx, {u32 id, u32 len} ring[size], u16 avail_event}.
# The driver chains descriptors into a buffer, puts the head's number in the available
# ring and bumps avail.idx; we walk the chain (pop), use it, write the head and how
# much we wrote into the used ring and bump used.idx (push), then maybe interrupt.
#
# Every number in those rings comes from the guest, so every one is checked before
# we act on it, at the line that uses it, with the seed's wording as the rule name.
# Buffers come back as memoryviews straight into guest memory (L:100): zero-copy, and
# bounds-checked when they are made, so a device can never reach outside the guest.
"""

from __future__ import annotations

import _thread
import struct
from typing import Iterable

from .errors import GuestError
from .memory import Memory, store
from .transport_rules import ring_alignment_problem
from .vring_tables import MAX_CHAIN_BYTES, linux_table, unpack_table
from .virtio import (DESC_SIZE, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, MAX_QUEUE_SIZE,
                     USED_ELEM_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT,
                     VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY, bit)

# The rules, by name, so tests and callers can compare GuestError.rule with them.
# Where the seed printed numbers ("Desc next is %u") the numbers go into `detail`.
RULE_AVAIL_MOVED = "Guest moved used index"          # the seed's words (it is avail idx)
RULE_HEAD_RANGE = "Guest says index is available"    # ... "index %u is available"
RULE_NEXT_RANGE = "Desc next is out of range"        # ... "Desc next is %u"
RULE_LOOP = "Looped descriptor"
RULE_OUT_AFTER_IN = "Descriptor has out after in"
RULE_INDIRECT_FEATURE = "vq indirect not negotiated"
RULE_INDIRECT_NESTED = "Indirect within indirect"
RULE_INDIRECT_NEXT = "indirect and next together"
RULE_INDIRECT_SIZE = "Invalid size for indirect table"
RULE_INDIRECT_TOO_MANY = "indirect has too many entries"
RULE_ADDRESS = "Invalid address"                      # GuestMemoryError, from memory.py
RULE_ALIGNMENT = "invalid alignment in queue addresses"
RULE_USED_FLAGS = "invalid initial used.flags"
RULE_AVAIL_FLAGS = "invalid avail->flags"             # ... "avail->flags = %u"
RULE_QUEUE_SIZE = "invalid queue size"                # not the seed's: the transport's
RULE_RINGS_OVERLAP = "virtqueue parts overlap"        # not the seed's (issue 15)
RULE_CHAIN_LENGTH = "descriptor chain longer than 2^32 bytes"   # not the seed's (2.7.5)

SEED_RULES = frozenset({
    RULE_AVAIL_MOVED, RULE_HEAD_RANGE, RULE_NEXT_RANGE, RULE_LOOP, RULE_OUT_AFTER_IN,
    RULE_INDIRECT_FEATURE, RULE_INDIRECT_NESTED, RULE_INDIRECT_NEXT, RULE_INDIRECT_SIZE,
    RULE_INDIRECT_TOO_MANY, RULE_ADDRESS, RULE_ALIGNMENT, RULE_USED_FLAGS,
    RULE_AVAIL_FLAGS, RULE_QUEUE_SIZE, RULE_RINGS_OVERLAP, RULE_CHAIN_LENGTH,
})

INDIRECT_MAX = 1024         # entries of an indirect table we take from any ring (L:235)

_U16 = struct.Struct("<H")
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


#L:265 The event index rule, as Linux's vring_need_event(). The other side said
# "tell me when you pass event_idx"; we moved our index from old_idx to new_idx. We
# must tell it if event_idx lies in [old_idx, new_idx), counted the way the ring
# counts: modulo 2^16, so the test is a pair of 16-bit subtractions and stays right
# after idx wraps from 65535 to 0. Both sides use it: the device for interrupts
# (used_event), the driver for kicks (avail_event).
def vring_need_event(event_idx, new_idx, old_idx):
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class Chain:
    """One popped descriptor chain: the head's number and its buffers in order."""

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: list[memoryview],
                 writable: list[memoryview]):
        self.head = head
        self.readable = readable    # list[memoryview]: driver -> device
        self.writable = writable    # list[memoryview]: device -> driver

    @property
    def readable_len(self) -> int:
        """How many bytes the driver gave us to read."""
        return sum(len(b) for b in self.readable)

    @property
    def writable_len(self) -> int:
        """How many bytes we may write back."""
        return sum(len(b) for b in self.writable)

    def gather(self) -> bytes:
        """All readable bytes, copied out (a convenience for small requests)."""
        return b"".join(self.readable)

    def scatter(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy data into the writable buffers from byte `offset` on; return the
        number of bytes that fitted (never more than the buffers hold)."""
        done = 0
        for buf in self.writable:
            if offset >= len(buf):
                offset -= len(buf)
                continue
            n = min(len(buf) - offset, len(data) - done)
            buf[offset:offset + n] = data[done:done + n]
            done += n
            offset = 0
            if done == len(data):
                break
        return done

    def __repr__(self):
        return (f"Chain(head={self.head}, readable={[len(b) for b in self.readable]}, "
                f"writable={[len(b) for b in self.writable]})")


class Virtqueue:
    """The device's half of one split ring. One thread at a time pops and pushes;
    queues share no mutable state, so each may have its own thread."""

    def __init__(self, memory: Memory, size: int, desc: int, avail: int, used: int, *,
                 features: int = 0, name: str = "vq", device: str = "device",
                 last_avail_idx: int = 0):
        if not 0 < size <= MAX_QUEUE_SIZE:
            raise GuestError(RULE_QUEUE_SIZE, device=device, queue=name, detail=f"size {size}")
        self.memory = memory
        self.size = size
        self.desc, self.avail, self.used = desc, avail, used
        self.features = features
        self.name, self.device = name, device
        self.last_avail_idx = last_avail_idx & 0xFFFF
        self._popped_to = self.last_avail_idx   # one past the furthest chain popped (L:270)
        self.event_idx = bool(features & bit(F_RING_EVENT_IDX))
        self.indirect = bool(features & bit(F_RING_INDIRECT_DESC))
        self.used_idx = 0
        self._pending_used = 0
        self._signalled_used = 0
        self._bound = False
        self._budget = None         # chains pop() may still hand out this round (L:221)
        self.coalesce = False       # buffers that touch become one view (L:236)
        self._fence = _thread.allocate_lock()
        try:
            self._bind()
        except GuestError:
            pass    # reported by check_enable() or the first pop(), where it belongs

    def _error(self, rule, detail=None):
        return GuestError(rule, device=self.device, queue=self.name, detail=detail)

    #L:210 Where the rings are. When the driver enables a queue (4.1.4.3.2: "The
    # driver MUST configure the other virtqueue fields before enabling the virtqueue
    # with queue_enable") we check what the seed's check_virtqueue() checks: each
    # part aligned, each part wholly inside guest memory. The seed also refused high
    # address bits, because lguest was 32-bit; we are not, and the bounds check
    # covers it. With EVENT_IDX each ring has one more u16 at its end.
    def _bind(self):
        extra = 2 if self.event_idx else 0
        locate = self.memory._locate
        try:
            self._desc_buf, self._desc_off = locate(self.desc, DESC_SIZE * self.size)
            self._avail_buf, self._avail_off = locate(self.avail, 4 + 2 * self.size + extra)
            self._used_buf, self._used_off = locate(self.used, 4 + USED_ELEM_SIZE * self.size + extra)
        except GuestError as e:
            raise e.where(self.device, self.name)
        # The used index is ours from now on; start from what the ring says (0 after a
        # reset, or where a previous owner left it, as vhost does).
        self.used_idx = _U16.unpack_from(self._used_buf, self._used_off + 2)[0]
        self._signalled_used = self.used_idx
        self._bound = True

    def check_enable(self) -> None:
        """Check the rings as the driver enables the queue; raise GuestError if bad."""
        self._check_alignment()
        self._bind()
        self._check_overlap()
        # 2.4.9.1 (2.6.8.1 later): "The driver MUST initialize flags in the used ring
        # to 0 when allocating the used ring."
        flags = _U16.unpack_from(self._used_buf, self._used_off)[0]
        if flags != 0:
            raise self._error(RULE_USED_FLAGS, f"{flags:#x}")

    def check_layout(self) -> None:
        """Alignment, and no part over another: every transport, at enable time."""
        self._check_alignment()
        self._check_overlap()

    def _check_alignment(self):
        # 2.4.1: "The driver MUST ensure that the physical address of the first byte of
        # each virtqueue part is a multiple of the specified alignment value"
        # (L:205: the one set of transport rules).
        problem = ring_alignment_problem(self.desc, self.avail, self.used)
        if problem:
            raise self._error(RULE_ALIGNMENT, problem)

    def _check_overlap(self):
        # The used ring is the one part we write. Over the available ring, each push
        # would move the avail.idx the next pop reads, and a serve loop would never
        # see the ring empty; over the descriptor table, we would rewrite chains under
        # the driver. Neither is a layout a driver can mean, so refuse it here.
        extra = 2 if self.event_idx else 0
        used = (self.used, self.used + 4 + USED_ELEM_SIZE * self.size + extra)
        for name, start, length in (("avail", self.avail, 4 + 2 * self.size + extra),
                                    ("desc", self.desc, DESC_SIZE * self.size)):
            if start < used[1] and used[0] < start + length:
                raise self._error(RULE_RINGS_OVERLAP,
                                  f"used {self.used:#x}+{used[1] - used[0]:#x} over {name} {start:#x}+{length:#x}")

    #L:220 Is there anything for us? The driver's avail.idx runs ahead of our
    # last_avail_idx by the number of chains we have not taken yet. The seed's
    # wait_for_vq_desc() sleeps here; we only look, and the caller (a DeviceRunner)
    # does the waiting. A driver can only offer as many chains as the ring holds, so
    # an index that moved further than that is a broken driver.
    def has_available(self) -> bool:
        """True if the driver has offered a chain we have not popped yet."""
        if not self._bound:
            self._bind()
        return _U16.unpack_from(self._avail_buf, self._avail_off + 2)[0] != self.last_avail_idx

    #L:221 A round's budget. A device's process() pops until pop() says None, and
    # what a device writes (a used element, a block read, random bytes) may land in
    # the guest's own avail ring and move avail.idx on: a guest could keep one
    # process() call -- one notify through PciBus.access -- busy for ever. So pop()
    # hands out at most `size` chains per round -- all a driver can have offered at
    # once -- when the caller asks for rounds: the runners do (new_round(), L:315),
    # and go round again later if round_spent. A caller that never asks (a test
    # popping by hand) has no limit, as before.
    def new_round(self) -> None:
        """Start a round: pop() hands out at most `size` chains until the next one."""
        self._budget = self.size

    def spend_round(self) -> None:
        """End this round: round_spent is then true exactly when chains are waiting."""
        self._budget = 0

    @property
    def round_spent(self) -> bool:
        """True if pop() stopped because of the budget, not because the ring was empty."""
        return self._budget == 0 and self.has_available()

    def pop(self) -> Chain | None:
        """Take the next available chain, or None. Raises GuestError for a bad one."""
        if not self._bound:
            self._bind()
        abuf, aoff = self._avail_buf, self._avail_off
        last = self.last_avail_idx
        avail_idx = _U16.unpack_from(abuf, aoff + 2)[0]
        if avail_idx == last:
            return None
        if (avail_idx - last) & 0xFFFF > self.size:
            raise self._error(RULE_AVAIL_MOVED, f"from {last} to {avail_idx}")
        if self._budget is not None:
            if self._budget <= 0:
                return None         # the rest waits for the next round (L:221)
            self._budget -= 1
        # The seed's rmb() sits here: read the ring entry only after the index. In
        # CPython each read is a separate call, made in program order, and x86 does
        # not reorder loads with loads, so the order we write is the order we get.
        head = _U16.unpack_from(abuf, aoff + 4 + 2 * (last % self.size))[0]
        self.last_avail_idx = (last + 1) & 0xFFFF
        if (self.last_avail_idx - self._popped_to) & 0xFFFF < 0x8000:
            self._popped_to = self.last_avail_idx   # not a given-back chain popped again
        if head >= self.size:
            raise self._error(RULE_HEAD_RANGE, f"index {head}, ring size {self.size}")
        readable, writable = [], []
        try:
            return self._walk(head, readable, writable)
        except GuestError as e:
            # Let go of the views taken so far: a half-walked chain is never used,
            # and live views would pin guest memory (it cannot be unmapped under them).
            for view in readable + writable:
                view.release()
            raise e.where(self.device, self.name)

    #L:230 Walking a chain. Descriptors are read one at a time (an indirect table in
    # one read, L:235), each exactly once, so a driver rewriting the table under us can confuse only itself: we act on
    # the values we read, and each buffer is bounds-checked as it becomes a
    # memoryview. The walk is bounded: a chain may not be longer than its table
    # (2.4.5.3.1: "A driver MUST NOT create a descriptor chain longer than the Queue
    # Size of the device"), so a loop is caught after `max` steps. As in the seed, the
    # count runs on into an indirect table and is then held against the table's size,
    # so direct descriptors ahead of an indirect one are refused as a loop too.
    # 2.7.5 (split ring descriptors): "Drivers MUST NOT add a descriptor chain longer
    # than 2^32 bytes in total"; a used element's len is a u32, so a longer chain
    # could not even be answered. Every device gets that check here, once.
    def _walk(self, head, readable, writable):
        locate = self.memory._locate
        table, base, count = self._desc_buf, self._desc_off, self.size
        descs = None                # an indirect table, read whole (L:235)
        i, seen, total = head, 0, 0
        while True:
            if descs is None:
                addr, length, flags, nxt = _DESC.unpack_from(table, base + DESC_SIZE * i)
            else:
                addr, length, flags, nxt = descs[i]
            if flags & VRING_DESC_F_INDIRECT:
                table = self._enter_indirect(descs is not None, addr, length, flags)
                if not seen:                    # the head: the table is the whole chain
                    views = linux_table(self.memory, table, self.coalesce)
                    if views is not None:
                        return Chain(head, *views)
                descs = list(zip(table[0::4], table[1::4], table[2::4], table[3::4]))
                count = len(descs)
                i = 0
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise self._error(RULE_CHAIN_LENGTH, f"{total} bytes from head {head}")
            if flags & VRING_DESC_F_WRITE:
                into = writable
            elif writable:
                # "they're all supposed to come before any input descriptors"
                raise self._error(RULE_OUT_AFTER_IN, f"descriptor {i}")
            else:
                into = readable
            try:
                buf, off = locate(addr, length)
                into.append(buf[off:off + length])
            except GuestError:
                #L:231 A buffer may run from one memory region into the next, adjacent
                # one (QEMU splits RAM at 3.5 GiB, rust-vmm at its slots): then it is
                # one view per region. Memory that is not contiguous still fails.
                into.extend(self.memory.views(addr, length))
            seen += 1
            if seen > count:
                raise self._error(RULE_LOOP, f"more than {count} descriptors from head {head}")
            #L:240 next_desc(): a descriptor without NEXT ends the chain; one with NEXT
            # must point inside the table it lives in.
            if not flags & VRING_DESC_F_NEXT:
                return Chain(head, readable, writable)
            if nxt >= count:
                raise self._error(RULE_NEXT_RANGE, f"next {nxt}, table of {count}")
            i = nxt

    #L:235 An indirect descriptor points at a table of descriptors of its own, which
    # we walk as if it were the chain. The rules, from the seed:
    # 2.4.5.3.1: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the
    # VIRTIO_F_INDIRECT_DESC feature was negotiated", nor "within an indirect
    # descriptor (ie. only one table per descriptor)"; and (VIRTIO-134) "A driver MUST
    # NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags". The table is
    # whole descriptors, no more of them than the queue size. An empty table we refuse
    # too: the seed would have read its first entry anyway, past its end. We ignore
    # the WRITE flag on the indirect descriptor itself, as 2.4.5.3.2 says we must.
    # How many entries: the seed allowed the queue size, which is also what 2.7.5.3.1
    # asks of a driver ("MUST NOT create a descriptor chain longer than the Queue Size
    # of the device"). Linux does not keep to it: virtio_blk builds tables of seg_max
    # + 2 entries whatever the ring's size, so QEMU's 128-entry ring under a seg_max of
    # 254 brings tables of up to 256. Refusing them stops the queue and hangs the
    # guest; QEMU's own devices take tables of up to 1024 entries (VIRTQUEUE_MAX_SIZE),
    # and so do we. The walk stays bounded by the table's size.
    def _enter_indirect(self, already_indirect, addr, length, flags):
        if not self.indirect:
            raise self._error(RULE_INDIRECT_FEATURE)
        if already_indirect:
            raise self._error(RULE_INDIRECT_NESTED)
        if flags & VRING_DESC_F_NEXT:
            raise self._error(RULE_INDIRECT_NEXT)
        if length % DESC_SIZE or length == 0:
            raise self._error(RULE_INDIRECT_SIZE, f"length {length}")
        count = length // DESC_SIZE
        if count > max(self.size, INDIRECT_MAX):
            raise self._error(RULE_INDIRECT_TOO_MANY,
                              f"{count} entries, queue size {self.size}, limit {max(self.size, INDIRECT_MAX)}")
        table, base = self.memory._locate(addr, length)
        # The whole table in one read: each entry is still read once (a driver that
        # rewrites it under us confuses only itself), at C speed rather than one
        # unpack call per descriptor (a 128 KiB virtio-fs READ has 35). Flat: addr,
        # len, flags, next of entry 0, then of entry 1, ...
        return unpack_table(table, base, count)

    #L:250 add_used(): we are done with a chain. Write its head and the number of bytes
    # we wrote into the next used slot, then publish the new used.idx. The element must
    # be visible before the index (the seed's wmb()): two separate stores, made in
    # program order, and x86 keeps stores in order. used_idx is our own shadow: we
    # never re-read used.idx from the guest, who could scribble on it. The index itself
    # must be one store (L:105): struct's pack_into passes through 0, and a driver that
    # reads that 0 -- or finds it there after we were killed -- takes entries we never
    # wrote. The element may be packed: the driver reads no slot before the index.
    def push(self, head: int, written: int) -> None:
        """Give a chain back: its head and the bytes we wrote, then publish used.idx."""
        if not self._bound:
            self._bind()
        ubuf, uoff = self._used_buf, self._used_off
        idx = self.used_idx
        # A chain of exactly 2^32 bytes (the most _walk allows) still needs a u32 len.
        written = min(written, MAX_CHAIN_BYTES - 1)
        _USED_ELEM.pack_into(ubuf, uoff + 4 + USED_ELEM_SIZE * (idx % self.size), head, written)
        idx = (idx + 1) & 0xFFFF
        store(ubuf, uoff + 2, _U16, idx)
        self.used_idx = idx
        self._pending_used += 1

    def push_many(self, entries: Iterable[tuple[int, int]]) -> None:
        """add_used() for a batch of (head, written): one used.idx update for all."""
        if not self._bound:
            self._bind()
        ubuf, uoff, size = self._used_buf, self._used_off, self.size
        idx = self.used_idx
        pack = _USED_ELEM.pack_into
        n = 0
        for head, written in entries:
            pack(ubuf, uoff + 4 + USED_ELEM_SIZE * ((idx + n) % size), head,
                 min(written, MAX_CHAIN_BYTES - 1))
            n += 1
        if n:
            idx = (idx + n) & 0xFFFF
            store(ubuf, uoff + 2, _U16, idx)
            self.used_idx = idx
            self._pending_used += n

    def _full_barrier(self):
        # The seed's mb(): our stores must be visible before the loads that follow.
        # Taking a lock is a locked read-modify-write, a full barrier on x86 (and a
        # barrier pair elsewhere); CPython offers no cheaper fence.
        with self._fence:
            pass

    #L:260 trigger_irq(): should the guest hear about what we used? Nothing used since
    # last time, no interrupt. Otherwise, 2.4.7.2: "If the VIRTIO_F_EVENT_IDX feature
    # bit is not negotiated: The device MUST ignore the used_event value. After the
    # device writes a descriptor index into the used ring: If flags is 1, the device
    # SHOULD NOT send an interrupt. If flags is 0, the device MUST send an interrupt."
    # and 2.4.7.1: "The driver MUST set flags to 0 or 1." With EVENT_IDX the device
    # "MUST ignore the lower bit of flags" and interrupts when used.idx passes the
    # driver's used_event (L:265). We read after a full barrier, as vhost does: the
    # driver may set its flag just as we publish, and one of us must see the other.
    def should_interrupt(self) -> bool:
        """Should the driver hear about what we used since last time?"""
        if not self._pending_used:
            return False
        self._pending_used = 0
        if not self._bound:
            self._bind()
        self._full_barrier()
        abuf, aoff = self._avail_buf, self._avail_off
        if self.event_idx:
            old, new = self._signalled_used, self.used_idx
            self._signalled_used = new
            used_event = _U16.unpack_from(abuf, aoff + 4 + 2 * self.size)[0]
            return vring_need_event(used_event, new, old)
        flags = _U16.unpack_from(abuf, aoff)[0]
        if flags > 1:
            raise self._error(RULE_AVAIL_FLAGS, f"avail->flags = {flags}")
        return not flags & VRING_AVAIL_F_NO_INTERRUPT

    #L:270 The other direction: does the device want kicks? While a device is busy
    # draining a queue, kicks are wasted exits, so the seed sets VRING_USED_F_NO_NOTIFY
    # while it works and clears it before it sleeps. With EVENT_IDX the device instead
    # writes avail_event, the avail index whose passing should kick us (2.4.8: the
    # driver "MUST ignore" used.flags then); disabling is then simply not moving it, as
    # vhost does. After enabling, the caller must look again (has_available()): the
    # driver may have added a chain just before it saw our change, and will not kick
    # for it. The barrier orders our store before that second look. The driver reads
    # both words as we write them, so each is one store (L:105): an avail_event
    # passing through 0 would tell it not to kick. avail_event is one past the furthest
    # chain we have popped, not last_avail_idx: a device that gave chains back
    # (give_back, L:388) has seen them, and waits for the driver to add more; an
    # avail_event behind what the driver already published would never be passed
    # again, and the driver would never kick (vhost writes its avail_idx so too).
    def set_notifications(self, enabled: bool) -> None:
        """Ask the driver for kicks (True) or tell it to spare them (False)."""
        if not self._bound:
            self._bind()
        ubuf, uoff = self._used_buf, self._used_off
        if self.event_idx:
            if enabled:
                store(ubuf, uoff + 4 + USED_ELEM_SIZE * self.size, _U16, self._popped_to)
        else:
            flags = _U16.unpack_from(ubuf, uoff)[0]
            flags = flags & ~VRING_USED_F_NO_NOTIFY if enabled else flags | VRING_USED_F_NO_NOTIFY
            store(ubuf, uoff, _U16, flags)
        if enabled:
            self._full_barrier()

    def __repr__(self):
        return (f"Virtqueue({self.device}/{self.name}, size={self.size}, "
                f"last_avail={self.last_avail_idx}, used={self.used_idx})")
