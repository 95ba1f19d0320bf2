"""Loading a bzImage: read the setup header, put the protected-mode kernel in place.

#L:150 A bzImage, unlike an ELF file, is not meant to be loaded. You're supposed to
# jump into it and it will unpack itself. Fortunately, Jeremy Fitzhardinge convinced
# Rusty it wasn't that hard, so we just read the funky header so we know where in the
# file to load, and away we go! The header (boot.rst) sits at 0x1f1: "HdrS" at 0x202,
# the protocol version at 0x206, and setup_sects 512-byte sectors of real-mode setup
# (0 means 4, for ancient reasons) after the boot sector; the protected-mode kernel is
# the rest of the file.
"""

import logging

from ..errors import LauncherError
from .bootparams import (HDRS_MAGIC, LOADED_HIGH, SETUP_HEADER_END, SETUP_HEADER_OFFSET,
                         XLF_KERNEL_64, field)
from .image import MiB, KernelImage, require_fits

log = logging.getLogger("lguest.loader")

HIGH_LOAD_ADDRESS = 0x100000        # modern bzImages get loaded at 1M
MIN_PROTOCOL = 0x202                # cmd_line_ptr arrived in 2.02; older is not worth it
OLD_INITRD_ADDR_MAX = 0x37FFFFFF    # what boot.rst says to assume before 2.03
OLD_CMDLINE_SIZE = 255              # likewise, before 2.06


def looks_like_bzimage(head):
    return len(head) >= 0x206 and head[0x202:0x206] == HDRS_MAGIC


def read_setup_header(source):
    """Return the setup header bytes (from 0x1f1), after checking the magic."""
    head = source.read(0, min(source.size, 0x1000))
    if not looks_like_bzimage(head):
        raise LauncherError(f"{source.name}: This doesn't look like a bzImage to me")
    # boot.rst: the header ends at 0x202 + the byte at 0x201 (the jump's offset);
    # we keep at least the fields we know, zero-padded if the file is short.
    end = max(0x202 + head[0x201], SETUP_HEADER_END)
    return head[SETUP_HEADER_OFFSET:end].ljust(end - SETUP_HEADER_OFFSET, b"\0")


def _h(header, name):
    """A setup-header field, from header bytes that start at 0x1f1."""
    return field(b"\0" * SETUP_HEADER_OFFSET + header, name)


def _check_protocol(source, header):
    version = _h(header, "version")
    if version < MIN_PROTOCOL:
        raise LauncherError(f"{source.name}: boot protocol {version >> 8}.{version & 0xFF:02d} "
                            f"is too old (need 2.02 or later)")
    if not _h(header, "loadflags") & LOADED_HIGH:
        raise LauncherError(f"{source.name}: a zImage (not loaded high) is not supported")
    return version


def _check_load_address(source, header, version, load):
    #L:152 Where the protected-mode kernel goes. The seed puts it at 1 MiB, which every
    # bzImage accepts (code32_start defaults to it). A caller may ask for somewhere else
    # only as boot.rst allows: a relocatable kernel (2.05+) at a multiple of
    # kernel_alignment (or of 1 << min_alignment, 2.10+); a fixed one only at 1 MiB.
    if load == HIGH_LOAD_ADDRESS:
        return
    relocatable = version >= 0x205 and _h(header, "relocatable_kernel")
    if not relocatable:
        raise LauncherError(f"{source.name}: kernel is not relocatable: it must load at 1 MiB, not {load:#x}")
    align = _h(header, "kernel_alignment")
    if version >= 0x20A:
        align = min(align, 1 << min(_h(header, "min_alignment"), 31)) or align
    if load < HIGH_LOAD_ADDRESS or align == 0 or load % align:
        raise LauncherError(f"{source.name}: cannot load at {load:#x} (alignment {align:#x})")


def runtime_end(header, version, load, payload_end):
    #L:154 init_size (2.10+) is the linear memory the kernel needs, from where it will
    # *run*, before it can look at the memory map: the decompressor moves itself to
    # pref_address (a fixed kernel always; a relocatable one when loaded below it,
    # otherwise to the load address rounded up to kernel_alignment). All of that must be
    # guest RAM, and no initrd may sit in it: this is how "memory too small" is found
    # before the guest dies mysteriously.
    if version < 0x20A:
        return payload_end
    pref, align = _h(header, "pref_address"), _h(header, "kernel_alignment") or 1
    relocatable = _h(header, "relocatable_kernel")
    run_at = max(-(-load // align) * align, pref) if relocatable else pref
    return max(payload_end, run_at + _h(header, "init_size"))


def load_bzimage(source, memory, load_address=HIGH_LOAD_ADDRESS):
    """Load a bzImage's protected-mode kernel; return the record with its setup header."""
    header = read_setup_header(source)
    version = _check_protocol(source, header)
    _check_load_address(source, header, version, load_address)
    setup_sects = _h(header, "setup_sects") or 4
    offset = (setup_sects + 1) * 512
    if offset >= source.size:
        raise LauncherError(f"{source.name}: bzImage has no kernel after its {setup_sects} setup sectors")
    length = source.size - offset
    require_fits(memory, load_address, length, f"{source.name}: kernel")
    end = runtime_end(header, version, load_address, load_address + length)
    if end > memory.size:
        raise LauncherError(f"{source.name}: kernel needs {-(-end // MiB)} MiB of guest memory, "
                            f"only {memory.size // MiB} MiB given")
    log.debug("bzImage protocol %#x: %d setup sectors, kernel %#x bytes at %#x",
              version, setup_sects, length, load_address)
    source.copy_to(memory, load_address, offset, length)
    return KernelImage("bzimage", load_address, end, setup_header=header, protocol=version,
                       load_address=load_address, xloadflags=_xloadflags(header, version),
                       entry32=_entry32(source, header, load_address, length),
                       entry64=_entry64(header, version, load_address),
                       cmdline_size=_h(header, "cmdline_size") if version >= 0x206 else OLD_CMDLINE_SIZE,
                       initrd_addr_max=_h(header, "initrd_addr_max") if version >= 0x203 else OLD_INITRD_ADDR_MAX)


def _xloadflags(header, version):
    return _h(header, "xloadflags") if version >= 0x20C else 0


def _entry32(source, header, load, length):
    #L:156 Finally, code32_start tells us where to enter the kernel. It is written for
    # a kernel at 1 MiB; a kernel we put elsewhere is entered the same distance in.
    entry = _h(header, "code32_start") - HIGH_LOAD_ADDRESS + load
    if not load <= entry < load + length:
        raise LauncherError(f"{source.name}: code32_start {entry:#x} is outside the kernel")
    return entry


def _entry64(header, version, load):
    # boot.rst: with XLF_KERNEL_64 (2.12+) the 64-bit entry is 0x200 past the start of
    # the protected-mode kernel.
    if version >= 0x20C and _h(header, "xloadflags") & XLF_KERNEL_64:
        return load + 0x200
    return None
