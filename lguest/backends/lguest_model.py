"""An in-process model of the kernel side of /dev/lguest (drivers/lguest/lguest_user.c).

#L:530 No modern host has /dev/lguest (Linux removed it in 4.14), so the lguest
# backend would go untested. This is the other end of its wire, written from
# lguest_user.c and core.c's run_guest(): it answers the backend's os.pread and
# os.pwrite calls (inject model.open/pread/pwrite/close into LguestBackend) with the
# same bytes and the same errno the kernel gave:
#
#   write() before LHREQ_INITIALIZE, or an unknown request      EINVAL
#   a second LHREQ_INITIALIZE                                    EBUSY
#   any request once the guest is dead                           ENOENT
#   LHREQ_IRQ with irq >= LGUEST_IRQS                            EINVAL
#   LHREQ_GETREG/SETREG of a register lguest_arch_regptr() lacks ENOENT
#     (SETREG only for ebx ecx edx esi edi ebp eax eip esp)
#   LHREQ_TRAP of a trap the guest IDT cannot take               EINVAL
#   read() after GETREG                                          that register, one word
#   read() that sees the guest die                               ENOENT, then the reason
#   read() once the guest asked to reboot                        ERESTART, every time
#
# What the "guest" does when read() runs it is up to a guest program (the fake
# backend's simulated guest L:550, or a trace being replayed L:560): run(cpu) returns
# the next event, with cpu's registers, pending interrupts and re-injected traps
# there to look at and change.
"""

import errno
import struct
from dataclasses import dataclass, field

from .. import x86
from .lguest_abi import (ERESTART, LGUEST_IRQS, LHREQ_GETREG, LHREQ_INITIALIZE,
                         LHREQ_IRQ, LHREQ_SETREG, LHREQ_TRAP, PENDING)

SETTABLE = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "eip", "esp")
READABLE = SETTABLE + ("xds", "xes", "xfs", "xgs", "xcs", "eflags", "xss")
GUEST_KERNEL_CS = 0x61       # __KERNEL_CS | GUEST_PL(1)
GUEST_KERNEL_DS = 0x69
EFLAGS_IF_FIXED = 0x202
IDT_ENTRIES = 256


# -- what a guest program's run() may return --------------------------------------
@dataclass
class Trap:
    number: int
    insn: bytes = b""
    addr: int = 0


@dataclass
class Die:
    reason: str


@dataclass
class Reboot:
    pass


@dataclass
class Signal:
    """A signal arrived for the launcher while the guest ran: read() gives EINTR."""


@dataclass
class Cpu:
    """The state lguest keeps per guest CPU that the launcher can see or change."""
    regs: dict = field(default_factory=lambda: dict.fromkeys(READABLE, 0))
    irqs: set = field(default_factory=set)          # raised, not yet delivered
    reinjected: list = field(default_factory=list)  # LHREQ_TRAP numbers, in order
    memory_base: int = 0
    pfn_limit: int = 0
    device_limit: int = 0

    def take_interrupts(self):
        pending, self.irqs = sorted(self.irqs), set()
        return pending

    def take_reinjected(self):
        pending, self.reinjected = self.reinjected, []
        return pending


def _fail(code):
    raise OSError(code, __import__("os").strerror(code))


class LguestKernelModel:
    """One open /dev/lguest with one guest CPU, driven by a guest program."""

    FD = 1000   # what open() hands out; only used to check callers pass it back

    def __init__(self, guest, *, word_size=8):
        self.guest = guest
        self.word_size = word_size
        self.word = struct.Struct("<I" if word_size == 4 else "<Q")
        self.cpu = None          # None until LHREQ_INITIALIZE
        self.dead = None         # None, a reason string, or ERESTART
        self.reg_read = None     # register name after GETREG
        self.opened = False

    # -- the file operations ---------------------------------------------------------
    def open(self, path, flags):
        self.opened = True
        return self.FD

    def close(self, fd):
        self.opened = False

    def pwrite(self, fd, data, offset):
        words = [self.word.unpack_from(data, i)[0]
                 for i in range(0, len(data) - len(data) % self.word_size, self.word_size)]
        if not words:
            _fail(errno.EFAULT)          # get_user() of the request word failed
        request, args = words[0], words[1:]
        if request != LHREQ_INITIALIZE:
            if self.cpu is None or offset != 0:
                _fail(errno.EINVAL)
            if self.dead is not None:
                _fail(errno.ENOENT)      # "Once the Guest is dead, you can only read()"
        handler = {LHREQ_INITIALIZE: self._initialize, LHREQ_IRQ: self._send_irq,
                   LHREQ_GETREG: self._getreg_setup, LHREQ_SETREG: self._setreg,
                   LHREQ_TRAP: self._trap}.get(request)
        if handler is None:
            _fail(errno.EINVAL)
        return handler(args)

    def pread(self, fd, size, offset):
        if self.cpu is None or offset != 0:
            _fail(errno.EINVAL)
        if self.dead is not None:
            if self.dead == ERESTART:
                _fail(ERESTART)
            reason = self.dead.encode() + b"\0"
            return reason[:size]
        if self.reg_read is not None:
            #L:531 GETREG set cpu->reg_read; this read returns it (one unsigned long)
            # instead of running the guest.
            value, self.reg_read = self.cpu.regs[self.reg_read], None
            return self.word.pack(value)[:size]
        return self._run_guest(size)

    # -- the requests ----------------------------------------------------------------
    @staticmethod
    def _need(args, count):
        if len(args) < count:
            _fail(errno.EFAULT)

    def _initialize(self, args):
        if self.cpu is not None:
            _fail(errno.EBUSY)           # "if (file->private_data) return -EBUSY"
        self._need(args, 4)
        base, pfn_limit, start, device_limit = args[:4]
        cpu = Cpu(memory_base=base, pfn_limit=pfn_limit, device_limit=device_limit)
        # lguest_arch_setup_regs(): ring-1 segments, interrupts on, eip at the entry.
        cpu.regs.update(xcs=GUEST_KERNEL_CS, xds=GUEST_KERNEL_DS, xes=GUEST_KERNEL_DS,
                        xss=GUEST_KERNEL_DS, eflags=EFLAGS_IF_FIXED, eip=start)
        self.cpu = cpu
        return 4 * self.word_size

    def _send_irq(self, args):
        self._need(args, 1)
        if args[0] >= LGUEST_IRQS:
            _fail(errno.EINVAL)
        self.cpu.irqs.add(args[0])
        return 0

    def _getreg_setup(self, args):
        self._need(args, 1)
        name = x86.USER_REGS_NAMES.get(args[0])
        if name not in READABLE:
            _fail(errno.ENOENT)
        self.reg_read = name
        return 2 * self.word_size

    def _setreg(self, args):
        self._need(args, 2)
        name = x86.USER_REGS_NAMES.get(args[0])
        if name not in SETTABLE:
            _fail(errno.ENOENT)          # "we can't access all registers"
        self.cpu.regs[name] = args[1] & 0xFFFFFFFF
        return 3 * self.word_size

    def _trap(self, args):
        self._need(args, 1)
        if args[0] >= IDT_ENTRIES or not self.guest_accepts_trap(args[0]):
            _fail(errno.EINVAL)          # deliver_trap() returned false
        self.cpu.reinjected.append(args[0])
        return 0

    def guest_accepts_trap(self, number):
        accepts = getattr(self.guest, "accepts_trap", None)
        return accepts(number) if accepts else number < 32

    # -- running the guest -----------------------------------------------------------
    def _run_guest(self, size):
        event = self.guest.run(self.cpu)
        if isinstance(event, Trap):
            if size < PENDING.size:
                _fail(errno.EFAULT)
            return PENDING.pack(event.number, bytes(event.insn)[:7].ljust(7, b"\0"),
                                event.addr & 0xFFFFFFFF)
        if isinstance(event, Signal):
            _fail(errno.EINTR)
        if isinstance(event, Reboot):
            self.dead = ERESTART
            _fail(ERESTART)
        if isinstance(event, Die):
            self.dead = event.reason
            _fail(errno.ENOENT)
        raise TypeError(f"guest program returned {event!r}")
