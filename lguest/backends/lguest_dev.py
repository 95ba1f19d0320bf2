"""The real thing: a guest run by the lguest kernel module through /dev/lguest.

#L:520 The protocol is small. Requests are pwrite()s of an array of the host's
# `unsigned long` words, the first naming the request, at file offset = cpu id.
# Running the guest is a pread(): it returns a 12-byte struct lguest_pending
# (u8 trap; u8 insn[7]; u32 addr) when the guest trapped on something we must
# emulate, or fails with ENOENT (dead: the next read gives the reason), ERESTART
# (reboot) or EINTR (a signal: just run again). Registers go through GETREG (the
# next pread returns the register instead of running the guest) and SETREG.
#
# The words are the host's unsigned long: 4 bytes on every real lguest host (it was
# 32-bit x86 only), 8 on the machine running the tests. The word size is a parameter
# and os.open/os.pread/os.pwrite are injected, so the same code talks to the kernel
# or to the in-process model of lguest_user.c (L:530) in both word sizes.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from typing import TYPE_CHECKING, Callable

from ..errors import LauncherError
from .. import x86
from .base import MMIO, PIO, Backend, GuestDied, IoExit, RebootRequested

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from .base import Exit

from .lguest_abi import (DEVICE_PATH, ERESTART, LGUEST_IRQS, LHREQ_BREAK,  # noqa: F401
                         LHREQ_EVENTFD, LHREQ_GETDMA, LHREQ_GETREG, LHREQ_INITIALIZE,
                         LHREQ_IRQ, LHREQ_SETREG, LHREQ_TRAP, NATIVE_WORD, PAGE_SIZE,
                         PENDING, TRAP_GPF, TRAP_PAGE_FAULT)
ADDRESS = struct.Struct("<I")             # lguest_pending.addr, after trap and insn[7]
ADDRESS_OFFSET = 8
PLAN_CACHE_SIZE = 1024                    # distinct trapping instructions remembered


def pack_words(words, word_size):
    fmt = "<" + ("I" if word_size == 4 else "Q") * len(words)
    limit = 1 << (8 * word_size)
    for w in words:
        if not 0 <= w < limit:
            raise LauncherError(f"{w:#x} does not fit in a {word_size}-byte unsigned long")
    return struct.pack(fmt, *words)


def _warnx(message):
    print(f"lguest: {message}", file=sys.stderr)


class LguestBackend(Backend):
    """A guest on the lguest kernel module (or on anything speaking its protocol)."""

    name = "lguest"

    def __init__(self, path=DEVICE_PATH, *, word_size=NATIVE_WORD, cpu_id=0,
                 opener=os.open, pread=os.pread, pwrite=os.pwrite, closer=os.close,
                 warn=_warnx):
        if word_size not in (4, 8):
            raise ValueError(f"an unsigned long is 4 or 8 bytes, not {word_size}")
        self.word_size = word_size
        self.cpu_id = cpu_id
        # A trap costs ~5 register round trips (L:525): their request words are
        # packed once here, not on every trap.
        self._getreg_requests = {name: pack_words((LHREQ_GETREG, offset), word_size)
                                 for name, offset in x86.USER_REGS_OFFSETS.items()}
        self._setreg_words = struct.Struct("<" + ("I" if word_size == 4 else "Q") * 3)
        self._pread, self._pwrite, self._closer = pread, pwrite, closer
        self.warn = warn
        self.path = path
        self._plans = {}                  # trap + instruction bytes -> Plan (L:525)
        self._exit = TrapExit(self)
        try:
            self.fd = opener(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise LauncherError(f"cannot open {path}: {e.strerror} (the lguest module"
                                " is needed: Linux dropped lguest in 4.14)") from e

    def record_to(self, sink: Callable[[dict], None],
                  memory_writes: Callable[[], list] | None = None) -> None:
        """Record this run as a trap stream (L:560): every finished record goes to
        `sink`. Call before initialize() so the stream starts at LHREQ_INITIALIZE."""
        from .tracefile import Recorder
        self.recorder = Recorder(self._pread, self._pwrite, sink, word_size=self.word_size,
                                 memory_writes=memory_writes)
        self._pread, self._pwrite = self.recorder.pread, self.recorder.pwrite

    # -- the request words ---------------------------------------------------------
    def _request(self, what, *words):
        data = pack_words(words, self.word_size)
        try:
            return self._pwrite(self.fd, data, self.cpu_id)
        except OSError as e:
            raise LauncherError(f"{what}: {e.strerror}") from e

    def initialize(self, memory: GuestMemory, entry: int, *, mmio_limit: int | None = None,
                   boot_params: int = 0) -> None:
        #L:521 tell_kernel(): the base of guest "physical" memory in our address space,
        # the top page the guest may use, its entry point, and the page past the MMIO
        # window (the guest gets a page fault, trap 14, for any access up to there).
        # boot_params needs no word: lguest guests find them at guest-physical 0.
        mmio_limit = memory.size if mmio_limit is None else mmio_limit
        self._request(f"Writing to {self.path}", LHREQ_INITIALIZE, memory.host_address,
                      memory.size // PAGE_SIZE, entry,
                      (mmio_limit + PAGE_SIZE - 1) // PAGE_SIZE)

    def get_reg(self, name: str) -> int:
        # GETREG, then a read that returns the register instead of running the guest.
        try:
            self._pwrite(self.fd, self._getreg_requests[name], self.cpu_id)
            data = self._pread(self.fd, self.word_size, self.cpu_id)
        except OSError as e:
            raise LauncherError(f"Getting register {x86.USER_REGS_OFFSETS[name]}: "
                                f"{e.strerror}") from e
        if len(data) != self.word_size:
            raise LauncherError(f"Reading register {x86.USER_REGS_OFFSETS[name]}: "
                                f"got {len(data)} bytes")
        return int.from_bytes(data, "little") & 0xFFFFFFFF

    def set_reg(self, name: str, value: int) -> None:
        offset = x86.USER_REGS_OFFSETS[name]
        request = self._setreg_words.pack(LHREQ_SETREG, offset, value & 0xFFFFFFFF)
        try:
            self._pwrite(self.fd, request, self.cpu_id)
        except OSError as e:
            raise LauncherError(f"Setting register {offset}: {e.strerror}") from e

    def interrupt(self, irq: int) -> None:
        #L:528 A device thread may finish a request after the guest has died or asked
        # to reboot, before the launcher has stopped the threads: the kernel then
        # refuses every request but read() with ENOENT ("Once the Guest is dead, you
        # can only read() why it died"). That interrupt has no one to go to, and the
        # run loop reports the death, so it is dropped. (Found on a real lguest host:
        # a reboot ended in a traceback, a queue thread's failed LHREQ_IRQ racing the
        # launcher's clean-up. The seed's device threads were separate processes, and
        # their err(1) there was never seen.)
        try:
            self._request(f"Triggering irq {irq}", LHREQ_IRQ, irq)
        except LauncherError as e:
            if getattr(e.__cause__, "errno", None) != errno.ENOENT:
                raise

    def reinject(self, trap: int) -> None:
        self._request(f"Reinjecting trap {trap}", LHREQ_TRAP, trap)

    def close(self) -> None:
        if getattr(self, "recorder", None) is not None:
            self.recorder.finish()
            self.recorder = None
        if self.fd is not None:
            self._closer(self.fd)
            self.fd = None

    # -- running -------------------------------------------------------------------
    def run(self) -> Exit:
        #L:522 run_guest(): read to run the guest. A trap we emulate entirely
        # ourselves (cli, or one we hand back) never reaches the launcher: we just
        # run again, as the seed's loop did.
        while True:
            try:
                data = self._pread(self.fd, PENDING.size, self.cpu_id)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return GuestDied(self._death_reason())
                if e.errno == ERESTART:
                    return RebootRequested()
                raise LauncherError(f"Running guest failed: {e.strerror}") from e
            if len(data) != PENDING.size:
                raise LauncherError(f"Running guest failed: short read of {len(data)} bytes")
            #L:525 A boot is ~141,000 traps from a few dozen instructions (the PIT
            # calibration alone reads port 0x42 ~100,000 times from one place), so each
            # distinct trap number + 7 instruction bytes is decoded once, into a Plan.
            # Everything that depends on the guest's state (its privilege, %dx, the
            # registers) is still read on every trap; only the decoding is reused.
            plan = self._plans.get(data[:8])
            if plan is None:
                plan = self._plan(data)
            if plan.trap == TRAP_GPF:
                exit_ = self._emulate_port(plan, data)
            else:
                exit_ = self._emulate_mmio(plan, data)
            if exit_ is not None:
                return exit_

    def _plan(self, data):
        trap, insn_bytes, addr = PENDING.unpack(data)
        if trap == TRAP_GPF:
            insn = x86.decode_port_insn(insn_bytes)
        elif trap == TRAP_PAGE_FAULT:
            insn = x86.decode_mmio_insn(insn_bytes)
        else:
            raise LauncherError(f"Unknown trap {trap} addr {addr:#08x}")
        plan = Plan(trap, insn_bytes, insn)
        if len(self._plans) >= PLAN_CACHE_SIZE:
            self._plans.clear()          # a guest jumping about: never grow without bound
        self._plans[data[:8]] = plan
        return plan

    def _death_reason(self):
        try:
            reason = self._pread(self.fd, 1023, self.cpu_id)
        except OSError as e:
            return f"guest died (reason unreadable: {e.strerror})"
        return reason.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _advance(self, length):
        """Step eip past the emulated instruction."""
        self.set_reg("eip", self.get_reg("eip") + length)

    def _emulate_port(self, plan, data):
        #L:523 emulate_insn(): only the guest kernel (CPL 1, L:501) may do port I/O
        # through us; anything we do not recognise goes back to the guest as the
        # general protection fault it was.
        xcs = self.get_reg("xcs")
        insn = plan.insn
        if insn is None or (xcs & 3) != x86.GUEST_KERNEL_CPL:     # x86.privileged_enough
            self._refuse_port(plan, xcs)
            return None
        if plan.operand is None:                 # cli
            self._advance(insn.length)
            return None
        port = (self.get_reg("edx") & 0xFFFF) if insn.port_in_dx else insn.port
        return self._exit.fill(plan, PIO, port)

    def _refuse_port(self, plan, xcs):
        why = "not emulated" if x86.privileged_enough(xcs) else f"from CPL {xcs & 3}"
        self.warn(f"GPF at {self.get_reg('eip'):#x} ({why}): "
                  + " ".join(f"{c:02x}" for c in plan.insn_bytes[:4]) + ", re-injecting trap 13")
        self.reinject(TRAP_GPF)

    def _emulate_mmio(self, plan, data):
        #L:524 emulate_mmio(): a mov to or from the device window. For a store the
        # value comes from the register the ModRM byte names (ah..bh for bytes);
        # for a load we write only the bits the instruction loads.
        addr = ADDRESS.unpack_from(data, ADDRESS_OFFSET)[0]
        if plan.insn is None:
            self.warn(f"Unknown MMIO instruction touching {addr:#08x}: "
                      + " ".join(f"{c:02x}" for c in plan.insn_bytes[:4])
                      + f" at {self.get_reg('eip')}")
            self.reinject(TRAP_PAGE_FAULT)
            return None
        return self._exit.fill(plan, MMIO, addr)

    def _reject(self, exit_):
        if exit_.space == PIO:
            self.warn(f"Attempt to {'write to' if exit_.is_write else 'read from'} "
                      f"port {exit_.addr} ({exit_.plan.operand.mask:#x} mask)")
            self.reinject(TRAP_GPF)
        else:
            self.warn(f"MMIO touching {exit_.addr:#08x} (not a device)")
            self.reinject(TRAP_PAGE_FAULT)


class Plan:
    """One decoded trapping instruction: what run() keeps per distinct trap + bytes."""

    __slots__ = ("trap", "insn_bytes", "insn", "operand", "is_write", "fetch_old", "length")

    def __init__(self, trap, insn_bytes, insn):
        self.trap = trap
        self.insn_bytes = insn_bytes
        self.insn = insn                  # None: not an instruction we emulate
        self.operand = x86.operand(insn) if insn is not None else None
        self.is_write = insn is not None and insn.is_write
        self.length = insn.length if insn is not None else 0
        # Whether the operand's register must be fetched (a store's value, or the bits
        # a narrow load or in keeps).
        self.fetch_old = self.operand is not None and self.operand.reg in x86.registers_needed(insn)


class TrapExit(IoExit):
    """The IoExit of the trap being emulated. One per backend, refilled by every trap
    (like KVM's shared kvm_run): it is valid until the next run(). complete() finishes
    the instruction (the operand's register for a read, then eip); reject() hands the
    trap back to the guest."""

    def __init__(self, backend):
        super().__init__(PIO, 0, 0, False)
        self.backend = backend
        self.plan = None
        self.old = 0                      # the operand register's value, if fetched

    def fill(self, plan, space, addr):
        self.plan, self.space, self.addr = plan, space, addr
        self.size, self.is_write = plan.insn.width, plan.is_write
        self.old = self.backend.get_reg(plan.operand.reg) if plan.fetch_old else 0
        self.value = plan.operand.read(self.old) if plan.is_write else 0
        return self

    def complete(self, value=0):
        backend, plan = self.backend, self.plan
        if not plan.is_write:
            # "they expect the result to be read into %eax": only the operand's bits change.
            backend.set_reg(plan.operand.reg, plan.operand.merge(self.old, value))
        backend._advance(plan.length)

    def reject(self):
        self.backend._reject(self)
