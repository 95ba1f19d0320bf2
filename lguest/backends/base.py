"""What running a guest means to the launcher: the Backend interface.

#L:001 The Backend interface is our /dev/lguest. The seed's launcher opened
# /dev/lguest, wrote LHREQ_INITIALIZE with the guest's memory and entry point, and
# then read() from it in a loop: each read ran the guest until it did something only
# the launcher could finish (touch an I/O port or a device's MMIO window), died, or
# asked to reboot. Everything else the seed did with the device (fetch and set
# registers, raise interrupts, hand an unemulatable trap back) was in aid of that
# loop. A Backend is that loop's other end, made abstract so the same launcher runs
# the guest on the lguest kernel module (L:520), on KVM (L:600) or on a simulated
# guest that needs no kernel at all (L:550).
#
# run() returns a typed exit, kvm-ioctls style, rather than a trap number and raw
# instruction bytes: decoding x86 (L:500) is the lguest backend's private business;
# the launcher sees only "an I/O access at this address, this wide, reading or
# writing this value" and answers it with complete().
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import LauncherError

if TYPE_CHECKING:
    from ..memory import GuestMemory
    from ..pci.bus import PciBus

# The two address spaces of bus.access(); the same strings as lguest.pci.bus.
PIO = "pio"
MMIO = "mmio"


class Exit:
    """Why run() returned."""


@dataclass
class IoExit(Exit):
    """The guest touched an I/O port (space PIO) or device memory (space MMIO).

    The launcher passes it to bus.access() and must then call complete(result)
    (reads: the value read; writes: anything), which finishes the instruction:
    the lguest backend writes the destination register and advances eip; KVM fills
    the run structure. reject() instead hands the fault back to the guest.
    """
    space: str
    addr: int
    size: int
    is_write: bool
    value: int = 0
    _complete: object = field(default=None, repr=False, compare=False)
    _reject: object = field(default=None, repr=False, compare=False)

    def complete(self, value=0):
        if self._complete is not None:
            self._complete(value)

    def reject(self):
        if self._reject is not None:
            self._reject()


@dataclass
class GuestDied(Exit):
    """The guest is gone; `reason` is its last words. The seed exits 1 with them;
    a simulated guest that finished its work cleanly sets status 0."""
    reason: str
    status: int = 1


@dataclass
class RebootRequested(Exit):
    """The guest asked to restart: the seed re-executes itself (L:002)."""


class Backend(abc.ABC):
    """One guest vCPU and the means to run it. Use as a context manager."""

    name = "backend"

    def attach_bus(self, bus: PciBus) -> None:
        """Called once the devices exist: interrupts raised by the bus reach us.
        KVM overrides this to add ioeventfds and irqfds as well."""
        bus.irq_sink = self.interrupt

    @abc.abstractmethod
    def initialize(self, memory: GuestMemory, entry: int, *, mmio_limit: int | None = None,
                   boot_params: int = 0) -> None:
        """Give the backend the guest's memory (a GuestMemory), the entry point, the end
        of the device MMIO window (guest-physical) and where boot_params lie."""

    @abc.abstractmethod
    def run(self) -> Exit:
        """Run the guest until it needs us: an IoExit, GuestDied or RebootRequested."""

    @abc.abstractmethod
    def get_reg(self, name: str) -> int:
        """A 32-bit register by its user_regs_struct name ("eax", "eip", "xcs" ...)."""

    @abc.abstractmethod
    def set_reg(self, name: str, value: int) -> None:
        """Set a register; only the general registers, eip and esp are settable."""

    @abc.abstractmethod
    def interrupt(self, irq: int) -> None:
        """Raise interrupt line `irq` in the guest (delivered when it next runs)."""

    def reinject(self, trap: int) -> None:
        """Hand a trap the launcher could not emulate back to the guest."""
        raise LauncherError(f"the {self.name} backend cannot re-inject trap {trap}")

    def close(self) -> None:
        """Release the vCPU and anything else; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
