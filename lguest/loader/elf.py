"""Loading an ELF vmlinux: 32-bit i386 (what lguest runs) or 64-bit x86-64 (for KVM).

#L:140 Loading the kernel is easy when it's a "vmlinux". The ELF headers give *two*
# addresses for each segment: a physical one and a virtual one. We use the physical
# address; the Guest will map itself to the virtual address. An x86 vmlinux's e_entry
# is physical too (the linker script says ENTRY(phys_startup_32) / phys_startup_64).
# pyelftools parses the headers; every parse failure, and every check the seed made,
# comes out as one LauncherError naming the file, never a traceback from inside
# pyelftools.
"""

import logging
import struct

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from ..errors import LauncherError
from .image import KernelImage, require_fits

log = logging.getLogger("lguest.loader")

ELF_MAGIC = b"\x7fELF"
# machine -> (ELF class, size of one program header, KernelImage.kind)
MACHINES = {"EM_386": (32, 32, "elf32"), "EM_X86_64": (64, 56, "elf64")}
# Whatever pyelftools (and its bundled construct) raises on a mangled file.
PARSE_ERRORS = (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
                TypeError, EOFError, UnicodeDecodeError)


def is_elf(head):
    return head[:4] == ELF_MAGIC


def load_elf(source, memory):
    """Place every PT_LOAD segment of the ELF image at its p_paddr; return the record."""
    try:
        elf = ELFFile(source.stream())
        header = elf.header
        kind = _check_header(source, elf, header)
        phdrs = [_program_header(elf, header, i) for i in range(header["e_phnum"])]
    except PARSE_ERRORS as e:
        raise LauncherError(f"{source.name}: Malformed elf header ({e})") from e
    return _place_segments(source, memory, header, kind, phdrs)


def _check_header(source, elf, header):
    #L:142 Sanity checks on the main ELF header, as the seed's map_elf(): an x86
    # executable (ET_EXEC, EM_386 or EM_X86_64, little-endian) with a reasonable number
    # (1 to 65536 / e_phentsize) of correctly-sized program headers.
    machine = MACHINES.get(header["e_machine"])
    problem = None
    if header["e_type"] != "ET_EXEC":
        problem = f"type {header['e_type']}, not ET_EXEC"
    elif machine is None:
        problem = f"machine {header['e_machine']}, not EM_386 or EM_X86_64"
    elif elf.elfclass != machine[0] or not elf.little_endian:
        problem = f"{header['e_machine']} in a {elf.elfclass}-bit {'little' if elf.little_endian else 'big'}-endian file"
    elif header["e_phentsize"] != machine[1]:
        problem = f"e_phentsize {header['e_phentsize']}, expected {machine[1]}"
    elif not 1 <= header["e_phnum"] <= 65536 // machine[1]:
        problem = f"e_phnum {header['e_phnum']}"
    elif header["e_phoff"] + header["e_phnum"] * machine[1] > source.size:
        problem = "program headers past the end of the file"
    if problem:
        raise LauncherError(f"{source.name}: Malformed elf header: {problem}")
    return machine[2]


def _program_header(elf, header, index):
    offset = header["e_phoff"] + index * header["e_phentsize"]
    return struct_parse(elf.structs.Elf_Phdr, elf.stream, stream_pos=offset)


def _place_segments(source, memory, header, kind, phdrs):
    #L:145 Try all the headers: there are usually only three. A read-only one, a
    # read-write one, and a "note" section which we don't load. Each loadable one goes
    # to its physical address; file bytes first (L:135 maps them when it can), then
    # zeroes for the rest of p_memsz: the bss. Our guest memory starts zeroed, but a
    # second boot on the same memory (or a segment overlapping an earlier one) must
    # not see stale bytes there.
    start, end = None, None
    for i, ph in enumerate(phdrs):
        if ph["p_type"] != "PT_LOAD":
            continue
        paddr, filesz, memsz = ph["p_paddr"], ph["p_filesz"], ph["p_memsz"]
        log.debug("Section %i: size %i addr %#x", i, memsz, paddr)
        if filesz > memsz:
            raise LauncherError(f"{source.name}: Malformed elf segment {i}: "
                                f"file size {filesz:#x} > memory size {memsz:#x}")
        require_fits(memory, paddr, memsz, f"{source.name}: ELF segment {i}")
        source.copy_to(memory, paddr, ph["p_offset"], filesz)
        if memsz > filesz:
            memory.view(paddr + filesz, memsz - filesz)[:] = bytes(memsz - filesz)
        start = paddr if start is None else min(start, paddr)
        end = paddr + memsz if end is None else max(end, paddr + memsz)
    if start is None:
        raise LauncherError(f"{source.name}: Malformed elf: no loadable segment")
    entry = header["e_entry"]
    if not start <= entry < end:
        raise LauncherError(f"{source.name}: entry point {entry:#x} is outside the loaded "
                            f"kernel ({start:#x}-{end:#x})")
    if kind == "elf32":
        return KernelImage(kind, start, end, entry32=entry)
    return KernelImage(kind, start, end, entry64=entry)
