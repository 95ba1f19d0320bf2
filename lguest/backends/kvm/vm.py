"""/dev/kvm, one VM, its vCPUs: thin objects over the ioctls of L:600.

#L:601 Three file descriptors make a KVM guest. /dev/kvm itself answers questions
# about the host (API version, capabilities, the CPUID it supports) and creates VMs;
# a VM fd owns memory slots, the in-kernel interrupt controllers and timer, eventfd
# bindings (ioeventfd for kicks, irqfd for interrupts) and creates vCPUs; a vCPU fd
# runs: KVM_RUN returns to us whenever the guest does something the kernel will not
# finish alone (port or MMIO access, hlt, a fault it cannot deliver), and the details
# sit in the struct kvm_run page we mmap once per vCPU. Nothing here knows about
# devices or boot protocols: that is vcpu set-up (L:610) and the backend (L:640).
"""

import ctypes
import errno
import fcntl
import mmap
import os
import signal
import struct
import threading

from ...errors import LauncherError
from . import ioctls as K

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_libc.ioctl.restype = ctypes.c_int


def _ioctl(fd, request, arg=0, what=None):
    """fcntl.ioctl with an error that says which call failed."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        name = what or hex(request)
        raise LauncherError(f"KVM {name} failed: {e.strerror}") from e


def _ioctl_ulong(fd, request, value, what):
    """An ioctl whose argument is an unsigned long above INT_MAX, which fcntl.ioctl
    refuses (KVM_SET_TSS_ADDR 0xFFFBD000): go through libc directly."""
    if _libc.ioctl(fd, request, value) < 0:
        err = ctypes.get_errno()
        raise LauncherError(f"KVM {what} failed: {os.strerror(err)}")


class KvmSystem:
    """/dev/kvm: version check, capabilities, supported CPUID, VM creation."""

    def __init__(self, path="/dev/kvm"):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise LauncherError(f"cannot open {path}: {e.strerror}") from e
        try:
            version = fcntl.ioctl(self.fd, K.GET_API_VERSION, 0)
        except OSError as e:
            self.close()
            raise LauncherError(f"{path} does not answer KVM_GET_API_VERSION: {e.strerror}") from e
        if version != K.API_VERSION:
            self.close()
            raise LauncherError(f"{path} speaks KVM API version {version}; "
                                f"this launcher needs version {K.API_VERSION}")
        self.path = path
        self.vcpu_mmap_size = _ioctl(self.fd, K.GET_VCPU_MMAP_SIZE, 0, "GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap):
        return fcntl.ioctl(self.fd, K.CHECK_EXTENSION, cap)

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID: a list of (function, index, flags, eax, ebx, ecx, edx)."""
        buf = bytearray(K.CPUID2_HEADER.size + K.CPUID_MAX_ENTRIES * K.CPUID_ENTRY.size)
        K.CPUID2_HEADER.pack_into(buf, 0, K.CPUID_MAX_ENTRIES, 0)
        _ioctl(self.fd, K.GET_SUPPORTED_CPUID, buf, "GET_SUPPORTED_CPUID")
        count = K.CPUID2_HEADER.unpack_from(buf, 0)[0]
        return [K.CPUID_ENTRY.unpack_from(buf, K.CPUID2_HEADER.size + i * K.CPUID_ENTRY.size)
                for i in range(count)]

    def create_vm(self):
        return Vm(self, _ioctl(self.fd, K.CREATE_VM, 0, "CREATE_VM"))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Vm:
    """A VM fd: memory slots, irqchip, PIT, eventfd bindings, vCPUs."""

    def __init__(self, system, fd):
        self.system = system
        self.fd = fd
        self.vcpus = []
        self.slots = 0

    def add_memory(self, guest_phys, size, host_address):
        """Register host memory as guest-physical [guest_phys, guest_phys+size)."""
        region = K.MEMORY_REGION.pack(self.slots, 0, guest_phys, size, host_address)
        _ioctl(self.fd, K.SET_USER_MEMORY_REGION, region, "SET_USER_MEMORY_REGION")
        self.slots += 1

    def set_tss_addr(self, address):
        _ioctl_ulong(self.fd, K.SET_TSS_ADDR, address, "SET_TSS_ADDR")

    def set_identity_map_addr(self, address):
        _ioctl(self.fd, K.SET_IDENTITY_MAP_ADDR, struct.pack("<Q", address), "SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self):
        """The in-kernel PIC pair + IOAPIC (+ a local APIC per vCPU)."""
        _ioctl(self.fd, K.CREATE_IRQCHIP, 0, "CREATE_IRQCHIP")

    def create_pit2(self):
        _ioctl(self.fd, K.CREATE_PIT2, K.PIT_CONFIG.pack(0), "CREATE_PIT2")

    def irq_line(self, irq, level):
        _ioctl(self.fd, K.IRQ_LINE, K.IRQ_LEVEL.pack(irq, 1 if level else 0), "IRQ_LINE")

    def pulse_irq(self, irq):
        """An edge on a GSI: up then down (the in-kernel chips latch the edge)."""
        self.irq_line(irq, 1)
        self.irq_line(irq, 0)

    def irqfd(self, eventfd, gsi, deassign=False):
        """Writing 1 to `eventfd` raises GSI `gsi` in the kernel, no exit to us."""
        flags = K.IRQFD_FLAG_DEASSIGN if deassign else 0
        _ioctl(self.fd, K.IRQFD, K.IRQFD_ARGS.pack(eventfd, gsi, flags, 0), "IRQFD")

    def ioeventfd(self, eventfd, address, length, *, pio=False, datamatch=None, deassign=False):
        """A guest write of `length` bytes to `address` signals `eventfd` inside the
        kernel, and the vCPU carries on without an exit to us."""
        flags = K.IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= K.IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= K.IOEVENTFD_FLAG_DEASSIGN
        arg = K.IOEVENTFD_ARGS.pack(datamatch or 0, address, length, eventfd, flags)
        _ioctl(self.fd, K.IOEVENTFD, arg, "IOEVENTFD")

    def signal_msi(self, address, data):
        """Inject one MSI message (what an MSI-X table entry holds) directly."""
        # A mutable buffer, so fcntl.ioctl returns the ioctl's result (1: delivered).
        arg = bytearray(K.MSI.pack(address & 0xFFFFFFFF, address >> 32, data, 0, 0))
        return _ioctl(self.fd, K.SIGNAL_MSI, arg, "SIGNAL_MSI")

    def set_gsi_routing(self, entries):
        """Replace the whole GSI routing table. `entries` are packed
        IRQ_ROUTING_ENTRY structs (see routing_irqchip/routing_msi)."""
        buf = K.IRQ_ROUTING_HEADER.pack(len(entries), 0) + b"".join(entries)
        _ioctl(self.fd, K.SET_GSI_ROUTING, bytearray(buf), "SET_GSI_ROUTING")

    def create_vcpu(self):
        index = len(self.vcpus)
        vcpu = Vcpu(self, index, _ioctl(self.fd, K.CREATE_VCPU, index, "CREATE_VCPU"))
        self.vcpus.append(vcpu)
        return vcpu

    def close(self):
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def routing_irqchip(gsi, chip, pin):
    return K.IRQ_ROUTING_ENTRY.pack(gsi, K.IRQ_ROUTING_IRQCHIP, 0, 0, struct.pack("<II", chip, pin))


def routing_msi(gsi, address, data):
    return K.IRQ_ROUTING_ENTRY.pack(gsi, K.IRQ_ROUTING_MSI, 0, 0,
                                    struct.pack("<III", address & 0xFFFFFFFF, address >> 32, data))


def default_routing():
    """The routes KVM_CREATE_IRQCHIP installs: GSI 0-15 on both PICs and the IOAPIC
    (GSI 0 -> IOAPIC pin 2, the timer override), 16-23 on the IOAPIC only. Setting
    routing replaces the table, so an MSI route must be added on top of these."""
    entries = []
    for gsi in range(16):
        chip = K.IRQCHIP_PIC_MASTER if gsi < 8 else K.IRQCHIP_PIC_SLAVE
        entries.append(routing_irqchip(gsi, chip, gsi % 8))
    for gsi in range(24):
        entries.append(routing_irqchip(gsi, K.IRQCHIP_IOAPIC, 2 if gsi == 0 else gsi))
    return entries


#L:602 Getting control back. A vCPU ioctl issued from another thread waits until
# KVM_RUN returns, and a guest spinning in a loop never exits on its own. So a
# stop() sets kvm_run.immediate_exit (in case the vCPU thread is between two runs)
# and sends a real-time signal to the vCPU thread: KVM_RUN returns EINTR and run()
# reports an "interrupted" exit. Not SIGUSR1: the launcher raises out of its run loop
# with that one (a device thread failed), and that must keep working. The signal needs
# a handler that is not SIG_DFL (which would kill us); a no-op one is installed when
# the first vCPU is created on the main thread.
KICK_SIGNAL = signal.SIGRTMIN + 3


def _install_kick_handler():
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class Vcpu:
    """A vCPU fd and its kvm_run page."""

    def __init__(self, vm, index, fd):
        self.vm = vm
        self.index = index
        self.fd = fd
        self.run_page = mmap.mmap(fd, vm.system.vcpu_mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        self.thread_id = None
        _install_kick_handler()

    # -- registers ---------------------------------------------------------------------
    def get_regs(self):
        buf = bytearray(K.REGS.size)
        _ioctl(self.fd, K.GET_REGS, buf, "GET_REGS")
        return dict(zip(K.REG_NAMES, K.REGS.unpack(buf)))

    def set_regs(self, regs):
        """Set registers from a dict; names left out are read back unchanged."""
        current = self.get_regs()
        current.update(regs)
        values = [current[name] & 0xFFFFFFFFFFFFFFFF for name in K.REG_NAMES]
        _ioctl(self.fd, K.SET_REGS, K.REGS.pack(*values), "SET_REGS")

    def get_sregs(self):
        buf = bytearray(K.SREGS_SIZE)
        _ioctl(self.fd, K.GET_SREGS, buf, "GET_SREGS")
        return Sregs.unpack(buf)

    def set_sregs(self, sregs):
        _ioctl(self.fd, K.SET_SREGS, sregs.pack(), "SET_SREGS")

    def set_cpuid(self, entries):
        buf = bytearray(K.CPUID2_HEADER.pack(len(entries), 0))
        for entry in entries:
            buf += K.CPUID_ENTRY.pack(*entry)
        _ioctl(self.fd, K.SET_CPUID2, buf, "SET_CPUID2")

    def set_msrs(self, msrs):
        buf = bytearray(K.MSRS_HEADER.pack(len(msrs), 0))
        for index, value in msrs.items():
            buf += K.MSR_ENTRY.pack(index, 0, value)
        written = _ioctl(self.fd, K.SET_MSRS, buf, "SET_MSRS")
        if written != len(msrs):
            raise LauncherError(f"KVM SET_MSRS set {written} of {len(msrs)} MSRs")

    # -- running -------------------------------------------------------------------------
    def run(self):
        """One KVM_RUN. Returns the exit reason (K.EXIT_*), or K.EXIT_INTR when a
        stop() (or any signal) interrupted it."""
        self.thread_id = threading.get_ident()
        try:
            fcntl.ioctl(self.fd, K.RUN, 0)
        except OSError as e:
            if e.errno == errno.EINTR:
                self.run_page[K.RUN_IMMEDIATE_EXIT] = 0
                return K.EXIT_INTR
            raise LauncherError(f"KVM_RUN failed: {e.strerror}") from e
        return K.RUN_EXIT_REASON.unpack_from(self.run_page, K.RUN_EXIT_REASON_OFFSET)[0]

    def stop(self):
        """Make the current (or next) KVM_RUN return EINTR. Safe from any thread."""
        if self.run_page.closed:
            return
        self.run_page[K.RUN_IMMEDIATE_EXIT] = 1
        if self.thread_id is not None and self.thread_id != threading.get_ident():
            try:
                signal.pthread_kill(self.thread_id, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def close(self):
        if not self.run_page.closed:
            self.run_page.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Segment:
    """struct kvm_segment, with field names as in <linux/kvm.h>."""

    FIELDS = ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g",
              "avl", "unusable", "padding")

    def __init__(self, **values):
        for name in self.FIELDS:
            setattr(self, name, values.get(name, 0))

    def pack(self):
        return K.SEGMENT.pack(*(getattr(self, name) for name in self.FIELDS))

    @classmethod
    def unpack_from(cls, buf, offset):
        return cls(**dict(zip(cls.FIELDS, K.SEGMENT.unpack_from(buf, offset))))

    def __repr__(self):
        return f"Segment(sel={self.selector:#x} base={self.base:#x} limit={self.limit:#x} type={self.type})"


class Sregs:
    """struct kvm_sregs as attributes: cs..ldt Segments, gdt/idt (base, limit),
    cr0..apic_base ints, interrupt_bitmap (4 ints)."""

    def __init__(self):
        for name in K.SEGMENT_NAMES:
            setattr(self, name, Segment())
        self.gdt = (0, 0)
        self.idt = (0, 0)
        for name in K.SREGS_CONTROL:
            setattr(self, name, 0)
        self.interrupt_bitmap = (0, 0, 0, 0)

    @classmethod
    def unpack(cls, buf):
        sregs, offset = cls(), 0
        for name in K.SEGMENT_NAMES:
            setattr(sregs, name, Segment.unpack_from(buf, offset))
            offset += K.SEGMENT.size
        sregs.gdt = K.DTABLE.unpack_from(buf, offset)
        sregs.idt = K.DTABLE.unpack_from(buf, offset + K.DTABLE.size)
        offset += 2 * K.DTABLE.size
        controls = struct.unpack_from("<7Q", buf, offset)
        for name, value in zip(K.SREGS_CONTROL, controls):
            setattr(sregs, name, value)
        sregs.interrupt_bitmap = struct.unpack_from("<4Q", buf, offset + 56)
        return sregs

    def pack(self):
        parts = [getattr(self, name).pack() for name in K.SEGMENT_NAMES]
        parts += [K.DTABLE.pack(*self.gdt), K.DTABLE.pack(*self.idt)]
        parts.append(struct.pack("<7Q", *(getattr(self, name) for name in K.SREGS_CONTROL)))
        parts.append(struct.pack("<4Q", *self.interrupt_bitmap))
        return b"".join(parts)
