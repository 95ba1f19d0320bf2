"""The fake backend: the /dev/lguest backend over the kernel model, with a simulated guest.

#L:550 With no /dev/lguest and no usable KVM, we can still run the whole launcher:
# the fake backend *is* the lguest backend (L:520), talking to the in-process model
# of the kernel (L:530), whose guest is simulated. The simulated guest runs a
# scenario (normally the guest-side virtio-PCI driver, L:570) on its own thread;
# every port or MMIO access the scenario makes is turned into what a real lguest
# guest produces: a trap 13 or 14 carrying real x86 bytes (in/out with an immediate
# or %dx port, movs with varied ModRM forms and registers, ah..bh included) and the
# register state that instruction needs. The launcher decodes it, goes to the bus,
# writes the result register and advances eip, and the guest checks all of that
# before its access returns: a wrong register, a clobbered upper half or a wrong
# eip kills it with a reason. Threads hand over strictly in turn, so a run is
# deterministic for a given seed.
#
# Recording (L:560) wraps the model's wire; replay swaps the simulated guest for a
# ReplayGuest and compares the launcher's answers record by record.
"""

from __future__ import annotations

import queue
import random
import threading
import traceback
from typing import TYPE_CHECKING, Callable

from .. import x86
from ..errors import GuestError, LguestError
from ..memory import Memory
from .base import MMIO, GuestDied
from .lguest_dev import LguestBackend
from .lguest_model import GUEST_KERNEL_CS, Die, LguestKernelModel, Reboot, Trap
from . import tracefile

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from .base import Exit

TEXT_BASE = 0xC1000000      # where the simulated guest kernel's "code" lives
USER_CS = 0x73              # ring 3: a guest process


class GuestStopped(Exception):
    """The launcher closed the backend while the simulated guest was waiting."""


class GuestOops(LguestError):
    """The simulated guest saw the launcher do the wrong thing (or a trap came back)."""


class TrackingMemory(Memory):
    """The guest's view of its memory, noting where it wrote (for trap streams)."""

    def __init__(self, memory):
        self.inner = memory
        self.size = memory.size
        self.dirty = []

    def _locate(self, addr, length):
        return self.inner._locate(addr, length)

    def view(self, addr, length):
        self.dirty.append((addr, length))
        return super().view(addr, length)

    def write(self, addr, data):
        self.dirty.append((addr, len(data)))
        super().write(addr, data)

    def _put(self, fmt, addr, value):
        self.dirty.append((addr, fmt.size))
        super()._put(fmt, addr, value)

    def take_writes(self):
        """Merged dirty ranges since the last call, with their current contents."""
        spans = sorted(self.dirty)
        self.dirty = []
        merged = []
        for addr, length in spans:
            if merged and addr <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], addr + length)
            elif length:
                merged.append([addr, addr + length])
        return [(lo, self.inner.read(lo, hi - lo)) for lo, hi in merged]


class SimulatedGuest:
    """The guest program the kernel model runs: a scenario on its own thread.

    `scenario(cpu_io)` gets an object with io(space, addr, size, is_write, value),
    memory, log(text) and on_interrupt (settable); it returns a closing sentence.
    """

    def __init__(self, scenario, *, seed=0, log=None):
        self.scenario = scenario
        self.random = random.Random(seed)
        self.log = log or (lambda text: None)
        self.memory = None
        self.on_interrupt = None
        self.regs = {}
        self.interrupts_seen = 0
        self.traps = 0
        self.outcome = None            # (status, reason) once finished
        self._to_launcher = queue.Queue()
        self._to_guest = queue.Queue()
        self._thread = None
        self._pending_irqs = []
        self._in_handler = False

    # -- the launcher's side (called from the model's read()) -----------------------
    def run(self, cpu):
        if self._thread is None:
            self.regs = dict(cpu.regs)
            self._thread = threading.Thread(target=self._main, name="simulated-guest", daemon=True)
            self._thread.start()
        elif self.outcome is None:
            self._to_guest.put((dict(cpu.regs), cpu.take_interrupts(), cpu.take_reinjected()))
        else:
            return Die(self.outcome[1])
        event, regs = self._to_launcher.get()
        cpu.regs.update(regs)
        return event

    def stop(self):
        if self._thread is not None and self.outcome is None:
            self._to_guest.put(None)
            self._thread.join(timeout=5)

    def _main(self):
        try:
            reason = self.scenario(self)
            self.outcome = (0, reason or "the simulated guest finished")
        except GuestStopped:
            self.outcome = (1, "stopped by the launcher")
            return
        except GuestError as e:
            self.outcome = (1, f"the guest driver met a device error: {e}")
        except LguestError as e:
            self.outcome = (1, str(e))
        except Exception as e:   # a bug in a scenario: say where, as a kernel oops would
            tb = traceback.extract_tb(e.__traceback__)[-1]
            self.outcome = (1, f"simulated guest crashed: {type(e).__name__}: {e} "
                               f"({tb.filename.rsplit('/', 1)[-1]}:{tb.lineno})")
        self._to_launcher.put((Die(self.outcome[1]), {}))

    # -- the guest's side ----------------------------------------------------------
    def _trap(self, trap, expect_reinject=False):
        """Deliver one trap to the launcher and wait for the guest to run again."""
        self.traps += 1
        self._to_launcher.put((trap, dict(self.regs)))
        message = self._to_guest.get()
        if message is None:
            raise GuestStopped()
        regs, irqs, reinjected = message
        self.regs = regs
        self._pending_irqs += irqs
        if reinjected and not expect_reinject:
            raise GuestOops(f"trap {reinjected[0]} came back at eip {self.regs['eip']:#x}: "
                            "the launcher could not emulate it")
        return reinjected

    def _deliver_interrupts(self):
        if self._in_handler or not self._pending_irqs:
            return
        self._in_handler = True
        try:
            while self._pending_irqs:
                irqs, self._pending_irqs = self._pending_irqs, []
                self.interrupts_seen += len(irqs)
                if self.on_interrupt:
                    for irq in irqs:
                        self.on_interrupt(irq)
        finally:
            self._in_handler = False

    def io(self, space, addr, size, is_write, value=0):
        """One access by the guest's driver, made as an lguest guest would make it."""
        if space == MMIO:
            result = self._mmio(addr, size, is_write, value)
        else:
            result = self._port(addr, size, is_write, value)
        self._deliver_interrupts()
        return result

    def _new_eip(self):
        eip = TEXT_BASE + self.random.randrange(0, 1 << 20)
        self.regs.update(eip=eip, xcs=GUEST_KERNEL_CS)
        return eip

    def _garbage(self):
        return self.random.getrandbits(32)

    def _check_eip(self, eip, insn):
        if self.regs["eip"] != eip + insn.length:
            raise GuestOops(f"after `{insn.describe()}` eip is {self.regs['eip']:#x}, "
                            f"expected {eip + insn.length:#x}")

    def _pad(self, code):
        return (code + bytes(self.random.getrandbits(8) for _ in range(7)))[:7]

    def _port(self, port, size, is_write, value):
        mask = x86.MASKS[size]
        imm = port < 0x100 and self.random.random() < 0.5
        code = x86.encode_port("out" if is_write else "in", size, port if imm else None)
        insn = x86.decode_port_insn(code)
        eip = self._new_eip()
        eax = self._garbage()
        if is_write:
            eax = (eax & ~mask) | (value & mask)
        self.regs["eax"] = eax
        if not imm:
            self.regs["edx"] = (self._garbage() & 0xFFFF0000) | port
        self._trap(Trap(13, self._pad(code)))
        self._check_eip(eip, insn)
        if (self.regs["eax"] & ~mask & 0xFFFFFFFF) != (eax & ~mask & 0xFFFFFFFF):
            raise GuestOops(f"`{insn.describe()}` changed bits of eax outside the operand")
        return 0 if is_write else self.regs["eax"] & mask

    def _mmio(self, addr, size, is_write, value):
        reg = self.random.choice([0, 1, 2, 3, 5, 6, 7] if size != 1 else range(8))
        mod = self.random.randrange(3)
        rm = self.random.randrange(8)
        sib = self.random.getrandbits(8) if rm == 4 else None
        code = x86.encode_mov("store" if is_write else "load", size, reg, mod, rm, sib,
                              self._garbage())
        insn = x86.decode_mmio_insn(self._pad(code))
        eip = self._new_eip()
        for name in x86.REG_NAMES:
            if name != "esp":
                self.regs[name] = self._garbage()
        if is_write:
            name, merged = x86.merge_register(self.regs, reg, size, value)
            self.regs[name] = merged
        before = dict(self.regs)
        self._trap(Trap(14, self._pad(code), addr))
        self._check_eip(eip, insn)
        if is_write:
            return 0
        result = x86.read_register(self.regs, reg, size)
        name, expected = x86.merge_register(before, reg, size, result)
        if self.regs[name] != expected:
            raise GuestOops(f"`{insn.describe()}` left {name} = {self.regs[name]:#x}, "
                            f"expected {expected:#x}")
        return result

    def privilege_probe(self):
        """A guest *process* doing `in`: the launcher must hand the GPF back (L:501)."""
        code = x86.encode_port("in", 1, 0x70)
        self._new_eip()
        self.regs["xcs"] = USER_CS
        returned = self._trap(Trap(13, self._pad(code)), expect_reinject=True)
        if returned != [13]:
            raise GuestOops(f"a ring-3 `in` was emulated instead of faulting (got {returned})")
        self.regs["xcs"] = GUEST_KERNEL_CS

    def reboot(self):
        """LHCALL_SHUTDOWN with LGUEST_SHUTDOWN_RESTART: the launcher must re-exec."""
        self._to_launcher.put((Reboot(), dict(self.regs)))
        self._to_guest.get()
        raise GuestStopped()

    def cli(self):
        """`cli`, which the launcher skips (L:502)."""
        eip = self._new_eip()
        self._trap(Trap(13, self._pad(b"\xfa")))
        if self.regs["eip"] != eip + 1:
            raise GuestOops("`cli` was not skipped")


class FakeBackend(LguestBackend):
    """LguestBackend over LguestKernelModel with a simulated (or replayed) guest."""

    name = "fake"

    def __init__(self, scenario: Callable[[SimulatedGuest], str | None] | None = None, *,
                 seed: int = 0, log: Callable[[str], None] | None = None, word_size: int = 8,
                 record: list[dict] | None = None, replay: list[dict] | None = None):
        """scenario: the simulated guest's program (default: L:570's driver tour).
        record: a list receiving trace records. replay: records to play back instead
        of simulating, checked against what this launcher answers."""
        self.log = log or (lambda text: None)
        self.records = record
        if replay is not None:
            self.guest = tracefile.ReplayGuest(replay)
            sink = tracefile.Comparer(replay)
        else:
            if scenario is None:
                from .fake_guest import default_scenario
                scenario = default_scenario
            self.guest = SimulatedGuest(scenario, seed=seed, log=self.log)
            sink = record.append if record is not None else None
        self.model = LguestKernelModel(self.guest, word_size=word_size)
        super().__init__("(simulated guest)", word_size=word_size, opener=self.model.open,
                         pread=self.model.pread, pwrite=self.model.pwrite,
                         closer=self.model.close,
                         warn=lambda m: self.log(f"launcher warning: {m}"))
        if sink is not None:
            self.record_to(sink, self._memory_writes)

    def _memory_writes(self):
        memory = getattr(self.guest, "memory", None)
        return memory.take_writes() if isinstance(memory, TrackingMemory) else []

    def initialize(self, memory: GuestMemory, entry: int, *, mmio_limit: int | None = None,
                   boot_params: int = 0) -> None:
        if isinstance(self.guest, SimulatedGuest):
            self.guest.memory = TrackingMemory(memory)
        else:
            self.guest.memory = memory
        super().initialize(memory, entry, mmio_limit=mmio_limit, boot_params=boot_params)

    def run(self) -> Exit:
        exit_ = super().run()
        if isinstance(exit_, GuestDied) and isinstance(self.guest, SimulatedGuest) \
                and self.guest.outcome is not None:
            exit_.status = self.guest.outcome[0]
        return exit_

    def close(self) -> None:
        if isinstance(self.guest, SimulatedGuest):
            self.guest.stop()
        super().close()
