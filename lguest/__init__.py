"""lguest-py: the lguest launcher, rebuilt as a Python library.

The public API is what `__all__` lists here and in `lguest.testing`; every other module
is the implementation, free to change. docs/library.md shows it at work.

- Real Linux: `Guest` boots a User-Mode Linux guest on our devices and keeps it for
  many `run()`s; each gives a `Result` (`GuestFailed`, `GuestTimeout` when the guest
  died or hung).
- Devices: subclass `VirtioDevice` (a type, features, queue names, config bytes and a
  `process()`); a `Virtqueue` hands it `Chain`s of guest buffers to read and fill.
  `GuestMemory` is guest RAM; `DeviceRunner` / `InlineRunner` decide who calls
  `process()`.
- The transport: `PciBus` puts devices behind virtio-PCI (`VirtioPciTransport`, BAR0)
  and routes every port and MMIO access (`PciBus.access(PIO | MMIO, ...)`).
- The guest side: `VirtioPciDriver` probes the bus as Linux's virtio_pci_modern does
  and gives a `DeviceHandle` per device; `DriverQueue` is the driver's half of a ring.
- Whole runs without a kernel: `FakeBackend` (a simulated guest trapping into the
  launcher) and `simulate()`; `write_trace` / `read_trace` store its trap stream, and a
  replay raises `TraceDivergence` at the first answer that changed.
- Errors: `GuestError` (the guest broke a rule), `LauncherError` (a host or
  configuration problem), both `LguestError`.

Start reading the code at lguest/backends/base.py, or run `lguest tour` to read the
numbered story in order. `import lguest` itself is cheap: each name is imported on
first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# name -> the module that defines it
_WHERE = {
    "Guest": "uml.guest", "Result": "uml.guest", "GuestFailed": "uml.guest",
    "GuestTimeout": "uml.guest",
    "VirtioDevice": "devices.base", "DeviceRunner": "devices.base",
    "InlineRunner": "devices.base",
    "Virtqueue": "virtqueue", "Chain": "virtqueue",
    "GuestMemory": "memory",
    "PciBus": "pci.bus", "PIO": "pci.bus", "MMIO": "pci.bus",
    "VirtioPciTransport": "pci.transport",
    "VirtioPciDriver": "driver.pci", "DeviceHandle": "driver.pci",
    "DriverQueue": "driver.vring", "GuestAllocator": "driver.vring",
    "DriverError": "driver.vring",
    "FakeBackend": "backends.fake", "simulate": "simulation",
    "write_trace": "backends.tracefile", "read_trace": "backends.tracefile",
    "TraceDivergence": "backends.tracefile",
    "GuestError": "errors", "LauncherError": "errors", "LguestError": "errors",
}

__all__ = sorted(_WHERE) + ["__version__"]

if TYPE_CHECKING:  # what a type checker sees; at run time the names come lazily
    from .backends.fake import FakeBackend
    from .backends.tracefile import TraceDivergence, read_trace, write_trace
    from .devices.base import DeviceRunner, InlineRunner, VirtioDevice
    from .driver.pci import DeviceHandle, VirtioPciDriver
    from .driver.vring import DriverError, DriverQueue, GuestAllocator
    from .errors import GuestError, LauncherError, LguestError
    from .memory import GuestMemory
    from .pci.bus import MMIO, PIO, PciBus
    from .pci.transport import VirtioPciTransport
    from .simulation import simulate
    from .uml.guest import Guest, GuestFailed, GuestTimeout, Result
    from .virtqueue import Chain, Virtqueue


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
