"""Our guest-side driver on a PCI bus with your devices: a guest without a guest.

    with DriverHarness(MyDevice()) as rig:
        (handle,) = rig.handles            # probed, negotiated, queues set up, DRIVER_OK
        used = rig.request(handle, 0, [b"ping"], [64])
        assert used[0].data == b"ping"

The driver (lguest.driver) plays Linux's virtio_pci_modern: it walks PCI config space
through ports 0xCF8/0xCFC, maps BAR0's capabilities, negotiates, allocates rings in guest
memory and kicks through the notify register, all via `PciBus.access`, the one entry
point every backend calls. Devices are served inline (InlineRunner) unless you pass
runners, so a kick's work is done when kick() returns.
"""

from __future__ import annotations

import gc
from typing import Iterable

from ..devices.base import DeviceRunner, InlineRunner, VirtioDevice
from ..driver.pci import DeviceHandle, VirtioPciDriver
from ..driver.vring import GuestAllocator, Used
from ..memory import GuestMemory
from ..pci.bus import PciBus

__all__ = ["DriverHarness", "HARNESS_MEMORY"]

HARNESS_MEMORY = 8 << 20
ALLOCATOR_START = 0x100000       # the driver's rings and buffers live above 1 MiB


class DriverHarness:
    """Guest memory, a PCI bus with the given devices, and the probed driver handles."""

    def __init__(self, *devices: VirtioDevice, runners: list[DeviceRunner] | None = None,
                 memory_size: int = HARNESS_MEMORY, live: bool = True):
        self.memory = GuestMemory(memory_size)
        self.bus = PciBus(self.memory)
        self.irqs: list[int] = []
        self.bus.irq_sink = self.irqs.append
        runners = runners or [InlineRunner() for _ in devices]
        self.transports = [self.bus.add_device(d, runner=r) for d, r in zip(devices, runners)]
        self.driver = VirtioPciDriver(self.bus.access, self.memory,
                                      GuestAllocator(ALLOCATOR_START, memory_size))
        self.handles: list[DeviceHandle] = self.driver.probe()
        if live:
            for h in self.handles:
                h.negotiate()
                h.setup_queues()
                h.driver_ok()

    def request(self, handle: DeviceHandle, qi: int,
                readable: Iterable[bytes | bytearray | memoryview | int],
                writable: Iterable[int]) -> list[Used]:
        """Offer one chain (readable bytes, writable lengths) on queue qi, kick, collect."""
        queue = handle.queue(qi)
        queue.add_buffer(readable, writable)
        handle.kick(qi)
        return queue.collect()

    def close(self) -> None:
        """Reset every device and free guest memory."""
        self.bus.reset_all()
        try:
            self.memory.close()
        except BufferError:
            # A GuestError's traceback (kept by pytest.raises) can hold views of guest
            # memory in its frames; they are garbage once the test is over.
            gc.collect()
            self.memory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
