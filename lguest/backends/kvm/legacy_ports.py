"""The few legacy PC devices a kernel pokes before (and besides) PCI.

#L:620 On /dev/lguest the guest kernel knew it was a guest and asked the hypervisor
# for its console and its reboot. On KVM it is a plain PC kernel, so we give it the
# smallest PC it accepts: an 8250 UART at 0x3F8 for console=ttyS0 and earlyprintk,
# the i8042 controller's reset line (write 0xFE to port 0x64) and the PCI reset
# control register at 0xCF9 (bit 2 starts a reset), both of which Linux's reboot
# tries, and a CMOS/RTC at 0x70/0x71 that answers the time and the memory size.
# The PIC, PIT and local APIC are in the kernel (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2).
# These classes do no I/O: output goes to an injected sink, the time comes from an
# injected clock, interrupts leave through an injected callable.
"""

import time

COM1_BASE = 0x3F8
COM1_IRQ = 4
I8042_COMMAND = 0x64
I8042_RESET = 0xFE
RESET_CONTROL = 0xCF9
RESET_CONTROL_RESET = 0x04
CMOS_INDEX = 0x70
CMOS_DATA = 0x71

# 8250 register offsets and bits (PC16550D data sheet).
THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_DATA_READY, LSR_THR_EMPTY, LSR_TRANSMITTER_EMPTY = 0x01, 0x20, 0x40
IER_RX, IER_THR = 0x01, 0x02
IIR_NONE, IIR_THR, IIR_RX, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
MCR_LOOP = 0x10


#L:621 The UART. Transmit is always instantly done: LSR says "holding register and
# transmitter empty", so a polling console (earlyprintk, the boot console) writes
# byte after byte with one exit each, and each byte goes straight to the sink. The
# interrupt-driven tty driver enables the THR-empty interrupt and waits for it, so
# enabling it (or writing a byte while it is enabled) raises IRQ 4 and IIR reports
# "THR empty" once. Scratch, IER, LCR, MCR and the divisor read back what was
# written, and loopback mode reflects MCR into MSR: Linux's autoconfig probes these
# before it believes a UART is there.
class Serial8250:
    def __init__(self, sink, raise_irq=None):
        self.sink = sink                    # callable(bytes)
        self.raise_irq = raise_irq or (lambda: None)
        self.regs = bytearray(8)
        self.divisor = 0
        self.fifo_enabled = False
        self.thr_interrupt = False
        self.input = bytearray()

    def feed(self, data):
        """Host input for the guest (RBR)."""
        self.input += data
        if self.regs[IER] & IER_RX:
            self.raise_irq()

    def read(self, offset):
        dlab = self.regs[LCR] & LCR_DLAB
        if offset == THR:
            if dlab:
                return self.divisor & 0xFF
            return self.input.pop(0) if self.input else 0
        if offset == IER:
            return (self.divisor >> 8) if dlab else self.regs[IER]
        if offset == IIR:
            return self._iir() | (IIR_FIFO if self.fifo_enabled else 0)
        if offset == LSR:
            return LSR_THR_EMPTY | LSR_TRANSMITTER_EMPTY | (LSR_DATA_READY if self.input else 0)
        if offset == MSR:
            return self._msr()
        return self.regs[offset]

    def _iir(self):
        if self.input and self.regs[IER] & IER_RX:
            return IIR_RX
        if self.thr_interrupt:
            self.thr_interrupt = False
            return IIR_THR
        return IIR_NONE

    def _msr(self):
        mcr = self.regs[MCR]
        if not mcr & MCR_LOOP:
            return 0xB0                     # DCD, DSR, CTS: a cable with someone there
        # loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
        return ((mcr & 1) << 5) | ((mcr & 2) << 3) | ((mcr & 4) << 4) | ((mcr & 8) << 4)

    def write(self, offset, value):
        value &= 0xFF
        dlab = self.regs[LCR] & LCR_DLAB
        if offset == THR and dlab:
            self.divisor = (self.divisor & 0xFF00) | value
        elif offset == IER and dlab:
            self.divisor = (self.divisor & 0xFF) | (value << 8)
        elif offset == THR:
            if not self.regs[MCR] & MCR_LOOP:
                self.sink(bytes([value]))
            self._thr_empty()
        elif offset == IER:
            was = self.regs[IER]
            self.regs[IER] = value & 0x0F
            if value & IER_THR and not was & IER_THR:
                self._thr_empty()
        elif offset == IIR:
            self.fifo_enabled = bool(value & 1)      # FCR
        elif offset in (LCR, MCR, SCR):
            self.regs[offset] = value
        # LSR and MSR are read-only: writes are dropped as a real 8250 drops them.

    def _thr_empty(self):
        if self.regs[IER] & IER_THR:
            self.thr_interrupt = True
            self.raise_irq()


#L:622 The CMOS RTC. Linux reads the wall clock at boot (status B says: 24-hour, BCD,
# status A: no update in progress, status D: battery fine) and some code reads the
# memory size from the BIOS area of the CMOS. Writes to the index select a register
# (bit 7 is the NMI mask, ignored); writes to data are dropped.
class Cmos:
    def __init__(self, mem_size, clock=time.gmtime):
        self.index = 0
        self.clock = clock
        self.mem_size = mem_size

    def write_index(self, value):
        self.index = value & 0x7F

    def read_data(self):
        now = self.clock()
        bcd = {0x00: now.tm_sec, 0x02: now.tm_min, 0x04: now.tm_hour,
               0x06: (now.tm_wday + 1) % 7 + 1, 0x07: now.tm_mday, 0x08: now.tm_mon,
               0x09: now.tm_year % 100, 0x32: now.tm_year // 100}
        if self.index in bcd:
            value = bcd[self.index]
            return ((value // 10) << 4) | (value % 10)
        return self._status_or_memory(self.index)

    def _status_or_memory(self, index):
        above_1m = max(0, min(self.mem_size, 64 << 20) - (1 << 20)) >> 10       # KiB
        above_16m = max(0, min(self.mem_size, 4 << 30) - (16 << 20)) >> 16      # 64 KiB
        table = {0x0A: 0x26, 0x0B: 0x02, 0x0C: 0x00, 0x0D: 0x80,
                 0x15: 640 & 0xFF, 0x16: 640 >> 8,
                 0x17: above_1m & 0xFF, 0x18: (above_1m >> 8) & 0xFF,
                 0x30: above_1m & 0xFF, 0x31: (above_1m >> 8) & 0xFF,
                 0x34: above_16m & 0xFF, 0x35: (above_16m >> 8) & 0xFF}
        return table.get(index, 0)


#L:623 Which port goes where. The PC's own ports are answered here and never reach
# the PCI bus; everything else (0xCF8/0xCFC and the unknown ports that read all ones)
# goes to the bus as on every backend. A reset request is reported, not performed:
# the backend turns it into RebootRequested. Port 0x501 is an exit-status port (QEMU's
# isa-debug-exit place): a guest writing N there ends with status N, which is how a
# test guest says "done, and this is how it went".
EXIT_PORT = 0x501


class LegacyPorts:
    def __init__(self, serial, cmos):
        self.serial = serial
        self.cmos = cmos
        self.reset_requested = False
        self.exit_status = None

    def claims(self, port):
        return (COM1_BASE <= port < COM1_BASE + 8 or port in (CMOS_INDEX, CMOS_DATA, RESET_CONTROL,
                                                              EXIT_PORT)
                or port == I8042_COMMAND)

    def read(self, port, size):
        """The value read; None means "not ours, ask the bus" (i8042 status: the bus)."""
        if COM1_BASE <= port < COM1_BASE + 8:
            return self.serial.read(port - COM1_BASE)
        if port == CMOS_DATA:
            return self.cmos.read_data()
        if port in (CMOS_INDEX, RESET_CONTROL, EXIT_PORT):
            return 0
        return None

    def write(self, port, size, value):
        """Handle a write; False means "not ours"."""
        if COM1_BASE <= port < COM1_BASE + 8:
            self.serial.write(port - COM1_BASE, value)
        elif port == CMOS_INDEX:
            self.cmos.write_index(value)
        elif port == CMOS_DATA:
            pass
        elif port == I8042_COMMAND:
            if value & 0xFF == I8042_RESET:
                self.reset_requested = True
        elif port == RESET_CONTROL:
            if size == 1 and value & RESET_CONTROL_RESET:
                self.reset_requested = True
        elif port == EXIT_PORT:
            self.exit_status = value & 0xFF
        else:
            return False
        return True
