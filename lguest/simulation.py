"""Simulated runs of the fake backend over in-memory devices.

The trap streams in tests/data (L:560) and the fake backend's property tests need runs
that come out the same every time: the devices here keep their disk in a bytearray and
take their entropy from a counter (lguest.devices.inmemory), and they are served inline.
"""

from .backends.fake import FakeBackend
from .devices.base import InlineRunner
from .devices.block import BlockDevice
from .devices.console import ConsoleDevice
from .devices.inmemory import BufferSink, CountingEntropy, MemoryStore
from .devices.rng import RngDevice
from .errors import LauncherError
from .launcher import run_guest
from .memory import GuestMemory
from .pci.bus import PciBus


def simulated_devices(kinds, sink=None):
    """Devices with in-memory resources: "console", "block[:SECTORS][,ro]", "rng"."""
    devices = []
    for kind in kinds:
        name, _, opts = kind.partition(":")
        if name == "console":
            devices.append(ConsoleDevice(sink if sink is not None else BufferSink()))
        elif name == "block":
            sectors, _, ro = opts.partition(",")
            data = bytes((i * 7 + i // 512) & 0xFF for i in range(512 * int(sectors or 16)))
            devices.append(BlockDevice(MemoryStore(data), read_only=ro == "ro", serial="sim"))
        elif name == "rng":
            devices.append(RngDevice(CountingEntropy()))
        else:
            raise LauncherError(f"no simulated device {kind!r}")
    return devices


def simulate(kinds, *, mem_mb=8, seed=0, scenario=None, record=None, replay=None, log=None,
             word_size=8, devices=None):
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
