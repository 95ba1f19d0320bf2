"""Indirect descriptor tables: read whole, and, when Linux built them, cut into views
without a Python step per descriptor (virtqueue.py's walk does every other table)."""

import bisect
import operator
import struct

from .virtio import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE

MAX_CHAIN_BYTES = 1 << 32   # 2.7.5: a chain's total length, and what a used len can say

_NEXT_WRITE = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE
_CHAINED = frozenset({VRING_DESC_F_NEXT, _NEXT_WRITE})
_LINKED = {}                # n -> (1, ..., n - 1): the nexts of an n-entry Linux table
_TABLES = {}                # n -> the Struct of an n-entry descriptor table


def _linked(n):
    nexts = _LINKED.get(n)
    if nexts is None:
        nexts = _LINKED[n] = tuple(range(1, n))
    return nexts


def unpack_table(buf, offset, n):
    """The n entries at buf[offset:], flat: addr, len, flags, next of entry 0, then 1..."""
    fmt = _TABLES.get(n)
    if fmt is None:
        fmt = _TABLES[n] = struct.Struct("<" + "QIHH" * n)
    return fmt.unpack_from(buf, offset)


#L:236 The common case of pop(), quickly: a table as Linux builds it
# (alloc_indirect_split(): entry i's next is i + 1, NEXT on all but the last;
# virtqueue_add_split(): readable entries first), with no INDIRECT inside and every
# buffer in one piece of memory. That shape and the bounds are checked with a few
# passes over the whole table at C speed instead of a Python step per descriptor --
# the table was read once already, so this is the same single read. Anything else
# returns None and takes virtqueue.py's walk, which then names the rule broken. A queue
# that asks (coalesce) gets buffers that touch in guest memory as one view: 2.6.4.1,
# "The device MUST NOT make assumptions about the particular arrangement of
# descriptors", so a device that keeps to it sees the same bytes either way. A
# virtio-fs READ of 128 KiB is 35 descriptors (header, arguments, out header, 32
# pages) and, from UML, mostly 4 runs: its walk took 15 us instead of 25 (the same
# process, in turns, on this machine), and preadv gets 2 or 3 iovecs instead of 33.
def linux_table(memory, table, coalesce):
    """(readable views, writable views) of a table as Linux builds it, flat as
    unpack_table() gives it; None for any other table (the caller walks it)."""
    addrs, lengths, flags, nexts = table[0::4], table[1::4], table[2::4], table[3::4]
    n, last = len(flags), flags[-1]
    if last & ~VRING_DESC_F_WRITE or not _CHAINED.issuperset(flags[:-1]):
        return None
    if nexts[:-1] != _linked(n):
        return None
    # Readable first: every WRITE entry sits at or after the first one.
    writes = flags.count(_NEXT_WRITE) + (last == VRING_DESC_F_WRITE)
    first_write = n - writes
    if writes and last != VRING_DESC_F_WRITE or _NEXT_WRITE in flags[:first_write]:
        return None
    span = memory.span(addrs[0])
    if span is None:
        return None
    buf, lo, hi = span
    ends = list(map(operator.add, addrs, lengths))
    if min(addrs) < lo or max(ends) > hi or sum(lengths) > MAX_CHAIN_BYTES:
        return None
    if not coalesce:
        views = [buf[a - lo:e - lo] for a, e in zip(addrs, ends)]
        return views[:first_write], views[first_write:]
    # Runs of buffers that touch, never across the readable/writable boundary.
    gaps = list(map(operator.ne, addrs[1:], ends[:-1]))     # gaps[j]: before j + 1
    if 0 < first_write < n:
        gaps[first_write - 1] = True
    starts, j = [0], 0
    try:
        while True:
            j = gaps.index(True, j) + 1
            starts.append(j)
    except ValueError:              # no gap after j: the last run reaches the end
        pass
    stops = starts[1:] + [n]
    views = [buf[addrs[a] - lo:ends[b - 1] - lo] for a, b in zip(starts, stops)]
    readable = bisect.bisect_left(starts, first_write)     # runs before the first write
    return views[:readable], views[readable:]
