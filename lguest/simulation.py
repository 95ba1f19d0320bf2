"""Simulated runs of the fake backend over in-memory devices.

The trap streams in tests/data (L:560) and the fake backend's property tests need runs
that come out the same every time: the devices here keep their disk in a bytearray and
take their entropy from a counter (lguest.devices.inmemory), and they are served inline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from .backends.fake import FakeBackend
from .config import DeviceSpec
from .devices.base import InlineRunner
from .devices.inmemory import BufferSink
from .errors import LauncherError
from .host.factory import InMemoryResources, make_device
from .launcher import run_guest
from .memory import GuestMemory
from .pci.bus import PciBus

if TYPE_CHECKING:
    from .backends.base import Exit
    from .backends.fake import SimulatedGuest
    from .devices.base import VirtioDevice

SIMULATED_KINDS = ("console", "block", "rng")


def simulated_spec(kind):
    """"console", "block[:SECTORS][,ro]" or "rng" -> a DeviceSpec over memory."""
    name, _, opts = kind.partition(":")
    if name not in SIMULATED_KINDS:
        raise LauncherError(f"no simulated device {kind!r}")
    if name != "block":
        return DeviceSpec(name)
    sectors, _, ro = opts.partition(",")
    return DeviceSpec("block", read_only=ro == "ro", sectors=int(sectors or 16))


def simulated_devices(kinds, sink=None):
    """The factory's devices (L:940) over in-memory resources, for `kinds` as above."""
    resources = InMemoryResources(sink if sink is not None else BufferSink())
    return [make_device(simulated_spec(kind), resources).device for kind in kinds]


def simulate(kinds: Iterable[str], *, mem_mb: int = 8, seed: int = 0,
             scenario: Callable[[SimulatedGuest], str | None] | None = None,
             record: list[dict] | None = None, replay: list[dict] | None = None,
             log: Callable[[str], None] | None = None, word_size: int = 8,
             devices: Iterable[VirtioDevice] | None = None) -> tuple[Exit, PciBus, FakeBackend]:
    """Run the fake backend on simulated devices; return (exit, bus, backend).

    devices: VirtioDevice objects to use instead of the simulated `kinds` (your own, or
    ours changed: what a replay then catches)."""
    memory = GuestMemory(mem_mb << 20)
    bus = PciBus(memory)
    for device in simulated_devices(kinds) if devices is None else devices:
        bus.add_device(device, InlineRunner())
    backend = FakeBackend(scenario, seed=seed, log=log, record=record, replay=replay,
                          word_size=word_size)
    try:
        backend.attach_bus(bus)
        backend.initialize(memory, 0, mmio_limit=bus.mmio_limit)
        exit_ = run_guest(backend, bus)
    finally:
        backend.close()
        memory.close()
    return exit_, bus, backend
