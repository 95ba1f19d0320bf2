"""boot_params for the lguest profile (the seed's main(), field for field) and for a PC.

Offsets are written out here from Documentation/arch/x86/zero-page.rst and boot.rst, so
the tests check the library's field table rather than reuse it.
"""

import struct

import pytest

from lguest.errors import LauncherError
from lguest.loader import KernelImage, write_boot_params
from lguest.loader.bootparams import lguest_profile, pc_e820, pc_profile
from lguest.loader.initrd import Initrd
from lguest.memory import GuestMemory

MiB = 1 << 20


def u8(b, off): return b[off]
def u16(b, off): return struct.unpack_from("<H", b, off)[0]
def u32(b, off): return struct.unpack_from("<I", b, off)[0]
def u64(b, off): return struct.unpack_from("<Q", b, off)[0]


def e820(b):
    return [struct.unpack_from("<QQI", b, 0x2D0 + 20 * i) for i in range(b[0x1E8])]


def bz_header(**fields):
    """A setup header (bytes from 0x1f1) with a few fields set."""
    page = bytearray(0x290)
    page[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", page, 0x206, fields.get("version", 0x20F))
    struct.pack_into("<B", page, 0x211, fields.get("loadflags", 0x01))
    struct.pack_into("<I", page, 0x214, 0x100000)
    struct.pack_into("<I", page, 0x230, 0x200000)
    struct.pack_into("<I", page, 0x238, 2047)
    return bytes(page[0x1F1:0x26C])


def test_lguest_profile_is_the_seeds_main_field_for_field():
    b = lguest_profile(64 * MiB, 0x1000).data
    assert len(b) == 4096
    assert e820(b) == [(0, 64 * MiB, 1)]
    assert u32(b, 0x228) == 0x1000                       # cmd_line_ptr: right after
    assert u32(b, 0x230) == 0x1000000                    # kernel_alignment 16M
    assert u16(b, 0x206) == 0x207                        # version 2.07
    assert u32(b, 0x23C) == 1                            # X86_SUBARCH_LGUEST
    assert u8(b, 0x211) == 0x40                          # KEEP_SEGMENTS
    assert u64(b, 0x58) == 0 and u16(b, 0x40) == 0       # no tboot, no APM
    assert u8(b, 0x210) == 0 and u32(b, 0x218) == 0      # no initrd: no loader type either


def test_lguest_profile_with_initrd():
    b = lguest_profile(64 * MiB, 0x1000, (60 * MiB, 12345)).data
    assert (u32(b, 0x218), u32(b, 0x21C), u8(b, 0x210)) == (60 * MiB, 12345, 0xFF)


def test_pc_e820_has_the_legacy_holes_and_sorted_reserved_ranges():
    entries = pc_e820(128 * MiB, reserved=[(0xE0000000, 0x10000000), (0xC0000000, 0x1000)])
    assert entries == [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 127 * MiB, 1),
                       (0xC0000000, 0x1000, 2), (0xE0000000, 0x10000000, 2)]


@pytest.mark.parametrize("mem,reserved", [(MiB, ()), (64 * MiB, [(32 * MiB, 0x1000)]),
                                          (64 * MiB, [(0x9F000, 0x2000)])])
def test_pc_e820_refuses_tiny_memory_and_reserved_ranges_over_ram(mem, reserved):
    with pytest.raises(LauncherError):
        pc_e820(mem, reserved)


def test_pc_profile_copies_the_setup_header_and_moves_code32_start():
    kernel = KernelImage("bzimage", 0x400000, 0x800000, entry32=0x400000, entry64=0x400200,
                         setup_header=bz_header(), protocol=0x20F, cmdline_size=2047)
    b = pc_profile(kernel, 256 * MiB, 0x20000, (200 * MiB, 4096), [(0xD0000000, 0x100000)]).data
    assert b[0x202:0x206] == b"HdrS" and u16(b, 0x206) == 0x20F      # the kernel's, not 0x207
    assert u32(b, 0x214) == 0x400000                                 # code32_start moved
    assert (u8(b, 0x210), u32(b, 0x23C), u32(b, 0x228)) == (0xFF, 0, 0x20000)
    assert (u32(b, 0x218), u32(b, 0x21C)) == (200 * MiB, 4096)
    assert u8(b, 0x211) & 0x40 == 0                                  # no KEEP_SEGMENTS
    assert e820(b)[-1] == (0xD0000000, 0x100000, 2) and len(e820(b)) == 4


def test_pc_profile_for_a_vmlinux_writes_a_minimal_header():
    kernel = KernelImage("elf64", 0x1000000, 0x2000000, entry64=0x1000000)
    b = pc_profile(kernel, 64 * MiB, 0x20000).data
    assert (u16(b, 0x1FE), b[0x202:0x206], u32(b, 0x230)) == (0xAA55, b"HdrS", 0x1000000)
    assert u16(b, 0x206) >= 0x20C and u8(b, 0x210) == 0xFF


def test_ramdisk_above_4G_uses_the_ext_fields():
    b = lguest_profile(8 << 30, 0x1000, ((5 << 30) + 0x1000, 0x1000)).data
    assert (u32(b, 0x218), u32(b, 0xC0)) == (0x40001000, 1)


@pytest.fixture
def memory():
    with GuestMemory(32 * MiB) as mem:
        yield mem


ELF_KERNEL = KernelImage("elf32", 0x100000, 0x400000, entry32=0x100000)


def test_write_boot_params_places_both_profiles(memory):
    boot = write_boot_params(memory, ELF_KERNEL, "lguest", "console=hvc0 ro", Initrd(30 * MiB, 100))
    assert (boot.zero_page, boot.cmdline_addr) == (0, 0x1000)
    assert memory.read(0x1000, 16) == b"console=hvc0 ro\0"
    assert u32(memory.read(0, 4096), 0x218) == 30 * MiB
    boot = write_boot_params(memory, ELF_KERNEL, "pc", "quiet")
    assert (boot.zero_page, boot.cmdline_addr, boot.entry32) == (0x7000, 0x20000, 0x100000)
    assert u32(memory.read(0x7000, 4096), 0x228) == 0x20000 and memory.read(0x20000, 6) == b"quiet\0"


def test_command_line_respects_cmdline_size(memory):
    small = KernelImage("bzimage", 0x100000, 0x200000, entry32=0x100000, setup_header=bz_header(),
                        protocol=0x20F, cmdline_size=16)
    write_boot_params(memory, small, "lguest", "x" * 16)
    with pytest.raises(LauncherError, match="17 bytes; the kernel accepts 16"):
        write_boot_params(memory, small, "lguest", "x" * 17)
    with pytest.raises(LauncherError, match="2048 bytes"):
        write_boot_params(memory, ELF_KERNEL, "pc", "y" * 2048)


def test_boot_data_may_not_overlap_the_kernel(memory):
    low = KernelImage("elf32", 0, 0x200000, entry32=0)
    with pytest.raises(LauncherError, match="boot_params .* would overlap the kernel"):
        write_boot_params(memory, low, "lguest", "")
    with pytest.raises(LauncherError, match="unknown boot profile"):
        write_boot_params(memory, ELF_KERNEL, "bios", "")
