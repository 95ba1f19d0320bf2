"""struct boot_params (the "zero page") and the two ways we fill it in.

#L:160 The Linux boot protocol (Documentation/arch/x86/boot.rst, zero-page.rst) hands the
# kernel one 4096-byte page, struct boot_params, from arch/x86/include/uapi/asm/
# bootparam.h. The part at 0x1f1 is the bzImage's own setup header; the rest is ours
# to fill: the e820 memory map, where the command line and the initrd are. Fields are
# named as in bootparam.h, little-endian, at the kernel's offsets.
"""

import struct

from ..errors import LauncherError

BOOT_PARAMS_SIZE = 4096
SETUP_HEADER_OFFSET = 0x1F1
SETUP_HEADER_END = 0x26C            # one past kernel_info_offset: the 2.15 header
E820_TABLE_OFFSET = 0x2D0
E820_ENTRY = struct.Struct("<QQI")  # addr, size, type: 20 bytes, packed
E820_MAX_ENTRIES = 128              # E820_MAX_ENTRIES_ZEROPAGE
E820_RAM, E820_RESERVED = 1, 2

HDRS_MAGIC = b"HdrS"
LOADED_HIGH, KEEP_SEGMENTS = 0x01, 0x40           # loadflags
XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G = 0x01, 0x02   # xloadflags
X86_SUBARCH_PC, X86_SUBARCH_LGUEST = 0, 1

# name -> (offset in struct boot_params, struct format)
FIELDS = {
    "apm_bios_info.version": (0x040, "H"),
    "tboot_addr": (0x058, "Q"),
    "ext_ramdisk_image": (0x0C0, "I"),
    "ext_ramdisk_size": (0x0C4, "I"),
    "ext_cmd_line_ptr": (0x0C8, "I"),
    "e820_entries": (0x1E8, "B"),
    "setup_sects": (0x1F1, "B"),
    "syssize": (0x1F4, "I"),
    "boot_flag": (0x1FE, "H"),
    "jump": (0x200, "H"),
    "header": (0x202, "4s"),
    "version": (0x206, "H"),
    "type_of_loader": (0x210, "B"),
    "loadflags": (0x211, "B"),
    "code32_start": (0x214, "I"),
    "ramdisk_image": (0x218, "I"),
    "ramdisk_size": (0x21C, "I"),
    "cmd_line_ptr": (0x228, "I"),
    "initrd_addr_max": (0x22C, "I"),
    "kernel_alignment": (0x230, "I"),
    "relocatable_kernel": (0x234, "B"),
    "min_alignment": (0x235, "B"),
    "xloadflags": (0x236, "H"),
    "cmdline_size": (0x238, "I"),
    "hardware_subarch": (0x23C, "I"),
    "payload_offset": (0x248, "I"),
    "payload_length": (0x24C, "I"),
    "pref_address": (0x258, "Q"),
    "init_size": (0x260, "I"),
}


def field(buffer, name):
    """Read a boot_params field from bytes laid out as struct boot_params (or a prefix)."""
    offset, fmt = FIELDS[name]
    return struct.unpack_from("<" + fmt, buffer, offset)[0]


class BootParams:
    """A struct boot_params being built, with fields set by name."""

    def __init__(self):
        self.data = bytearray(BOOT_PARAMS_SIZE)

    def __getitem__(self, name):
        return field(self.data, name)

    def __setitem__(self, name, value):
        offset, fmt = FIELDS[name]
        struct.pack_into("<" + fmt, self.data, offset, value)

    def copy_setup_header(self, header):
        """Put a bzImage's setup header (bytes from 0x1f1) in place, as boot.rst asks."""
        header = header[:SETUP_HEADER_END - SETUP_HEADER_OFFSET]
        self.data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(header)] = header

    def set_e820(self, entries):
        if len(entries) > E820_MAX_ENTRIES:
            raise LauncherError(f"{len(entries)} e820 entries: the zero page holds {E820_MAX_ENTRIES}")
        self["e820_entries"] = len(entries)
        for i, (addr, size, kind) in enumerate(entries):
            E820_ENTRY.pack_into(self.data, E820_TABLE_OFFSET + i * E820_ENTRY.size, addr, size, kind)

    def e820(self):
        return [E820_ENTRY.unpack_from(self.data, E820_TABLE_OFFSET + i * E820_ENTRY.size)
                for i in range(self["e820_entries"])]

    def set_ramdisk(self, addr, size):
        self["ramdisk_image"], self["ext_ramdisk_image"] = addr & 0xFFFFFFFF, addr >> 32
        self["ramdisk_size"], self["ext_ramdisk_size"] = size & 0xFFFFFFFF, size >> 32

    def set_cmd_line_ptr(self, addr):
        self["cmd_line_ptr"], self["ext_cmd_line_ptr"] = addr & 0xFFFFFFFF, addr >> 32


def lguest_profile(mem_size, cmdline_addr, initrd=None):
    #L:165 The lguest profile is the seed's main(), field for field, on a zeroed page:
    # if there is an initrd, ramdisk_image/ramdisk_size say where, and type_of_loader
    # 0xFF means "unknown; that's OK". The E820 map is a simple, single RAM region. The
    # command line pointer points just after boot_params. kernel_alignment is 16M
    # (CONFIG_PHYSICAL_ALIGN); version 2.07 is the protocol with the fields lguest needs;
    # hardware_subarch X86_SUBARCH_LGUEST tells the Guest it's an lguest; KEEP_SEGMENTS
    # tells the entry path not to reload segment registers; tboot_addr 0 (no tboot) and
    # apm_bios_info.version 0 (so APM doesn't load).
    bp = BootParams()
    if initrd:
        bp.set_ramdisk(*initrd)
        bp["type_of_loader"] = 0xFF
    bp.set_e820([(0, mem_size, E820_RAM)])
    bp.set_cmd_line_ptr(cmdline_addr)
    bp["kernel_alignment"] = 0x1000000
    bp["version"] = 0x207
    bp["hardware_subarch"] = X86_SUBARCH_LGUEST
    bp["loadflags"] |= KEEP_SEGMENTS
    bp["tboot_addr"] = 0
    bp["apm_bios_info.version"] = 0
    return bp


def pc_e820(mem_size, reserved=()):
    """A PC's memory map: low RAM, the EBDA/VGA/BIOS hole, RAM from 1 MiB, then the
    caller's reserved ranges (a PCI MMIO window, say), sorted by address."""
    if mem_size <= 0x100000:
        raise LauncherError(f"a PC guest needs more than 1 MiB of memory, not {mem_size} bytes")
    entries = [(0, 0x9FC00, E820_RAM), (0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED),
               (0x100000, mem_size - 0x100000, E820_RAM)]
    for addr, size in reserved:
        if addr < mem_size and addr + size > 0x9FC00 and not (0x9FC00 <= addr and addr + size <= 0x100000):
            raise LauncherError(f"reserved range {addr:#x}+{size:#x} overlaps guest RAM")
        entries.append((addr, size, E820_RESERVED))
    return sorted(entries)


def pc_profile(kernel, mem_size, cmdline_addr, initrd=None, reserved=()):
    #L:167 The plain-PC profile is what a boot loader does for a KVM guest (boot.rst,
    # "64-bit boot protocol"): copy the bzImage's setup header into the zero page (an
    # ELF vmlinux has none, so we write the minimum: boot_flag 0xAA55, "HdrS", a 2.12
    # version, 16M alignment), say who we are (type_of_loader 0xFF), where the command
    # line and initrd are, and give a full e820 with the legacy holes. No lguest
    # subarch: X86_SUBARCH_PC. A kernel we moved from 1 MiB gets code32_start moved too.
    bp = BootParams()
    if kernel.setup_header:
        bp.copy_setup_header(kernel.setup_header)
        if kernel.entry32 is not None:
            bp["code32_start"] = kernel.entry32
    else:
        bp["boot_flag"] = 0xAA55
        bp["header"] = HDRS_MAGIC
        bp["version"] = 0x20C
        bp["kernel_alignment"] = 0x1000000
    bp["type_of_loader"] = 0xFF
    bp["hardware_subarch"] = X86_SUBARCH_PC
    bp.set_cmd_line_ptr(cmdline_addr)
    if initrd:
        bp.set_ramdisk(*initrd)
    bp.set_e820(pc_e820(mem_size, reserved))
    return bp
