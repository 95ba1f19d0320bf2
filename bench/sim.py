"""Simulation: driver operations per second on the fake backend (L:550), next to the same
operations made by the same guest-side driver calling PciBus.access directly.

The fake backend turns every port/MMIO access of the simulated guest into a real x86
trap (instruction bytes, registers) that the launcher decodes, as /dev/lguest would:
the ratio is what that trap path costs over a plain function call into the bus. Two
operations: a negotiation (reset, features, queue set-up, DRIVER_OK on a block device)
and a queue round trip (one 512-byte block read: add, kick, serve, interrupt, collect).
"""

import struct
import time

from common import median, say, Row

from lguest.backends.fake import FakeBackend
from lguest.backends.fake_guest import GuestKernel
from lguest.devices.base import InlineRunner
from lguest.devices.block import BlockDevice
from lguest.devices.inmemory import MemoryStore
from lguest.driver.pci import VirtioPciDriver
from lguest.driver.vring import GuestAllocator
from lguest.launcher import run_guest
from lguest.memory import GuestMemory
from lguest.pci.bus import PciBus

OUTHDR = struct.Struct("<IIQ")


def workload(handles, transact, negotiations, round_trips, times):
    handle = handles[0]
    start = time.perf_counter()
    for _ in range(negotiations):
        handle.reset()
        handle.negotiate()
        handle.setup_queues()
        handle.driver_ok()
    middle = time.perf_counter()
    header = OUTHDR.pack(0, 0, 1)
    for _ in range(round_trips):
        transact(handle, 0, [header], [513])
    end = time.perf_counter()
    times.append((negotiations / (middle - start), round_trips / (end - middle)))


def new_bus():
    memory = GuestMemory(8 << 20)
    bus = PciBus(memory)
    bus.add_device(BlockDevice(MemoryStore(bytes(1 << 20)), name="vda"), InlineRunner())
    return memory, bus


def through_fake(negotiations, round_trips):
    memory, bus = new_bus()
    times = []

    def scenario(guest):
        kernel = GuestKernel(guest)
        handles = kernel.probe()
        workload(handles, kernel.transact, negotiations, round_trips, times)
        return "done"

    backend = FakeBackend(scenario, log=lambda text: None)
    try:
        backend.attach_bus(bus)
        backend.initialize(memory, 0, mmio_limit=bus.mmio_limit)
        run_guest(backend, bus)
    finally:
        backend.close()
        memory.close()
    return times[0]


def direct(negotiations, round_trips):
    """The same driver, its io() going straight to bus.access (no trap, no decode)."""
    memory, bus = new_bus()
    driver = VirtioPciDriver(bus.access, memory, GuestAllocator(4 << 20, 8 << 20))
    handles = driver.probe()
    bus.irq_sink = lambda irq: handles[0].ack_interrupt()

    def transact(handle, qi, readable, writable):
        queue = handle.queue(qi)
        queue.add_buffer(readable, writable)
        handle.kick(qi)
        return queue.collect()[0]

    times = []
    workload(handles, transact, negotiations, round_trips, times)
    memory.close()
    return times[0]


def measure(runs=5, quick=False):
    negotiations, round_trips = (30, 300) if quick else (100, 1000)
    fake, plain = [], []
    for i in range(runs):
        say(f"sim: run {i + 1}/{runs}")
        fake.append(through_fake(negotiations, round_trips))
        plain.append(direct(negotiations, round_trips))
    note = f"median of {runs}; ref: same driver calling bus.access directly"
    return [
        Row("sim", "fake backend: negotiations (reset..DRIVER_OK, block)",
            median(n for n, _ in fake), median(n for n, _ in plain), "ops/s", "", note),
        Row("sim", "fake backend: queue round trips (512 B block read)",
            median(r for _, r in fake), median(r for _, r in plain), "ops/s", "", note),
    ]
