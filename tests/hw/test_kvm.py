"""The KVM backend on this machine's /dev/kvm, proven with tiny hand-made guests.

Each guest is an assembly file in tests/hw/guests/, assembled at test time. Every run is
bounded: a timer calls backend.stop(), which interrupts KVM_RUN with a signal.
"""

import os
import struct
import sys
import tempfile
import threading
import time

import pytest

from lguest.backends.base import MMIO, PIO, GuestDied, IoExit, RebootRequested
from lguest.memory import GuestMemory

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "guests"))
import build  # noqa: E402

if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
    pytest.skip("no usable /dev/kvm on this host", allow_module_level=True)
if build.missing_tools():
    pytest.skip(f"binutils missing: {build.missing_tools()}", allow_module_level=True)

from lguest.backends.kvm import KvmBackend  # noqa: E402

TIMEOUT = 20
MIB = 1 << 20


@pytest.fixture(scope="module")
def outdir():
    with tempfile.TemporaryDirectory(prefix="kvm-guests-") as d:
        yield d


class Recorder:
    """A bus for the tests: records every access; reads answer from `answers`
    (keyed by (space, addr)), else all ones; `on_access` may act on one."""

    def __init__(self, inner=None, answers=None, on_access=None):
        self.inner = inner
        self.answers = dict(answers or {})
        self.on_access = on_access
        self.log = []

    def access(self, space, addr, size, is_write, value=0):
        self.log.append((space, addr, size, is_write, value))
        if self.on_access:
            self.on_access(space, addr, size, is_write, value)
        if self.inner is not None:
            return self.inner.access(space, addr, size, is_write, value)
        if is_write:
            return 0
        return self.answers.get((space, addr), (1 << (8 * size)) - 1)

    def writes(self, space=PIO):
        return [(a, s, v) for sp, a, s, w, v in self.log if sp == space and w]

    def port_value(self, port):
        return [v for a, s, v in self.writes() if a == port]


def run_guest(backend, bus, timeout=TIMEOUT):
    """The launcher's loop (L:002), watched by a timer that stops the vCPU."""
    from lguest.launcher import run_guest as loop
    timer = threading.Timer(timeout, backend.stop)
    timer.start()
    try:
        return loop(backend, bus)
    finally:
        timer.cancel()


def boot(outdir, name, *, mode, base=0x1000, mem=2 * MIB, symbols=None, irqchip=False,
         boot_params=0, regs=None, msix=True, bus=None, mmio_limit=None):
    memory = GuestMemory(mem)
    backend = KvmBackend(irqchip=irqchip, quiet=True, msix=msix, console=lambda b: None)
    memory.write(base, build.assemble(name, outdir, base=base, symbols=symbols))
    if bus is not None:
        backend.attach_bus(bus)
    backend.initialize(memory, base, boot_params=boot_params, mode=mode, mmio_limit=mmio_limit)
    for reg, value in (regs or {}).items():
        backend.set_reg(reg, value)
    return backend, memory


def test_real_mode_port_exits_and_memory_both_ways(outdir):
    bus = Recorder(answers={(PIO, 0x11): 0x9A})
    backend, memory = boot(outdir, "real16", mode="real")
    memory.write_u16(0x2002, 0xC0DE)
    with backend, memory:
        end = run_guest(backend, bus)
        assert isinstance(end, GuestDied) and end.status == 0, end
        assert bus.writes() == [(0x10, 1, 0x42), (0x12, 1, 0x9A), (0x14, 2, 0xC0DE)]
        assert (PIO, 0x11, 1, False, 0) in bus.log
        assert memory.read_u8(0x2000) == 0x9A


def test_protected_mode_entry_widths_and_esi(outdir):
    bus = Recorder(answers={(PIO, 0x12): 0xBEEF})
    backend, memory = boot(outdir, "prot32", mode="protected", boot_params=0x7000)
    with backend, memory:
        end = run_guest(backend, bus)
        assert isinstance(end, GuestDied) and end.status == 0, end
        assert bus.writes() == [(0x10, 4, 0x12345678), (0x14, 4, 0x7000)]
        assert (PIO, 0x12, 2, False, 0) in bus.log
        assert memory.read_u16(0x2000) == 0xBEEF


def test_long_mode_memory_rsi_and_mmio_widths(outdir):
    mmio = 64 * MIB
    bus = Recorder(answers={(MMIO, mmio + 16): 0x1122334455667788, (MMIO, mmio + 24): 0xABCD})
    backend, memory = boot(outdir, "long64", mode="long", base=0x100000, mem=8 * MIB,
                           symbols={"MMIO": mmio}, boot_params=0x7000, mmio_limit=mmio + 4096)
    memory.write_u64(0x3000, 0x0000000100000041)
    with backend, memory:
        end = run_guest(backend, bus)
        assert isinstance(end, GuestDied) and end.status == 0, end
        assert memory.read_u64(0x3008) == 0x0000000100000042
        assert bus.writes(MMIO) == [(mmio, 4, 0xDEADBEEF), (mmio + 8, 2, 0x1234), (mmio + 12, 1, 0x56)]
        assert (MMIO, mmio + 16, 8, False, 0) in bus.log
        assert bus.port_value(0x10) == [0x42] and bus.port_value(0x14) == [0x7000]
        assert bus.port_value(0x18) == [0x55667788] and bus.port_value(0x1C) == [0x11223344]
        assert bus.port_value(0x20) == [0xABCD]


def _rng_bus(memory, runner=None):
    from lguest.devices.rng import RngDevice
    from lguest.host.rng import UrandomSource
    from lguest.pci.bus import PciBus
    bus = PciBus(memory)
    bus.add_device(RngDevice(UrandomSource()), runner)
    return bus


def test_guest_walks_our_pci_config_space_and_finds_virtio_caps(outdir):
    memory = GuestMemory(2 * MIB)
    bus = Recorder(inner=_rng_bus(memory))
    backend = KvmBackend(irqchip=True, quiet=True, console=lambda b: None)
    memory.write(0x1000, build.assemble("pciwalk32", outdir))
    backend.attach_bus(bus.inner)
    backend.initialize(memory, 0x1000, mode="protected")
    with backend, memory:
        # With the irqchip a hlt waits in the kernel: the run ends at our stop().
        end = run_guest(backend, bus, timeout=5)
        assert isinstance(end, GuestDied), end
        ids = bus.port_value(0x10)
        assert ids == [0x1AF4 | (0x1040 + 4) << 16]      # Red Hat/Qumranet, virtio 1.0 rng
        caps = bus.port_value(0x11)
        vendor_types = [w >> 24 for w in caps if w & 0xFF == 0x09]
        assert sorted(vendor_types) == [1, 2, 3, 5]        # common, notify, isr, pci_cfg (rng has no config)
        assert [w & 0xFF for w in caps].count(0x11) == 1   # and our MSI-X capability
        assert caps[-1] & 0xFF00 == 0                      # the chain ends


def test_ioeventfd_kicks_arrive_without_exits(outdir):
    notify = 16 * MIB
    kicks = 50
    backend, memory = boot(outdir, "loop32", mode="protected",
                           regs={"ebx": notify, "ecx": kicks, "edx": 3, "edi": 0})
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    bus = Recorder()
    with backend, memory:
        backend.vm.ioeventfd(fd, notify, 2, datamatch=3)
        end = run_guest(backend, bus)
        assert isinstance(end, GuestDied) and end.status == 0, end
        assert os.eventfd_read(fd) == kicks
        assert bus.writes(MMIO) == []                     # not one kick reached Python
        assert bus.port_value(0x10) != []
    os.close(fd)


def test_a_kick_with_another_queue_index_still_exits(outdir):
    notify = 16 * MIB
    backend, memory = boot(outdir, "loop32", mode="protected",
                           regs={"ebx": notify, "ecx": 2, "edx": 1, "edi": 0})
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    bus = Recorder()
    with backend, memory:
        backend.vm.ioeventfd(fd, notify, 2, datamatch=3)
        run_guest(backend, bus)
        assert bus.writes(MMIO) == [(notify, 2, 1), (notify, 2, 1)]
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
    os.close(fd)


def _interrupt_guest(outdir, fire):
    """Run irq32 with the irqchip; call fire(backend) when the guest says ready."""
    memory = GuestMemory(2 * MIB)
    backend = KvmBackend(irqchip=True, quiet=True, console=lambda b: None)
    memory.write(0x1000, build.assemble("irq32", outdir))
    fired = []

    def on_access(space, addr, size, is_write, value):
        if space == PIO and addr == 0x10 and not fired:
            fired.append(True)
            fire(backend)
    bus = Recorder(on_access=on_access)
    backend.initialize(memory, 0x1000, mode="protected")
    with backend, memory:
        end = run_guest(backend, bus)
    return end, bus


def test_irqfd_interrupt_reaches_the_guest_handler(outdir):
    fd = os.eventfd(0, os.EFD_NONBLOCK)

    def fire(backend):
        backend.vm.irqfd(fd, 5)
        os.eventfd_write(fd, 1)          # as a device thread would: no ioctl, no exit
    end, bus = _interrupt_guest(outdir, fire)
    os.close(fd)
    assert isinstance(end, GuestDied) and end.status == 0x25, end
    assert bus.port_value(0x12) == [0x25]


def test_msi_through_the_msix_table_reaches_the_guest(outdir):
    from lguest.backends.kvm.msix import MsixTable
    sent = []

    def fire(backend):
        table = MsixTable(2, lambda a, d: sent.append(backend.vm.signal_msi(a, d)))
        table.emulate_mmio_write(16, 4, 0xFEE00000)      # vector 1: to APIC 0
        table.emulate_mmio_write(24, 4, 0x40)            # fixed, vector 0x40
        table.emulate_mmio_write(28, 4, 0)               # unmask
        table.control = 1 << 15                          # MSI-X enable
        table.signal(1)
    end, bus = _interrupt_guest(outdir, fire)
    assert sent == [1]                                   # KVM_SIGNAL_MSI: delivered to one vCPU
    assert isinstance(end, GuestDied) and end.status == 0x40, end
    assert bus.port_value(0x12) == [0x40]


def test_virtqueue_exchange_with_rng_through_the_vcpu(outdir):
    from lguest.driver.pci import VirtioPciDriver
    from lguest.driver.vring import GuestAllocator
    from lguest.host.runner import ThreadedRunner
    memory = GuestMemory(2 * MIB)
    pci = _rng_bus(memory, ThreadedRunner())
    backend = KvmBackend(irqchip=False, quiet=True, console=lambda b: None)
    backend.attach_bus(pci)
    memory.write(0x1000, build.assemble("vq32", outdir))
    # The driver's set-up (features, ring addresses, DRIVER_OK) goes through the bus
    # from here; the ring itself is filled and kicked by the guest.
    driver = VirtioPciDriver(pci.access, memory, GuestAllocator(0x10000, 0x80000))
    (rng,) = driver.probe()
    rng.negotiate()
    (queue,) = rng.setup_queues([4])
    rng.driver_ok()
    buffer = 0x90000
    backend.initialize(memory, 0x1000, mode="protected")
    for reg, value in (("ebx", queue.desc_addr), ("ecx", queue.avail_addr),
                       ("edx", queue.used_addr), ("esi", rng.notify_addrs[0]), ("edi", buffer)):
        backend.set_reg(reg, value)
    bus = Recorder(inner=pci)
    try:
        with backend:
            end = run_guest(backend, bus)
        assert isinstance(end, GuestDied) and end.status == 0, end
        assert bus.port_value(0x10) == [16]
        assert bus.port_value(0x11) == [memory.read_u32(buffer)]
        assert memory.read(buffer, 16) != bytes(16)
        assert bus.writes(MMIO) == []                     # the kick went by ioeventfd
    finally:
        pci.reset_all()
        memory.close()


def test_stop_interrupts_a_spinning_guest(outdir):
    memory = GuestMemory(2 * MIB)
    memory.write(0x1000, b"\xEB\xFE")                    # jmp .
    backend = KvmBackend(irqchip=False, quiet=True)
    backend.initialize(memory, 0x1000, mode="protected")
    with backend, memory:
        started = time.monotonic()
        end = run_guest(backend, Recorder(), timeout=0.5)
        assert isinstance(end, GuestDied) and "stopped" in end.reason
        assert time.monotonic() - started < 5


def _fault_guest(instruction):
    memory = GuestMemory(2 * MIB)
    # lidt of an empty IDT (limit 0), then the instruction: no gate for its exception
    # -> #GP -> #DF -> triple fault.
    memory.write(0x1000, b"\x0F\x01\x1D\x00\x20\x00\x00" + instruction)
    memory.write(0x2000, bytes(6))
    backend = KvmBackend(irqchip=False, quiet=True)
    backend.initialize(memory, 0x1000, mode="protected")
    with backend, memory:
        return backend.pvm, run_guest(backend, Recorder(), timeout=10)


def test_triple_fault_ends_the_run_with_a_reason(outdir):
    _, end = _fault_guest(b"\x0F\x0B")                  # ud2
    assert isinstance(end, GuestDied) and end.status == 1, end
    assert "triple-faulted" in end.reason and "0x1007" in end.reason


def test_internal_error_is_reported_plainly(outdir):
    pvm, end = _fault_guest(b"\xCC")                     # int3
    if not pvm:
        pytest.skip("int3 is only unemulatable on KVM-PVM; here it simply triple-faults")
    assert isinstance(end, GuestDied) and end.status == 1, end
    assert "internal error: emulation failure (suberror 1) at rip 0x1007" in end.reason


def test_i8042_and_cf9_resets_are_reboot_requests(outdir):
    for code in (b"\xB0\xFE\xE6\x64",                         # mov al,0xfe; out 0x64,al
                 b"\xB0\x06\x66\xBA\xF9\x0C\xEE"):            # mov al,6; mov dx,0xcf9; out dx,al
        memory = GuestMemory(2 * MIB)
        memory.write(0x1000, code + b"\xF4")
        backend = KvmBackend(irqchip=False, quiet=True)
        backend.initialize(memory, 0x1000, mode="protected")
        with backend, memory:
            assert isinstance(run_guest(backend, Recorder(), timeout=10), RebootRequested)


def test_uart_output_reaches_the_console_sink(outdir):
    out = bytearray()
    memory = GuestMemory(2 * MIB)
    code = b"".join(b"\xB0" + bytes([c]) + b"\x66\xBA\xF8\x03\xEE" for c in b"hi\n")
    code += b"\x66\xBA\xFD\x03\xEC" + b"\xE6\x10"          # in al, 0x3fd (LSR); out 0x10, al
    memory.write(0x1000, code + b"\xF4")
    backend = KvmBackend(irqchip=False, quiet=True, console=out.extend)
    backend.initialize(memory, 0x1000, mode="protected")
    bus = Recorder()
    with backend, memory:
        run_guest(backend, bus, timeout=10)
    assert bytes(out) == b"hi\n"
    assert bus.port_value(0x10) == [0x60]                  # THR empty, transmitter empty
    assert not any(a in range(0x3F8, 0x400) for _, a, _, _, _ in bus.log)
