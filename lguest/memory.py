"""Guest memory: where the guest's "physical" addresses point.

#L:100 The Launcher sets up one big chunk of memory to be the Guest's "physical"
# memory. Guest physical == launcher virtual with an offset (host_address), so every
# address the guest hands us is just an index into that chunk, once we have checked
# it. Every device buffer, ring and kernel byte goes through Memory.view(), which is
# the seed's check_pointer(): an address whose end is past the limit, or that wraps
# around, is the guest's fault and raises GuestMemoryError. As in map_zeroed_pages()
# there is a PROT_NONE guard page on each side, so a bug of ours that slips past the
# check faults at once instead of quietly reading the launcher's own memory.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import sys

from .errors import GuestMemoryError, LauncherError

PAGE_SIZE = mmap.PAGESIZE
PROT_NONE = 0

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


#L:105 A store another CPU may be watching must be one store. struct's pack_into is
# not: CPython's s_pack_internal() first zeroes all the bytes it is about to fill, then
# writes each field, so a ring index going from 5 to 6 reads 0 in between -- to a
# guest or a front-end on another CPU, and for good if we are killed there. A driver
# that sees used.idx 0 walks into used entries nobody wrote ("device used id 1, which
# is not a head"); a device that sees avail.idx 0 thinks the guest moved it by 65000.
# Assigning an item of a memoryview cast to the field's type is a memcpy of a
# constant size in C: one store of the whole field (ring fields are naturally
# aligned, and x86 never tears those). Such views are native-endian: on a big-endian
# host we copy the packed bytes in instead, a plain copy with no zeroing first.
_NATIVE_LITTLE = sys.byteorder == "little"


def store(buf, off, fmt, value):
    """Write the little-endian integer `fmt` (a one-field struct.Struct) at buf[off]
    in one store, never through an intermediate value."""
    end = off + fmt.size
    if _NATIVE_LITTLE:
        buf[off:end].cast(fmt.format[-1])[0] = value
    else:
        buf[off:end] = fmt.pack(value)


def page_align_up(n):
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Memory:
    """Bounds-checked, little-endian access to guest-physical addresses.

    Subclasses say where an address lives with _locate(); everything else (typed
    reads and writes, zero-copy views) is shared, so the single mapping of the
    launcher and the several regions of a vhost-user front-end behave the same.
    """

    size = 0  # one past the highest guest-physical address we accept

    def _locate(self, addr, length):
        """Return (buffer, offset) for [addr, addr+length), or raise GuestMemoryError."""
        raise NotImplementedError

    def span(self, addr: int) -> tuple[memoryview, int, int] | None:
        """(buffer, guest start, guest end) of the one piece of memory holding addr, for
        a caller that checks many ranges against it at once (virtqueue.py, L:236);
        None if there is none, or if every access must go through _locate (a subclass
        that watches them)."""
        return None

    def check(self, addr: int, length: int) -> None:
        """check_pointer(): raise GuestMemoryError unless the whole range is guest memory."""
        self._locate(addr, length)

    def views(self, addr: int, length: int) -> list[memoryview]:
        """[addr, addr+length) as zero-copy views, one per piece of memory it spans.
        One mapping: one view. (vhost-user's regions split a range, L:231.)"""
        return [self.view(addr, length)]

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy memoryview of guest memory (writes go straight to the guest)."""
        buf, off = self._locate(addr, length)
        return buf[off:off + length]

    def read(self, addr: int, length: int) -> bytes:
        """A copy of [addr, addr+length) of guest memory."""
        buf, off = self._locate(addr, length)
        return bytes(buf[off:off + length])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy data into guest memory at addr."""
        buf, off = self._locate(addr, len(data))
        buf[off:off + len(data)] = data

    def _get(self, fmt, addr):
        buf, off = self._locate(addr, fmt.size)
        return fmt.unpack_from(buf, off)[0]

    def _put(self, fmt, addr, value):
        buf, off = self._locate(addr, fmt.size)
        store(buf, off, fmt, value)         # one store: rings are read as we write (L:105)

    def read_u8(self, addr: int) -> int:
        """The byte at addr."""
        return self._get(_U8, addr)

    def read_u16(self, addr: int) -> int:
        """The little-endian u16 at addr."""
        return self._get(_U16, addr)

    def read_u32(self, addr: int) -> int:
        """The little-endian u32 at addr."""
        return self._get(_U32, addr)

    def read_u64(self, addr: int) -> int:
        """The little-endian u64 at addr."""
        return self._get(_U64, addr)

    def write_u8(self, addr: int, v: int) -> None:
        """Store one byte at addr."""
        self._put(_U8, addr, v)

    def write_u16(self, addr: int, v: int) -> None:
        """Store a little-endian u16 at addr, in one store."""
        self._put(_U16, addr, v)

    def write_u32(self, addr: int, v: int) -> None:
        """Store a little-endian u32 at addr, in one store."""
        self._put(_U32, addr, v)

    def write_u64(self, addr: int, v: int) -> None:
        """Store a little-endian u64 at addr, in one store."""
        self._put(_U64, addr, v)


def out_of_bounds(addr, length, limit):
    """The seed's test: (addr + size) > guest_limit || (addr + size) < addr."""
    return addr < 0 or length < 0 or addr + length > limit


class GuestMemory(Memory):
    """One anonymous mapping of guest RAM with a PROT_NONE guard page on each side."""

    def __init__(self, size: int):
        if size <= 0:
            raise LauncherError(f"guest memory size must be positive, not {size}")
        self.size = page_align_up(size)
        total = self.size + 2 * PAGE_SIZE
        try:
            self._map = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise LauncherError(f"cannot map {self.size >> 20} MiB of guest memory: {e.strerror}") from e
        # Holding a ctypes view pins the mapping: mmap.close() refuses while it lives.
        self._anchor = ctypes.c_char.from_buffer(self._map)
        map_address = ctypes.addressof(self._anchor)
        for guard in (map_address, map_address + PAGE_SIZE + self.size):
            if _libc.mprotect(guard, PAGE_SIZE, PROT_NONE) != 0:
                raise LauncherError(f"mprotect of a guard page failed: errno {ctypes.get_errno()}")
        self.host_address = map_address + PAGE_SIZE
        self._whole = memoryview(self._map)
        # Guest-physical 0 is PAGE_SIZE into the mapping; slicing the view keeps the
        # guard pages out of reach of any slice we hand out.
        self._ram = self._whole[PAGE_SIZE:PAGE_SIZE + self.size]

    def _locate(self, addr, length):
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestMemoryError("Invalid address", detail=f"{addr:#x}+{length:#x} outside {self.size:#x} bytes")
        return self._ram, addr

    def span(self, addr: int) -> tuple[memoryview, int, int] | None:
        """Memory.span: all of guest RAM is one piece."""
        return (self._ram, 0, self.size) if 0 <= addr < self.size else None

    def to_guest_phys(self, host_address: int) -> int:
        """The guest-physical address of a launcher address inside guest memory."""
        off = host_address - self.host_address
        if not 0 <= off <= self.size:
            raise ValueError(f"host address {host_address:#x} is not in guest memory")
        return off

    def from_guest_phys(self, addr: int) -> int:
        """The launcher address of guest-physical addr."""
        self._locate(addr, 0)
        return self.host_address + addr

    def close(self) -> None:
        """Unmap guest memory (a second call does nothing)."""
        if self._map is None:
            return
        self._ram.release()
        self._whole.release()
        self.__dict__.pop("_anchor", None)  # (close may be retried after a BufferError)
        self._map.close()
        self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MmioAllocator:
    """get_mmio_region(): hand out device windows above RAM, each a power of two."""

    def __init__(self, start):
        self.start = start
        self.next = start

    def allocate(self, size):
        addr = self.next
        if size == 0:
            return addr
        span = 1
        while span < size:
            span <<= 1
        # Keep each window naturally aligned so a BAR's low bits stay zero.
        addr = (self.next + span - 1) & ~(span - 1)
        self.next = addr + span
        return addr

    @property
    def limit(self):
        return self.next
