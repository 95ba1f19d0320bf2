"""How the vCPU starts: 64-bit Linux boot protocol, 32-bit protected mode, real mode.

#L:610 A vCPU is born in real mode at the reset vector, as a PC's is. A boot loader
# would climb to the mode the kernel wants; we set the end state directly with
# KVM_SET_SREGS/KVM_SET_REGS. Linux's boot protocol (Documentation/x86/boot.rst):
#   64-bit: "the CPU must be in 64-bit mode with paging enabled", "the range with
#   setup_header.init_size from start address of loaded kernel and zero page and
#   command line buffer get ident mapping", "a GDT must be loaded with the descriptors
#   for selectors __BOOT_CS(0x10) and __BOOT_DS(0x18); both descriptors must be 4G
#   flat segment; __BOOT_CS must have execute/read permission, and __BOOT_DS must have
#   read/write permission; CS must be __BOOT_CS and DS, ES, SS must be __BOOT_DS;
#   interrupt must be disabled; %rsi must hold the base address of the struct
#   boot_params."
#   32-bit: the same, with paging off, the descriptors 32-bit, and %esi -> boot_params.
# The pure part (page tables, descriptor encoding) is separate from the part that
# touches a vCPU, so it is unit-tested without /dev/kvm.
"""

import struct

from ...errors import LauncherError

# Where the boot structures live: low memory below the zero page the plain-PC profile
# puts at 0x7000 (L:170) is BIOS-era scratch a kernel does not need at entry.
GDT_ADDR = 0x500
IDT_ADDR = 0x520
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
MAX_PD_PAGES = 4                    # 0xB000-0xEFFF: identity map up to 4 GiB
PAGE = 0x1000
HUGE_PAGE = 2 << 20
GIB = 1 << 30

BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20

# Descriptor flags as <asm/segment.h>'s GDT_ENTRY writes them: (G DB L AVL) << 12 | P DPL S TYPE.
CODE64_FLAGS = 0xA09B               # G, L, present, code execute/read, accessed
CODE32_FLAGS = 0xC09B               # G, D/B, present, code execute/read, accessed
DATA_FLAGS = 0xC093                 # G, D/B, present, data read/write, accessed
TSS_FLAGS = 0x808B                  # G, present, busy 32/64-bit TSS

PTE_PRESENT, PTE_WRITE, PTE_HUGE = 0x1, 0x2, 0x80
CR0_PE, CR0_ET, CR0_PG = 0x1, 0x10, 0x80000000
CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400


#L:611 A segment descriptor packs base and limit into scattered fields, the legacy of
# the 286. This is the kernel's GDT_ENTRY(flags, base, limit) and its inverse: the
# kvm_segment fields KVM wants are the same bits, unpacked.
def gdt_entry(flags, base, limit):
    return (((base & 0xFF000000) << 32) | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF)
            | ((limit & 0xF0000) << 32) | ((flags & 0xF0FF) << 40))


def decode_gdt_entry(entry):
    """The kvm_segment fields (without selector) a descriptor means."""
    flags = (entry >> 40) & 0xF0FF
    limit = (entry & 0xFFFF) | ((entry >> 32) & 0xF0000)
    base = ((entry >> 16) & 0xFFFFFF) | ((entry >> 32) & 0xFF000000)
    g = (flags >> 15) & 1
    return {"base": base, "limit": (limit << 12) | 0xFFF if g else limit,
            "type": flags & 0xF, "s": (flags >> 4) & 1, "dpl": (flags >> 5) & 3,
            "present": (flags >> 7) & 1, "avl": (flags >> 12) & 1, "l": (flags >> 13) & 1,
            "db": (flags >> 14) & 1, "g": g}


def boot_gdt(long_mode):
    """null, null, __BOOT_CS, __BOOT_DS, a TSS: as the kernel's own boot GDT."""
    code = CODE64_FLAGS if long_mode else CODE32_FLAGS
    return [0, 0, gdt_entry(code, 0, 0xFFFFF), gdt_entry(DATA_FLAGS, 0, 0xFFFFF),
            gdt_entry(TSS_FLAGS, 0, 0xFFFFF)]


#L:612 Identity page tables with 2 MiB pages: one PML4 entry, one PDPT entry per GiB,
# 512 PD entries per GiB each mapping 2 MiB at the same physical address. We cover
# RAM and the device windows above it (a tiny test guest touches its MMIO through
# this map; Linux builds its own tables at once and only needs the kernel, the zero
# page and the command line mapped). Returns {guest address: bytes} to write.
def identity_page_tables(limit):
    if limit <= 0:
        raise LauncherError("nothing to map: guest memory is empty")
    gib = (limit + GIB - 1) // GIB
    if gib > MAX_PD_PAGES:
        raise LauncherError(f"cannot identity-map {limit:#x} bytes: boot tables cover "
                            f"{MAX_PD_PAGES} GiB")
    pml4 = struct.pack("<Q", PDPT_ADDR | PTE_PRESENT | PTE_WRITE).ljust(PAGE, b"\0")
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * PAGE) | PTE_PRESENT | PTE_WRITE)
                    for i in range(gib)).ljust(PAGE, b"\0")
    tables = {PML4_ADDR: pml4, PDPT_ADDR: pdpt}
    for i in range(gib):
        entries = (((i * GIB) + j * HUGE_PAGE) | PTE_PRESENT | PTE_WRITE | PTE_HUGE
                   for j in range(512))
        tables[PD_ADDR + i * PAGE] = struct.pack("<512Q", *entries)
    return tables


def walk_identity(tables, address):
    """Translate `address` through tables built above (for tests): the physical
    address, or None if unmapped."""
    pml4 = struct.unpack_from("<Q", tables[PML4_ADDR], ((address >> 39) & 511) * 8)[0]
    if not pml4 & PTE_PRESENT:
        return None
    pdpt = struct.unpack_from("<Q", tables[pml4 & ~0xFFF], ((address >> 30) & 511) * 8)[0]
    if not pdpt & PTE_PRESENT:
        return None
    pde = struct.unpack_from("<Q", tables[pdpt & ~0xFFF], ((address >> 21) & 511) * 8)[0]
    if not pde & PTE_PRESENT or not pde & PTE_HUGE:
        return None
    return (pde & ~(HUGE_PAGE - 1) & 0x000FFFFFFFFFFFFF) | (address & (HUGE_PAGE - 1))


def _segment(sregs_segment, entry, selector):
    for name, value in decode_gdt_entry(entry).items():
        setattr(sregs_segment, name, value)
    sregs_segment.selector = selector
    sregs_segment.unusable = 0


def _load_gdt(memory, sregs, long_mode):
    gdt = boot_gdt(long_mode)
    memory.write(GDT_ADDR, struct.pack(f"<{len(gdt)}Q", *gdt))
    memory.write(IDT_ADDR, bytes(8))
    sregs.gdt = (GDT_ADDR, len(gdt) * 8 - 1)
    sregs.idt = (IDT_ADDR, 7)
    _segment(sregs.cs, gdt[BOOT_CS >> 3], BOOT_CS)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _segment(getattr(sregs, name), gdt[BOOT_DS >> 3], BOOT_DS)
    _segment(sregs.tr, gdt[BOOT_TSS >> 3], BOOT_TSS)


#L:613 Setting the vCPU up. `limit` is how far the identity map must reach (RAM and
# device windows). RSI (ESI) carries boot_params, RFLAGS only its always-one bit 1
# (interrupts disabled, as the protocol demands), RSP 0 until the kernel sets its own.
def enter_long_mode(vcpu, memory, entry, boot_params=0, limit=None):
    for address, data in identity_page_tables(limit or memory.size).items():
        memory.write(address, data)
    sregs = vcpu.get_sregs()
    _load_gdt(memory, sregs, long_mode=True)
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = CR4_PAE
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
    sregs.efer = EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    vcpu.set_regs({**_zero_regs(), "rip": entry, "rsi": boot_params, "rflags": 2})


def enter_protected_mode(vcpu, memory, entry, boot_params=0):
    sregs = vcpu.get_sregs()
    _load_gdt(memory, sregs, long_mode=False)
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs({**_zero_regs(), "rip": entry, "rsi": boot_params, "rflags": 2})


def enter_real_mode(vcpu, entry):
    """16-bit real mode at `entry` (below 1 MiB): CS = entry >> 4, IP = entry & 0xF,
    the other segments 0. For tiny test guests; Linux is not booted this way here."""
    if not 0 <= entry < 0x100000:
        raise LauncherError(f"a real-mode entry must lie below 1 MiB, not {entry:#x}")
    sregs = vcpu.get_sregs()
    sregs.cs.selector, sregs.cs.base = entry >> 4, (entry >> 4) << 4
    for name in ("ds", "es", "fs", "gs", "ss"):
        segment = getattr(sregs, name)
        segment.selector, segment.base = 0, 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs({**_zero_regs(), "rip": entry & 0xF, "rflags": 2})


def _zero_regs():
    return {"rax": 0, "rbx": 0, "rcx": 0, "rdx": 0, "rdi": 0, "rsp": 0, "rbp": 0}
