"""Every number and structure layout of the KVM API we use, in one table.

#L:600 The KVM backend talks to /dev/kvm through ioctl(2) and one mmap'd page per
# vCPU (struct kvm_run). Rather than scatter magic numbers, this module holds all of
# them: each ioctl is the _IO/_IOR/_IOW/_IOWR encoding of <linux/kvm.h> (type 0xAE),
# and each structure is a struct.Struct whose size the encoding carries, so a wrong
# layout shows up as EINVAL/ENOTTY at once rather than as silent garbage. Only x86-64
# layouts are described: that is the only architecture this launcher boots.
"""

import struct

KVMIO = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction, nr, size):
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr):
    return _ioc(_NONE, nr, 0)


def _iow(nr, size):
    return _ioc(_WRITE, nr, size)


def _ior(nr, size):
    return _ioc(_READ, nr, size)


def _iowr(nr, size):
    return _ioc(_READ | _WRITE, nr, size)


API_VERSION = 12

# -- structure layouts (little-endian, natural alignment as in <linux/kvm.h>) ----------
# struct kvm_userspace_memory_region { u32 slot, flags; u64 guest_phys_addr, memory_size, userspace_addr; }
MEMORY_REGION = struct.Struct("<IIQQQ")
# struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
REGS = struct.Struct("<18Q")
# struct kvm_segment { u64 base; u32 limit; u16 selector; u8 type, present, dpl, db, s, l, g, avl, unusable, padding; }
SEGMENT = struct.Struct("<QIH10B")
# struct kvm_dtable { u64 base; u16 limit; u16 padding[3]; }
DTABLE = struct.Struct("<QH6x")
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
# struct kvm_sregs: 8 segments, gdt, idt, cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4]
SREGS_CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
SREGS_SIZE = 8 * SEGMENT.size + 2 * DTABLE.size + 7 * 8 + 4 * 8
# struct kvm_cpuid2 { u32 nent, padding; struct kvm_cpuid_entry2 entries[]; }
CPUID2_HEADER = struct.Struct("<II")
# struct kvm_cpuid_entry2 { u32 function, index, flags, eax, ebx, ecx, edx, padding[3]; }
CPUID_ENTRY = struct.Struct("<7I12x")
CPUID_MAX_ENTRIES = 256
# struct kvm_irq_level { u32 irq; u32 level; }
IRQ_LEVEL = struct.Struct("<II")
# struct kvm_irqfd { u32 fd, gsi, flags, resamplefd; u8 pad[16]; }
IRQFD_ARGS = struct.Struct("<IIII16x")
IRQFD_FLAG_DEASSIGN = 1 << 0
# struct kvm_ioeventfd { u64 datamatch, addr; u32 len; s32 fd; u32 flags; u8 pad[36]; }
IOEVENTFD_ARGS = struct.Struct("<QQIiI36x")
IOEVENTFD_FLAG_DATAMATCH = 1 << 0
IOEVENTFD_FLAG_PIO = 1 << 1
IOEVENTFD_FLAG_DEASSIGN = 1 << 2
# struct kvm_pit_config { u32 flags; u32 pad[15]; }
PIT_CONFIG = struct.Struct("<I60x")
PIT_SPEAKER_DUMMY = 1
# struct kvm_msi { u32 address_lo, address_hi, data, flags, devid; u8 pad[12]; }
MSI = struct.Struct("<IIIII12x")
# struct kvm_irq_routing { u32 nr, flags; struct kvm_irq_routing_entry entries[]; }
IRQ_ROUTING_HEADER = struct.Struct("<II")
# struct kvm_irq_routing_entry { u32 gsi, type, flags, pad; union { irqchip{u32 irqchip, pin}; msi{u32 lo, hi, data, devid}; u32 pad[8]; } }
IRQ_ROUTING_ENTRY = struct.Struct("<IIII32s")
IRQ_ROUTING_IRQCHIP = 1
IRQ_ROUTING_MSI = 2
IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, IRQCHIP_IOAPIC = 0, 1, 2
# struct kvm_msrs { u32 nmsrs, pad; struct kvm_msr_entry { u32 index, reserved; u64 data; } entries[]; }
MSRS_HEADER = struct.Struct("<II")
MSR_ENTRY = struct.Struct("<IIQ")

# -- ioctl numbers ------------------------------------------------------------------------
# system (/dev/kvm)
GET_API_VERSION = _io(0x00)
CREATE_VM = _io(0x01)
CHECK_EXTENSION = _io(0x03)
GET_VCPU_MMAP_SIZE = _io(0x04)
GET_SUPPORTED_CPUID = _iowr(0x05, CPUID2_HEADER.size)
# VM
CREATE_VCPU = _io(0x41)
SET_USER_MEMORY_REGION = _iow(0x46, MEMORY_REGION.size)
SET_TSS_ADDR = _io(0x47)
SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
CREATE_IRQCHIP = _io(0x60)
IRQ_LINE = _iow(0x61, IRQ_LEVEL.size)
SET_GSI_ROUTING = _iow(0x6A, IRQ_ROUTING_HEADER.size)
IRQFD = _iow(0x76, IRQFD_ARGS.size)
CREATE_PIT2 = _iow(0x77, PIT_CONFIG.size)
IOEVENTFD = _iow(0x79, IOEVENTFD_ARGS.size)
SIGNAL_MSI = _iow(0xA5, MSI.size)
# vCPU
RUN = _io(0x80)
GET_REGS = _ior(0x81, REGS.size)
SET_REGS = _iow(0x82, REGS.size)
GET_SREGS = _ior(0x83, SREGS_SIZE)
SET_SREGS = _iow(0x84, SREGS_SIZE)
SET_MSRS = _iow(0x89, MSRS_HEADER.size)
SET_CPUID2 = _iow(0x90, CPUID2_HEADER.size)

# -- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------------------
CAP_IRQCHIP = 0
CAP_USER_MEMORY = 3
CAP_SET_TSS_ADDR = 4
CAP_PIT2 = 33
CAP_IOEVENTFD = 36
CAP_IRQFD = 32
CAP_IRQ_ROUTING = 25
CAP_SIGNAL_MSI = 77
CAP_NR_VCPUS = 9
CAP_MAX_VCPUS = 66

# -- struct kvm_run ------------------------------------------------------------------------
# u8 request_interrupt_window, immediate_exit, pad[6]; u32 exit_reason;
# u8 ready_for_interrupt_injection, if_flag; u16 flags; u64 cr8, apic_base; then the
# exit union at offset 32.
RUN_IMMEDIATE_EXIT = 1
RUN_EXIT_REASON = struct.Struct("<I")
RUN_EXIT_REASON_OFFSET = 8
RUN_UNION = 32
# io: u8 direction, size; u16 port; u32 count; u64 data_offset
RUN_IO = struct.Struct("<BBHIQ")
IO_IN, IO_OUT = 0, 1
# mmio: u64 phys_addr; u8 data[8]; u32 len; u8 is_write
RUN_MMIO = struct.Struct("<Q8sIB")
RUN_MMIO_DATA = RUN_UNION + 8
# internal: u32 suberror, ndata; u64 data[16]
RUN_INTERNAL = struct.Struct("<II")
# system_event: u32 type, ndata; u64 data[...]
RUN_SYSTEM_EVENT = struct.Struct("<IIQ")
# fail_entry: u64 hardware_entry_failure_reason; u32 cpu
RUN_FAIL_ENTRY = struct.Struct("<QI")

EXIT_UNKNOWN = 0
EXIT_EXCEPTION = 1
EXIT_IO = 2
EXIT_HYPERCALL = 3
EXIT_DEBUG = 4
EXIT_HLT = 5
EXIT_MMIO = 6
EXIT_IRQ_WINDOW_OPEN = 7
EXIT_SHUTDOWN = 8
EXIT_FAIL_ENTRY = 9
EXIT_INTR = 10
EXIT_INTERNAL_ERROR = 17
EXIT_SYSTEM_EVENT = 24

SYSTEM_EVENT_SHUTDOWN = 1
SYSTEM_EVENT_RESET = 2
SYSTEM_EVENT_CRASH = 3

INTERNAL_ERROR_SUBERRORS = {
    1: "emulation failure",
    2: "simultaneous exceptions",
    3: "delivery event",
    4: "unexpected exit reason",
}

# -- MSRs and control-register bits used for boot --------------------------------------
MSR_EFER = 0xC0000080
