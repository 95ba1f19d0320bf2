"""Kernel loading: synthetic ELF32/ELF64 vmlinux files and bzImages built right here.

Recipe for the images (no checked-in fixtures): an ELF header and program headers packed
with struct, the segment bytes after them (page aligned, or packed tight to force the
read path); a bzImage is (setup_sects + 1) * 512 bytes of boot sector and setup with the
setup header fields poked at boot.rst's offsets, then the "protected-mode kernel".
"""

import logging
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from lguest.errors import LauncherError
from lguest.loader import ImageBytes, load_kernel, prepare_boot
from lguest.loader.bzimage import load_bzimage
from lguest.loader.initrd import place_initrd
from lguest.loader.mapping import ImageFile
from lguest.memory import GuestMemory

MiB = 1 << 20
PAGE = 4096
PT_LOAD, PT_NOTE = 1, 4
EM_386, EM_X86_64, EM_ARM = 3, 62, 40


def make_elf(segments, entry, bits=32, e_type=2, machine=None, phentsize=None, phnum=None,
             aligned=True, big_endian=False):
    """segments: list of (p_type, paddr, data, memsz)."""
    machine = machine if machine is not None else (EM_386 if bits == 32 else EM_X86_64)
    ehsize, real_phentsize = (52, 32) if bits == 32 else (64, 56)
    order = ">" if big_endian else "<"
    offset = ehsize + real_phentsize * len(segments)
    body, phdrs = b"", b""
    for p_type, paddr, data, memsz in segments:
        if aligned:
            offset = -(-offset // PAGE) * PAGE
        pad = offset - ehsize - real_phentsize * len(segments) - len(body)
        body += b"\0" * pad + data
        if bits == 32:
            phdrs += struct.pack(order + "8I", p_type, offset, paddr, paddr, len(data), memsz, 7, PAGE)
        else:
            phdrs += struct.pack(order + "IIQQQQQQ", p_type, 7, offset, paddr, paddr, len(data), memsz, PAGE)
        offset += len(data)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 2 if big_endian else 1, 1]) + bytes(9)
    fmt = order + ("HHIIIIIHHHHHH" if bits == 32 else "HHIQQQIHHHHHH")
    header = ident + struct.pack(fmt, e_type, machine, 1, entry, ehsize, 0, 0, ehsize,
                                 phentsize or real_phentsize,
                                 len(segments) if phnum is None else phnum, 0, 0, 0)
    return header + phdrs + body


def make_bzimage(kernel, setup_sects=4, version=0x20F, loadflags=0x01, code32_start=0x100000,
                 xloadflags=0x01, relocatable=1, kernel_alignment=0x200000, min_alignment=21,
                 pref_address=0x1000000, init_size=0, cmdline_size=2047,
                 initrd_addr_max=0x7FFFFFFF, magic=b"HdrS"):
    setup = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    struct.pack_into("<BB", setup, 0x200, 0xEB, 0x6A)          # jmp: header ends at 0x26c
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, code32_start)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    struct.pack_into("<BBH", setup, 0x234, relocatable, min_alignment, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def pattern(n, seed=1):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


@pytest.fixture
def memory():
    with GuestMemory(32 * MiB) as mem:
        yield mem


def test_elf32_segments_land_at_paddr_with_bss_zeroed_and_entry32(memory):
    text, data = pattern(3 * PAGE + 100), pattern(500, 9)
    image = make_elf([(PT_LOAD, 0x100000, text, len(text)),
                      (PT_NOTE, 0xFFFF0000, b"note", 4),
                      (PT_LOAD, 0x200000, data, 2 * PAGE)], entry=0x100010)
    memory.write(0x200000, b"\xAA" * 2 * PAGE)          # stale bytes the bss must hide
    kernel = load_kernel(ImageBytes(image), memory)
    assert memory.read(0x100000, len(text)) == text
    assert memory.read(0x200000, len(data)) == data
    assert memory.read(0x200000 + len(data), 2 * PAGE - len(data)) == bytes(2 * PAGE - len(data))
    assert (kernel.kind, kernel.entry32, kernel.entry64) == ("elf32", 0x100010, None)
    assert (kernel.start, kernel.end) == (0x100000, 0x200000 + 2 * PAGE)


def test_elf64_gives_a_64_bit_entry(memory):
    text = pattern(PAGE)
    kernel = load_kernel(ImageBytes(make_elf([(PT_LOAD, 0x1000000, text, 5 * PAGE)], 0x1000000, bits=64)), memory)
    assert (kernel.kind, kernel.entry32, kernel.entry64) == ("elf64", None, 0x1000000)
    assert memory.read(0x1000000, PAGE) == text and kernel.end == 0x1000000 + 5 * PAGE


def test_aligned_file_is_mapped_privately_and_unaligned_is_read(memory, tmp_path):
    text = pattern(2 * PAGE + 10, 3)
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf([(PT_LOAD, 0x100000, text, len(text))], 0x100000))
    with ImageFile(path) as source:
        load_kernel(source, memory)
        assert source.pages_mapped == 2
    assert memory.read(0x100000, len(text)) == text
    memory.write(0x100000, b"guest wrote this")            # MAP_PRIVATE: copy on write
    assert b"guest wrote this" not in path.read_bytes()
    packed = tmp_path / "packed"
    packed.write_bytes(make_elf([(PT_LOAD, 0x300000, text, len(text))], 0x300000, aligned=False))
    with ImageFile(packed) as source:
        load_kernel(source, memory)
        assert source.pages_mapped == 0
    assert memory.read(0x300000, len(text)) == text


@pytest.mark.parametrize("change,words", [
    (dict(e_type=3), "ET_EXEC"),
    (dict(machine=EM_ARM), "machine"),
    (dict(phentsize=40), "e_phentsize"),
    (dict(phnum=0), "e_phnum"),
    (dict(big_endian=True), "endian"),
])
def test_the_seeds_header_checks(memory, change, words):
    image = make_elf([(PT_LOAD, 0x100000, b"x" * 64, 64)], 0x100000, **change)
    with pytest.raises(LauncherError, match="Malformed elf header") as e:
        load_kernel(ImageBytes(image), memory)
    assert words in str(e.value)


def test_64_bit_machine_in_a_32_bit_file_is_refused(memory):
    image = make_elf([(PT_LOAD, 0x100000, b"x" * 64, 64)], 0x100000, machine=EM_X86_64)
    with pytest.raises(LauncherError, match="Malformed elf header"):
        load_kernel(ImageBytes(image), memory)


@pytest.mark.parametrize("paddr,memsz", [(32 * MiB - 16, 64), (0xFFFFFFF0, 0x20), (31 * MiB, 2 * MiB)])
def test_segment_outside_guest_memory_is_an_error_not_a_write(memory, paddr, memsz):
    image = make_elf([(PT_LOAD, paddr, b"y" * 32, memsz)], paddr)
    with pytest.raises(LauncherError, match="does not fit"):
        load_kernel(ImageBytes(image), memory)


def test_malformed_segments(memory):
    with pytest.raises(LauncherError, match="file size"):
        load_kernel(ImageBytes(make_elf([(PT_LOAD, 0x100000, b"z" * 64, 32)], 0x100000)), memory)
    truncated = make_elf([(PT_LOAD, 0x100000, b"z" * 3000, 3000)], 0x100000)[:-1000]
    with pytest.raises(LauncherError, match="truncated|past the end"):
        load_kernel(ImageBytes(truncated), memory)
    with pytest.raises(LauncherError, match="entry point"):
        load_kernel(ImageBytes(make_elf([(PT_LOAD, 0x100000, b"z" * 64, 64)], 0x5000000)), memory)
    with pytest.raises(LauncherError, match="no loadable"):
        load_kernel(ImageBytes(make_elf([(PT_NOTE, 0x100000, b"z" * 64, 64)], 0x100000)), memory)


def test_truncated_file_is_refused_before_mmap_could_sigbus(memory, tmp_path):
    path = tmp_path / "short"
    path.write_bytes(make_elf([(PT_LOAD, 0x100000, pattern(3 * PAGE), 3 * PAGE)], 0x100000)[:2 * PAGE])
    with ImageFile(path) as source, pytest.raises(LauncherError, match="past the end"):
        load_kernel(source, memory)


def test_verbose_traces_the_sections(memory, caplog):
    image = make_elf([(PT_LOAD, 0x100000, b"x" * 64, 128)], 0x100000)
    with caplog.at_level(logging.DEBUG, logger="lguest.loader"):
        load_kernel(ImageBytes(image), memory)
    assert "Section 0: size 128 addr 0x100000" in caplog.text


# --- bzImage -------------------------------------------------------------------------

def test_bzimage_kernel_goes_to_1MiB_with_its_entries_and_header(memory):
    payload = pattern(10000, 5)
    kernel = load_kernel(ImageBytes(make_bzimage(payload, setup_sects=6)), memory)
    assert memory.read(0x100000, len(payload)) == payload
    assert (kernel.kind, kernel.entry32, kernel.entry64) == ("bzimage", 0x100000, 0x100200)
    assert kernel.setup_header[0] == 6 and kernel.setup_header[0x202 - 0x1F1:][:4] == b"HdrS"
    assert (kernel.protocol, kernel.cmdline_size, kernel.initrd_addr_max) == (0x20F, 2047, 0x7FFFFFFF)
    # Relocatable, loaded below pref_address: it will run at 16 MiB (init_size 0 here).
    assert (kernel.start, kernel.end) == (0x100000, 0x1000000)
    low = load_kernel(ImageBytes(make_bzimage(payload, kernel_alignment=MiB, pref_address=MiB)), memory)
    assert low.end == 0x100000 + len(payload)


def test_setup_sects_zero_means_four(memory):
    image = make_bzimage(b"KERNEL", setup_sects=0)
    assert len(image) == 5 * 512 + 6
    load_kernel(ImageBytes(image), memory)
    assert memory.read(0x100000, 6) == b"KERNEL"


def test_no_64_bit_entry_without_xlf_kernel_64_and_old_protocol_defaults(memory):
    kernel = load_bzimage(ImageBytes(make_bzimage(b"k" * 100, xloadflags=0)), memory)
    assert kernel.entry64 is None
    old = load_bzimage(ImageBytes(make_bzimage(b"k" * 100, version=0x202)), memory)
    assert (old.entry64, old.cmdline_size, old.initrd_addr_max) == (None, 255, 0x37FFFFFF)


@pytest.mark.parametrize("change,words", [
    (dict(magic=b"HdrX"), "doesn't look like a bzImage"),
    (dict(version=0x201), "too old"),
    (dict(loadflags=0), "zImage"),
    (dict(code32_start=0x90000), "code32_start"),
])
def test_bzimage_header_errors(memory, change, words):
    with pytest.raises(LauncherError, match=words):
        load_kernel(ImageBytes(make_bzimage(b"k" * 100, **change)), memory)


def test_bzimage_with_nothing_after_setup_is_refused(memory):
    with pytest.raises(LauncherError, match="no kernel after"):
        load_kernel(ImageBytes(make_bzimage(b"")), memory)


def test_init_size_from_pref_address_must_fit_in_memory(memory):
    big = make_bzimage(b"k" * 100, pref_address=0x1000000, init_size=24 * MiB)
    with pytest.raises(LauncherError, match="needs 40 MiB of guest memory, only 32"):
        load_kernel(ImageBytes(big), memory)
    fits = load_kernel(ImageBytes(make_bzimage(b"k" * 100, init_size=8 * MiB)), memory)
    assert fits.end == 0x1000000 + 8 * MiB


def test_load_address_other_than_1MiB_only_where_the_protocol_allows(memory):
    image = make_bzimage(pattern(4096), relocatable=1)
    kernel = load_bzimage(ImageBytes(image), memory, load_address=0x400000)
    assert (kernel.entry32, kernel.entry64) == (0x400000, 0x400200)
    assert memory.read(0x400000, 4096) == pattern(4096)
    with pytest.raises(LauncherError, match="alignment"):
        load_bzimage(ImageBytes(image), memory, load_address=0x410000)
    with pytest.raises(LauncherError, match="not relocatable"):
        load_bzimage(ImageBytes(make_bzimage(b"k" * 64, relocatable=0)), memory, load_address=0x400000)


def test_garbage_is_neither_elf_nor_bzimage(memory):
    with pytest.raises(LauncherError, match="doesn't look like a bzImage"):
        load_kernel(ImageBytes(b"#!/bin/sh\necho hello\n"), memory)


# --- initrd ----------------------------------------------------------------------------

def test_initrd_goes_to_the_top_of_memory_page_aligned(memory):
    kernel = load_kernel(ImageBytes(make_bzimage(b"k" * 100)), memory)
    data = pattern(10000, 2)
    initrd = place_initrd(ImageBytes(data, "initrd"), memory, kernel)
    assert initrd.addr == (32 * MiB - 10000) & ~(PAGE - 1) and initrd.addr % PAGE == 0
    assert (initrd.size, memory.read(initrd.addr, 10000)) == (10000, data)


def test_initrd_stays_below_initrd_addr_max():
    with GuestMemory(64 * MiB) as memory:
        kernel = load_kernel(ImageBytes(make_bzimage(b"k" * 100, initrd_addr_max=32 * MiB - 1)), memory)
        initrd = place_initrd(ImageBytes(b"i" * 5000), memory, kernel)
    assert initrd.addr + initrd.size <= 32 * MiB and initrd.addr == 32 * MiB - 2 * PAGE


def test_initrd_overlapping_the_kernel_or_empty_is_refused(memory):
    kernel = load_kernel(ImageBytes(make_bzimage(b"k" * 100, init_size=8 * MiB)), memory)
    with pytest.raises(LauncherError, match="does not fit between the kernel"):
        place_initrd(ImageBytes(bytes(16 * MiB)), memory, kernel)
    with pytest.raises(LauncherError, match="empty"):
        place_initrd(ImageBytes(b""), memory, kernel)


def test_prepare_boot_from_files_lguest_profile(memory, tmp_path):
    (tmp_path / "vmlinux").write_bytes(make_elf([(PT_LOAD, 0x100000, pattern(PAGE), PAGE)], 0x100000))
    (tmp_path / "initrd").write_bytes(b"cpio" * 1000)
    boot = prepare_boot(memory, tmp_path / "vmlinux", "root=/dev/vda console=hvc0",
                        initrd_path=tmp_path / "initrd")
    assert (boot.zero_page, boot.cmdline_addr, boot.entry32) == (0, 0x1000, 0x100000)
    assert memory.read(0x1000, 28) == b"root=/dev/vda console=hvc0\0\0"
    assert struct.unpack_from("<II", memory.read(0x218, 8)) == (boot.initrd.addr, 4000)
    assert memory.read(boot.initrd.addr, 4000) == b"cpio" * 1000


def test_prepare_boot_missing_file_is_a_clear_error(memory, tmp_path):
    with pytest.raises(LauncherError, match="Failed to open .*nothing-here"):
        prepare_boot(memory, tmp_path / "nothing-here")


# --- fuzzing: only LauncherError, and the write stays in guest memory ------------------

def _mutate(image, edits):
    data = bytearray(image)
    for pos, value in edits:
        data[pos % len(data)] = value
    return bytes(data)


SMALL_MEMORY = 4 * MiB
ELF32 = make_elf([(PT_LOAD, 0x100000, pattern(PAGE + 50), 2 * PAGE), (PT_NOTE, 0, b"n" * 8, 8)], 0x100000)
ELF64 = make_elf([(PT_LOAD, 0x100000, pattern(PAGE + 50), 2 * PAGE)], 0x100000, bits=64)
BZIMAGE = make_bzimage(pattern(2000), init_size=MiB, pref_address=0x100000)


def _load_or_refuse(image, memory):
    try:
        kernel = load_kernel(ImageBytes(image), memory)
    except LauncherError:
        return
    assert 0 <= kernel.start <= kernel.end <= memory.size


@settings(max_examples=150)
@given(st.sampled_from([ELF32, ELF64, BZIMAGE]),
       st.lists(st.tuples(st.integers(0, 0x300), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzzed_headers_give_only_launcher_errors(image, edits):
    # Edits land in the headers: ELF header and program headers, or the setup header.
    with GuestMemory(SMALL_MEMORY) as memory:
        _load_or_refuse(_mutate(image, edits), memory)


@settings(max_examples=60)
@given(st.sampled_from([ELF32, ELF64, BZIMAGE]), st.integers(0, 0x1400))
def test_truncated_images_give_only_launcher_errors(image, length):
    with GuestMemory(SMALL_MEMORY) as memory:
        _load_or_refuse(image[:length], memory)


@settings(max_examples=40)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.booleans())
def test_fuzzed_program_header_through_the_mmap_path(tmp_path_factory, paddr, offset, filesz, memsz, bits64):
    image = bytearray(make_elf([(PT_LOAD, 0x100000, pattern(2 * PAGE), 2 * PAGE)], 0x100000,
                               bits=64 if bits64 else 32))
    if bits64:
        struct.pack_into("<QQQQQ", image, 64 + 8, offset, paddr, paddr, filesz, memsz)
    else:
        struct.pack_into("<IIIII", image, 52 + 4, offset, paddr, paddr, filesz, memsz)
    path = tmp_path_factory.mktemp("fuzz") / "vmlinux"
    path.write_bytes(image)
    with GuestMemory(SMALL_MEMORY) as memory, ImageFile(path) as source:
        try:
            kernel = load_kernel(source, memory)
        except LauncherError:
            return
        assert kernel.end <= memory.size
    os.unlink(path)
