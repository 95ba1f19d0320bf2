import ctypes

import pytest
from hypothesis import given, strategies as st

from lguest.errors import GuestMemoryError, LauncherError
from lguest.memory import GuestMemory, MmioAllocator, PAGE_SIZE


@pytest.fixture
def mem():
    m = GuestMemory(64 * 1024)
    yield m
    m.close()


def test_typed_access_is_little_endian_and_visible_at_host_address(mem):
    mem.write_u32(0x10, 0x11223344)
    assert mem.read(0x10, 4) == bytes([0x44, 0x33, 0x22, 0x11])
    assert ctypes.c_uint32.from_address(mem.host_address + 0x10).value == 0x11223344
    mem.write_u64(0x20, 2**64 - 2)
    assert mem.read_u64(0x20) == 2**64 - 2
    mem.write_u16(0x30, 0xBEEF)
    assert mem.read_u16(0x30) == 0xBEEF and mem.read_u8(0x30) == 0xEF


def test_view_is_zero_copy(mem):
    v = mem.view(0x100, 8)
    v[:] = b"abcdefgh"
    assert mem.read(0x100, 8) == b"abcdefgh"
    mem.write(0x104, b"XY")
    assert bytes(v) == b"abcdXYgh"
    v.release()


@given(addr=st.integers(-2**64, 2**64), length=st.integers(-10, 2**33))
def test_bounds_check_rejects_exactly_the_ranges_outside(addr, length):
    with GuestMemory(PAGE_SIZE * 2) as m:
        inside = addr >= 0 and length >= 0 and addr + length <= m.size
        try:
            v = m.view(addr, length)
        except GuestMemoryError:
            assert not inside
        else:
            assert inside and len(v) == length
            v.release()


def test_end_of_memory_is_exact(mem):
    mem.write_u8(mem.size - 1, 5)
    with pytest.raises(GuestMemoryError):
        mem.write_u16(mem.size - 1, 5)
    with pytest.raises(GuestMemoryError):
        mem.read_u32(2**64 - 2)


def test_guest_and_host_addresses_convert(mem):
    assert mem.from_guest_phys(0x1234) == mem.host_address + 0x1234
    assert mem.to_guest_phys(mem.host_address + 0x1234) == 0x1234
    with pytest.raises(ValueError):
        mem.to_guest_phys(mem.host_address - 1)


def test_bad_size_is_a_launcher_error():
    with pytest.raises(LauncherError):
        GuestMemory(0)


def test_mmio_windows_are_powers_of_two_and_aligned():
    alloc = MmioAllocator(0x1000_0000)
    a = alloc.allocate(100)
    b = alloc.allocate(0x1000)
    c = alloc.allocate(3)
    assert a == 0x1000_0000
    assert b % 0x1000 == 0 and b >= a + 128
    assert c >= b + 0x1000 and c % 4 == 0
    assert alloc.allocate(0) == alloc.limit
