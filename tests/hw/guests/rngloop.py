"""Run rngloop32.S: N whole virtio requests to an rng device through the real vCPU.

Shared by tests/hw/test_kvm_requests.py (is every request served right?) and
bench/kvm_exits.py (how long does one take?), so both run exactly the same path:
KvmBackend with the in-kernel irqchip, the rng behind a PciBus with the threaded
runner, each queue kick bound with KVM_IOEVENTFD, the device's INTx line raised on the
irqchip from the queue's thread (KVM_IRQ_LINE) and lowered when the guest's handler
reads ISR (one MMIO exit per interrupt taken), the launcher's run_guest loop.
"""

import threading
import time
from dataclasses import dataclass, field

import build

MIB = 1 << 20
QUEUE_SIZE = 8
BUFFERS = MIB            # 16 bytes per request from here, then the guest's length log


@dataclass
class Requests:
    n: int
    elapsed: float                     # seconds from the first KVM_RUN to the guest's exit
    end: object                        # the run's GuestDied
    reported: list                     # what the guest said on port 0x10 (its count)
    interrupts: list                   # ... and on port 0x11 (interrupts taken)
    lengths: list                      # used.len of every request, as the guest logged it
    empty: list = field(default_factory=list)   # requests whose 16 bytes stayed zero
    python_exits: int = 0              # exits that reached the bus (kicks must not; ISR reads do)


class _CountingBus:
    def __init__(self, inner):
        self.inner, self.ports, self.exits = inner, {0x10: [], 0x11: []}, 0

    def access(self, space, addr, size, is_write, value=0):
        self.exits += 1
        if is_write and addr in self.ports:
            self.ports[addr].append(value)
            return 0
        return self.inner.access(space, addr, size, is_write, value)


def run(n, outdir, *, waitirq=False, timeout=60):
    from lguest.backends.kvm import KvmBackend
    from lguest.devices.rng import RngDevice
    from lguest.driver.pci import VirtioPciDriver
    from lguest.driver.vring import GuestAllocator
    from lguest.host.rng import UrandomSource
    from lguest.host.runner import ThreadedRunner
    from lguest.launcher import run_guest
    from lguest.memory import GuestMemory
    from lguest.pci.bus import PciBus

    log = BUFFERS + 16 * n
    memory = GuestMemory(-(-(log + 4 * n) // MIB) * MIB + MIB)
    pci = PciBus(memory)
    pci.add_device(RngDevice(UrandomSource()), ThreadedRunner())
    # msix=False: the device's interrupt is its INTx line, so the guest's PIC takes it.
    backend = KvmBackend(irqchip=True, msix=False, quiet=True, console=lambda b: None)
    try:
        backend.attach_bus(pci)
        # The driver's set-up (features, ring addresses, DRIVER_OK) goes through the
        # bus from here; the ring itself is filled and kicked by the guest.
        driver = VirtioPciDriver(pci.access, memory, GuestAllocator(0x10000, 0x80000))
        (rng,) = driver.probe()
        rng.negotiate()
        (queue,) = rng.setup_queues([QUEUE_SIZE])
        rng.driver_ok()
        from lguest.pci.registers import ISR_OFFSET
        irq = pci.devices[0].irq_line
        symbols = {"DESC": queue.desc_addr, "AVAIL": queue.avail_addr, "USED": queue.used_addr,
                   "NOTIFY": rng.notify_addrs[0], "QMASK": QUEUE_SIZE - 1, "IRQ": irq,
                   "ISR": pci.devices[0].mmio_addr + ISR_OFFSET,
                   "WAITIRQ": int(waitirq)}
        memory.write(0x1000, build.assemble("rngloop32", outdir, symbols=symbols))
        backend.initialize(memory, 0x1000, mode="protected")
        for reg, value in (("edi", BUFFERS), ("esi", log), ("ebp", n)):
            backend.set_reg(reg, value)
        bus = _CountingBus(pci)
        timer = threading.Timer(timeout, backend.stop)
        with backend:
            timer.start()
            started = time.perf_counter()
            try:
                end = run_guest(backend, bus)
            finally:
                elapsed = time.perf_counter() - started
                timer.cancel()
            data = memory.read(BUFFERS, 16 * n)
            lengths = list(memoryview(memory.read(log, 4 * n)).cast("I"))
            return Requests(n, elapsed, end, bus.ports[0x10], bus.ports[0x11], lengths,
                            [i for i in range(n) if data[16 * i:16 * i + 16] == bytes(16)],
                            bus.exits - 2)    # less the two reports (port 0x501 is the backend's)
    finally:
        pci.reset_all()
        memory.close()


def rate(n, outdir, **kw):
    """Requests per second, after checking the run did all n."""
    r = run(n, outdir, **kw)
    if r.reported != [n] or getattr(r.end, "status", None) != 0:
        raise RuntimeError(f"rngloop: {r.end!r}, guest reported {r.reported} of {n}")
    return n / r.elapsed
