"""KvmBackend: the Backend interface (L:001) on /dev/kvm.

#L:640 The lguest backend decodes the faulting instruction to learn what the guest
# wanted; KVM has already done that and tells us in kvm_run: for a port access the
# port, width, direction, a repeat count and where in the page the data sits; for
# MMIO the address, width, direction and up to 8 data bytes. So run() is a loop:
# KVM_RUN, read the exit, answer the PC's own ports here (L:623), and hand anything
# for the PCI bus to the launcher as an IoExit whose complete() puts a read's value
# where KVM will pick it up on the next KVM_RUN (the data offset for ports, the data
# bytes for MMIO). Reads must be completed before the next run(), which is how the
# launcher's loop (L:002) works anyway.
"""

import logging
import os
import sys

from ...errors import LauncherError
from ...pci.bus import UnclaimedAccess
from ..base import MMIO, PIO, Backend, GuestDied, IoExit, RebootRequested
from . import boot
from . import ioctls as K
from .legacy_ports import COM1_IRQ, Cmos, LegacyPorts, Serial8250
from .kicks import IoeventfdRunner
from .msix import MsixTable
from .vm import KvmSystem

log = logging.getLogger("lguest.kvm")

TSS_ADDR = 0xFFFBD000           # three pages just below the BIOS, as QEMU and kvmtool place it
PVM_MODULE = "/sys/module/kvm_pvm"
CPUID_1_ECX_CMPXCHG16B = 1 << 13
_warned_pvm = False

_32BIT_REGS = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi",
               "edi": "rdi", "esp": "rsp", "ebp": "rbp", "eip": "rip", "eflags": "rflags"}
_SEGMENT_REGS = {"xcs": "cs", "xds": "ds", "xes": "es", "xfs": "fs", "xgs": "gs", "xss": "ss"}


#L:641 KVM-PVM: some hosts offer /dev/kvm without hardware virtualization; the guest's
# ring 0 is then emulated, thousands of times slower than native, and a stock kernel
# takes minutes to print its first line. That is worth one plain sentence, once.
def is_pvm_host(module_path=PVM_MODULE):
    return os.path.exists(module_path)


def warn_if_pvm(stream=None, module_path=PVM_MODULE):
    global _warned_pvm
    if _warned_pvm or not is_pvm_host(module_path):
        return False
    _warned_pvm = True
    print("lguest: warning: /dev/kvm on this host is KVM-PVM (no hardware virtualization): "
          "a guest kernel will run very slowly here (minutes to boot). "
          "Try `lguest run` (User-Mode Linux) instead.", file=stream or sys.stderr, flush=True)
    return True


def guest_cpuid(entries, pvm):
    """The supported CPUID, minus what the PVM ring-0 emulator cannot run (lock
    cmpxchg16b, per the facts measured on such a host)."""
    result = []
    for function, index, flags, eax, ebx, ecx, edx in entries:
        if pvm and function == 1:
            ecx &= ~CPUID_1_ECX_CMPXCHG16B
        result.append((function, index, flags, eax, ebx, ecx, edx))
    return result


def _stdout_sink(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class KvmBackend(Backend):
    """One VM with one vCPU on /dev/kvm. Options: `console` (callable(bytes) for the
    UART), `irqchip` (in-kernel PIC/IOAPIC/LAPIC and PIT; without it a `hlt` exits to
    us, which tiny test guests use), `msix` (give each device MSI-X), `quiet` (no PVM
    warning)."""

    name = "kvm"
    boot_profile = "pc"

    def __init__(self, path="/dev/kvm", *, console=None, irqchip=True, msix=True, quiet=False):
        self.pvm = is_pvm_host()
        if not quiet:
            warn_if_pvm()
        self.system = KvmSystem(path)
        self.vm = self.vcpu = None
        try:
            self._create(irqchip)
        except BaseException:
            self.close()
            raise
        self.irqchip = irqchip
        self.msix = msix
        self.serial = Serial8250(console or _stdout_sink, raise_irq=lambda: self.interrupt(COM1_IRQ))
        self.ports = None
        self.bus = None
        self.memory = None
        self.msix_tables = []
        self._stopping = False

    def _create(self, irqchip):
        self.vm = self.system.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        if irqchip:
            self.vm.create_irqchip()
            self.vm.create_pit2()
        self.vcpu = self.vm.create_vcpu()
        self.vcpu.set_cpuid(guest_cpuid(self.system.supported_cpuid(), self.pvm))

    #L:642 Binding the devices. Interrupt lines go to the in-kernel irqchip; each
    # device gets an MSI-X table (L:630); and each queue's kick, a 16-bit write of the
    # queue index to the device's notify register, is bound with KVM_IOEVENTFD to the
    # eventfd the device's threaded runner waits on (L:650), so a kick wakes the
    # queue's thread from inside the kernel and the vCPU never leaves KVM_RUN.
    def attach_bus(self, bus):
        bus.irq_sink = self.raise_line
        bus.irq_lower_sink = self.lower_line
        self.bus = bus
        for transport in bus.devices:
            if self.msix and self.irqchip:
                table = MsixTable(len(transport.device.queue_names) + 1, self.vm.signal_msi)
                table.install(bus, transport)
                self.msix_tables.append(table)
            if hasattr(transport.runner, "kick_fd"):
                transport.runner = IoeventfdRunner(transport.runner, self.vm,
                                                   transport.notify_address)

    def initialize(self, memory, entry, *, mmio_limit=None, boot_params=0, mode=None):
        """Register `memory` as guest RAM and set the vCPU up to start at `entry`.
        `mode` is "long", "protected" or "real"; by default long mode, except a
        kernel entered at its 32-bit code32_start (L:613)."""
        if memory.size > TSS_ADDR:
            raise LauncherError(f"{memory.size >> 20} MiB of guest memory would cover the "
                                f"TSS at {TSS_ADDR:#x}: at most {TSS_ADDR >> 20} MiB on KVM")
        self.memory = memory
        self.vm.add_memory(0, memory.size, memory.host_address)
        self.ports = LegacyPorts(self.serial, Cmos(memory.size))
        mode = mode or self._guess_mode(memory, entry, boot_params)
        if mode == "long":
            boot.enter_long_mode(self.vcpu, memory, entry, boot_params,
                                 limit=max(memory.size, mmio_limit or 0))
        elif mode == "protected":
            boot.enter_protected_mode(self.vcpu, memory, entry, boot_params)
        elif mode == "real":
            boot.enter_real_mode(self.vcpu, entry)
        else:
            raise LauncherError(f"unknown KVM entry mode {mode!r} (long, protected or real)")
        self.mode = mode

    @staticmethod
    def _guess_mode(memory, entry, boot_params):
        # setup_header.code32_start lives at 0x214 of the zero page: a kernel entered
        # there is entered by the 32-bit protocol.
        if boot_params and entry == memory.read_u32(boot_params + 0x214):
            return "protected"
        return "long"

    # -- running --------------------------------------------------------------------------
    def run(self):
        while True:
            reason = self.vcpu.run()
            if reason == K.EXIT_IO:
                exit_ = self._port_exit()
            elif reason == K.EXIT_MMIO:
                exit_ = self._mmio_exit()
            elif reason == K.EXIT_INTR:
                exit_ = GuestDied("stopped by the launcher") if self._stopping else None
            else:
                exit_ = self._final_exit(reason)
            if exit_ is not None:
                return exit_

    def stop(self):
        """Make run() return GuestDied("stopped ...") soon; callable from any thread."""
        self._stopping = True
        self.vcpu.stop()

    #L:643 Port exits. kvm_run.io says direction, size, port, count and the offset of
    # the data in the kvm_run mapping. A `rep ins/outs` brings count > 1 items at
    # once; Linux uses none on our ports, so those are served here item by item, the
    # bus's answer written straight into the data area.
    def _port_exit(self):
        direction, size, port, count, offset = K.RUN_IO.unpack_from(self.vcpu.run_page, K.RUN_UNION)
        page = self.vcpu.run_page
        is_write = direction == K.IO_OUT
        if count != 1:
            self._string_io(port, size, count, offset, is_write)
            return None
        value = int.from_bytes(page[offset:offset + size], "little") if is_write else 0
        if self.ports.claims(port):
            handled = self._legacy_port(port, size, is_write, value, offset)
            if handled is not None:
                return handled or None
        def complete(result, offset=offset, size=size):
            if not is_write:
                page[offset:offset + size] = (result & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return IoExit(PIO, port, size, is_write, value, _complete=complete,
                      _reject=lambda: complete((1 << (8 * size)) - 1))

    def _legacy_port(self, port, size, is_write, value, offset):
        """Serve a PC port: an Exit to return, False when done, None for "the bus"."""
        if is_write:
            self.ports.write(port, size, value)
            if self.ports.reset_requested:
                self.ports.reset_requested = False
                return RebootRequested()
            if self.ports.exit_status is not None:
                return GuestDied(f"guest wrote exit status {self.ports.exit_status}",
                                 status=self.ports.exit_status)
            return False
        result = self.ports.read(port, size)
        if result is None:
            return None
        self.vcpu.run_page[offset:offset + size] = (result & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return False

    def _string_io(self, port, size, count, offset, is_write):
        page = self.vcpu.run_page
        for i in range(count):
            at = offset + i * size
            value = int.from_bytes(page[at:at + size], "little") if is_write else 0
            if self.ports.claims(port) and (is_write or self.ports.read(port, size) is not None):
                result = self.ports.write(port, size, value) if is_write else self.ports.read(port, size)
            elif self.bus is not None:
                try:
                    result = self.bus.access(PIO, port, size, is_write, value)
                except UnclaimedAccess:
                    result = (1 << (8 * size)) - 1
            else:
                result = (1 << (8 * size)) - 1
            if not is_write:
                page[at:at + size] = (result & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def _mmio_exit(self):
        address, data, length, is_write = K.RUN_MMIO.unpack_from(self.vcpu.run_page, K.RUN_UNION)
        value = int.from_bytes(data[:length], "little") if is_write else 0
        page = self.vcpu.run_page

        def complete(result):
            if not is_write:
                page[K.RUN_MMIO_DATA:K.RUN_MMIO_DATA + length] = (
                    result & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
        return IoExit(MMIO, address, length, bool(is_write), value, _complete=complete,
                      _reject=lambda: complete((1 << (8 * length)) - 1))

    #L:644 The ways a guest ends. `hlt` reaches us only without the in-kernel irqchip
    # (with it, KVM waits in the kernel for an interrupt, as a CPU would): a halted test
    # guest is finished. A triple fault (KVM_EXIT_SHUTDOWN) would reset a PC; here it
    # nearly always means a guest that crashed before it could print why, so it ends
    # the run with that said rather than rebooting into the same crash. Linux's own
    # reboot goes through the i8042 or 0xCF9 first (L:623). KVM_EXIT_INTERNAL_ERROR
    # with suberror 1 is an instruction KVM could not emulate: on KVM-PVM, a known gap.
    def _final_exit(self, reason):
        page = self.vcpu.run_page
        if reason == K.EXIT_HLT:
            return GuestDied("Guest halted", status=0)
        if reason == K.EXIT_SHUTDOWN:
            return GuestDied(f"Guest triple-faulted (KVM_EXIT_SHUTDOWN) at rip {self._rip()}")
        if reason == K.EXIT_SYSTEM_EVENT:
            kind = K.RUN_SYSTEM_EVENT.unpack_from(page, K.RUN_UNION)[0]
            if kind == K.SYSTEM_EVENT_RESET:
                return RebootRequested()
            if kind == K.SYSTEM_EVENT_SHUTDOWN:
                return GuestDied("Guest powered off", status=0)
            return GuestDied(f"Guest crashed (KVM system event {kind})")
        if reason == K.EXIT_INTERNAL_ERROR:
            suberror, _ = K.RUN_INTERNAL.unpack_from(page, K.RUN_UNION)
            what = K.INTERNAL_ERROR_SUBERRORS.get(suberror, "unknown")
            hint = " (KVM-PVM's ring-0 emulator has gaps)" if self.pvm else ""
            return GuestDied(f"KVM internal error: {what} (suberror {suberror}) at rip "
                             f"{self._rip()}{hint}")
        if reason == K.EXIT_FAIL_ENTRY:
            code = K.RUN_FAIL_ENTRY.unpack_from(page, K.RUN_UNION)[0]
            return GuestDied(f"KVM could not enter the guest (hardware reason {code:#x})")
        return GuestDied(f"unexpected KVM exit reason {reason} at rip {self._rip()}")

    def _rip(self):
        return f"{self.vcpu.get_regs()['rip']:#x}"

    # -- registers and interrupts -----------------------------------------------------
    def get_reg(self, name):
        if name in _SEGMENT_REGS:
            return getattr(self.vcpu.get_sregs(), _SEGMENT_REGS[name]).selector
        full = _32BIT_REGS.get(name, name)
        value = self.vcpu.get_regs()[full]
        return value & 0xFFFFFFFF if name in _32BIT_REGS else value

    def set_reg(self, name, value):
        full = _32BIT_REGS.get(name, name)
        if full not in K.REG_NAMES:
            raise LauncherError(f"cannot set register {name!r} on KVM")
        self.vcpu.set_regs({full: value})

    def interrupt(self, irq):
        """Pulse an interrupt line of the in-kernel PIC/IOAPIC (safe from any thread):
        an edge, as the UART's ISA line is."""
        if self.irqchip and self.vm is not None:
            self.vm.pulse_irq(irq)

    #L:645 A PCI device's INTx line is a level (L:406): raised when the device
    # interrupts and held until the driver reads ISR, then lowered. A pulse can be lost
    # by a level-triggered IOAPIC pin that samples the line after it fell.
    def raise_line(self, irq):
        if self.irqchip and self.vm is not None:
            self.vm.irq_line(irq, 1)

    def lower_line(self, irq):
        if self.irqchip and self.vm is not None:
            self.vm.irq_line(irq, 0)

    def close(self):
        if self.vm is not None:
            self.vm.close()
            self.vm = self.vcpu = None
        if self.system is not None:
            self.system.close()
            self.system = None
