"""The parts of the KVM backend that need no /dev/kvm: encodings, tables, devices."""

import struct
import time

from hypothesis import given, settings, strategies as st

from lguest.backends.kvm import boot, ioctls as K
from lguest.backends.kvm.backend import guest_cpuid, warn_if_pvm
from lguest.backends.kvm.legacy_ports import Cmos, LegacyPorts, Serial8250
from lguest.backends.kvm.msix import MsixTable
from lguest.backends.kvm.vm import Sregs, default_routing, routing_msi
from lguest.pci.registers import VIRTIO_MSI_NO_VECTOR

import pytest


def test_ioctl_numbers_match_linux_kvm_h():
    # Values as <linux/kvm.h> computes them on x86-64 (checked against the header).
    assert K.RUN == 0xAE80
    assert K.GET_SREGS == 0x8138AE83 and K.SET_SREGS == 0x4138AE84
    assert K.SET_USER_MEMORY_REGION == 0x4020AE46
    assert K.GET_SUPPORTED_CPUID == 0xC008AE05 and K.SET_CPUID2 == 0x4008AE90
    assert K.IOEVENTFD == 0x4040AE79 and K.IRQFD == 0x4020AE76
    assert K.CREATE_PIT2 == 0x4040AE77 and K.SIGNAL_MSI == 0x4020AEA5


def test_struct_sizes_are_the_kernels():
    assert K.REGS.size == 144 and K.SREGS_SIZE == 312 and K.SEGMENT.size == 24
    assert K.CPUID_ENTRY.size == 40 and K.IRQ_ROUTING_ENTRY.size == 48
    assert K.RUN_IO.size == 16 and K.RUN_MMIO.size == 21


@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFF), st.sampled_from(
    [boot.CODE64_FLAGS, boot.CODE32_FLAGS, boot.DATA_FLAGS, boot.TSS_FLAGS, 0x0093]))
def test_gdt_entry_decodes_to_what_was_encoded(base, limit, flags):
    fields = boot.decode_gdt_entry(boot.gdt_entry(flags, base, limit))
    assert fields["base"] == base
    assert fields["limit"] == ((limit << 12) | 0xFFF if flags & 0x8000 else limit)
    assert fields["type"] == flags & 0xF and fields["present"] == (flags >> 7) & 1
    assert fields["l"] == (flags >> 13) & 1 and fields["db"] == (flags >> 14) & 1


def test_boot_gdt_has_the_protocols_selectors():
    for long_mode in (True, False):
        gdt = boot.boot_gdt(long_mode)
        cs = boot.decode_gdt_entry(gdt[boot.BOOT_CS >> 3])
        ds = boot.decode_gdt_entry(gdt[boot.BOOT_DS >> 3])
        assert cs["type"] & 0x8 and cs["s"] and cs["present"]          # code
        assert (cs["l"], cs["db"]) == ((1, 0) if long_mode else (0, 1))
        assert not ds["type"] & 0x8 and ds["type"] & 0x2 and ds["limit"] == 0xFFFFFFFF


@settings(max_examples=50)
@given(st.integers(1, 4 << 30), st.data())
def test_identity_page_tables_map_every_address_to_itself(limit, data):
    tables = boot.identity_page_tables(limit)
    address = data.draw(st.integers(0, limit - 1))
    assert boot.walk_identity(tables, address) == address
    assert all(len(page) == boot.PAGE for page in tables.values())
    assert max(tables) + boot.PAGE <= 0x7000 + 0x8000 and min(tables) >= 0x9000


def test_page_tables_refuse_what_they_cannot_cover():
    with pytest.raises(Exception, match="identity-map"):
        boot.identity_page_tables((4 << 30) + 1)
    tables = boot.identity_page_tables(1 << 30)
    assert boot.walk_identity(tables, 1 << 30) is None


def test_sregs_pack_roundtrip():
    buf = bytes(range(256)) + bytes(56)
    sregs = Sregs.unpack(buf)
    packed = sregs.pack()
    # Everything but the dtables' padding survives (bytes 202-207 and 218-223).
    keep = [i for i in range(312) if not (202 <= i < 208 or 218 <= i < 224)]
    assert len(packed) == 312 and [packed[i] for i in keep] == [buf[i] for i in keep]
    assert sregs.cs.base == struct.unpack_from("<Q", buf, 0)[0]
    assert sregs.cr3 == struct.unpack_from("<Q", buf, 224 + 16)[0]   # cr0, cr2, cr3


def test_default_routing_keeps_the_irqchip_routes_and_msi_goes_on_top():
    routes = default_routing()
    assert len(routes) == 16 + 24
    gsi, kind, _, _, body = K.IRQ_ROUTING_ENTRY.unpack(routes[16])
    assert (gsi, kind, struct.unpack_from("<II", body)) == (0, K.IRQ_ROUTING_IRQCHIP, (K.IRQCHIP_IOAPIC, 2))
    gsi, kind, _, _, body = K.IRQ_ROUTING_ENTRY.unpack(routing_msi(40, 0xFEE00000, 0x41))
    assert (gsi, kind, struct.unpack_from("<III", body)) == (40, K.IRQ_ROUTING_MSI, (0xFEE00000, 0, 0x41))


def test_cpuid_hides_cmpxchg16b_only_on_pvm():
    table = [(1, 0, 0, 1, 2, 0xFFFFFFFF, 4), (7, 0, 1, 0, 0, 0xFFFFFFFF, 0)]
    assert guest_cpuid(table, pvm=False) == table
    hidden = guest_cpuid(table, pvm=True)
    assert hidden[0][5] == 0xFFFFFFFF & ~(1 << 13) and hidden[1] == table[1]


def test_pvm_warning_is_said_once(tmp_path, capsys):
    import lguest.backends.kvm.backend as b
    b._warned_pvm = False
    assert warn_if_pvm(module_path=str(tmp_path / "absent")) is False
    assert warn_if_pvm(module_path=str(tmp_path)) is True
    assert warn_if_pvm(module_path=str(tmp_path)) is False
    err = capsys.readouterr().err
    assert err.count("KVM-PVM") == 1 and "lguest run" in err


def test_uart_transmits_and_reports_ready():
    out, irqs = bytearray(), []
    uart = Serial8250(out.extend, lambda: irqs.append(4))
    for c in b"ok":
        uart.write(0, c)
    assert bytes(out) == b"ok" and uart.read(5) & 0x60 == 0x60 and irqs == []
    uart.write(1, 0x02)                     # enable THR-empty interrupt
    assert irqs == [4] and uart.read(2) & 0x0F == 0x02 and uart.read(2) & 0x0F == 0x01
    uart.write(3, 0x80)                     # DLAB: divisor latch, not THR
    uart.write(0, 0x01)
    uart.write(3, 0x03)
    assert bytes(out) == b"ok" and uart.read(1) == 0x02
    uart.write(7, 0x5A)
    assert uart.read(7) == 0x5A
    uart.write(4, 0x1F)                     # loopback: MCR reflected in MSR
    assert uart.read(6) == 0xF0
    uart.feed(b"x")
    assert uart.read(5) & 1 and uart.read(0) == ord("x") and not uart.read(5) & 1


def test_cmos_reads_bcd_time_and_memory_size():
    cmos = Cmos(128 << 20, clock=lambda: time.struct_time((2026, 11, 23, 14, 59, 7, 0, 327, 0)))
    answers = {}
    for index in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0B, 0x0D, 0x34, 0x35, 0x30, 0x31):
        cmos.write_index(index | 0x80)
        answers[index] = cmos.read_data()
    assert (answers[0], answers[2], answers[4]) == (0x07, 0x59, 0x14)
    assert (answers[7], answers[8], answers[9], answers[0x32]) == (0x23, 0x11, 0x26, 0x20)
    assert answers[0x0D] == 0x80 and answers[0x0B] == 0x02
    assert answers[0x34] | answers[0x35] << 8 == (112 << 20) >> 16
    assert answers[0x30] | answers[0x31] << 8 == 63 * 1024


def test_legacy_ports_resets_and_exit_status():
    ports = LegacyPorts(Serial8250(lambda b: None), Cmos(1 << 20))
    assert ports.read(0x64, 1) is None                  # status: the bus answers
    ports.write(0x64, 1, 0xD1)
    assert not ports.reset_requested
    ports.write(0x64, 1, 0xFE)
    assert ports.reset_requested
    ports.reset_requested = False
    ports.write(0xCF9, 1, 0x02)
    assert not ports.reset_requested
    ports.write(0xCF9, 1, 0x06)
    assert ports.reset_requested
    ports.write(0x501, 1, 3)
    assert ports.exit_status == 3
    assert not ports.write(0x80, 1, 0)


def test_msix_table_masks_pends_and_delivers():
    sent = []
    table = MsixTable(3, lambda a, d: sent.append((a, d)))
    table.cap_offset = 0x40 - 4
    assert table.accept_vector(2) == 2 and table.accept_vector(3) == VIRTIO_MSI_NO_VECTOR
    table.emulate_mmio_write(16, 8, 0x00000000FEE00000)
    table.emulate_mmio_write(24, 4, 0x41)
    table.signal(1)                                     # masked at reset: pending
    assert sent == [] and table.emulate_mmio_read(table.pba_offset, 8) == 0b10
    table.emulate_mmio_write(28, 4, 0)                  # unmask: the pending one goes
    assert sent == [(0xFEE00000, 0x41)] and table.emulate_mmio_read(table.pba_offset, 8) == 0
    table.signal(1)
    assert sent[-1] == (0xFEE00000, 0x41) and len(sent) == 2
    assert table.emulate_mmio_read(table.mmio_size - 4, 4) == 0xFFFFFFFF


def test_msix_capability_only_lets_enable_and_mask_change():
    from lguest.pci.config import PciConfig, virtio_pci_config
    from lguest.pci.registers import BAR0_LAYOUT
    config = virtio_pci_config(4, 1, BAR0_LAYOUT, 0, 0x1000000)
    table = MsixTable(2, lambda a, d: None)
    table.cap_offset = config.add_capability(0x11, b"\x01\x00\x01\x00\x00\x00\x09\x00\x00\x00",
                                             on_write=table._config_write)
    reg, at = table.cap_offset // 4, table.cap_offset
    assert not table.enabled()
    assert config.write(reg, 2, 2, 0xC7FF)          # enable + mask; table size bits ignored
    assert table.enabled() and config.space[at + 2:at + 4] == b"\x01\xC0"
    assert not config.write(reg + 1, 0, 4, 0)      # the table offset is read-only
    assert config.write(reg, 2, 2, 0x0000) and not table.enabled()
    assert isinstance(config, PciConfig)


# -- INTx is a level, held until the driver reads ISR (L:406, L:645) ----------------------
class LineRecorder:
    """The VM's interrupt-line ioctls, recorded."""

    def __init__(self):
        self.calls = []

    def irq_line(self, irq, level):
        self.calls.append((irq, level))

    def pulse_irq(self, irq):
        self.calls.append((irq, "pulse"))


@pytest.fixture
def kvm_bus():
    from lguest.backends.kvm.backend import KvmBackend
    from lguest.devices.inmemory import CountingEntropy
    from lguest.devices.rng import RngDevice
    from lguest.memory import GuestMemory
    from lguest.pci.bus import PciBus
    backend = KvmBackend.__new__(KvmBackend)       # no /dev/kvm: only the line logic
    backend.irqchip, backend.msix, backend.msix_tables = True, False, []
    backend.vm = LineRecorder()
    memory = GuestMemory(1 << 20)
    bus = PciBus(memory)
    transport = bus.add_device(RngDevice(CountingEntropy()))
    backend.attach_bus(bus)
    backend.vm.calls.clear()
    yield backend, bus, transport
    memory.close()


def read_isr(bus, transport):
    from lguest.pci.bus import MMIO
    from lguest.pci.registers import ISR_OFFSET
    return bus.access(MMIO, transport.mmio_addr + ISR_OFFSET, 1, False)


def test_pci_intx_stays_up_until_the_isr_read(kvm_bus):
    backend, bus, t = kvm_bus
    line, calls = t.irq_line, backend.vm.calls
    t.interrupt(0)
    t.interrupt(0)
    assert calls == [(line, 1), (line, 1)]                # raised, never pulsed or lowered
    assert read_isr(bus, t) == 1                          # ISR_QUEUE
    assert calls[-1] == (line, 0)                         # the read lowers it
    assert read_isr(bus, t) == 0 and calls[-1] == (line, 0)   # nothing pending: stays down
    backend.interrupt(4)                                  # the UART's ISA line: still an edge
    assert calls[-1] == (4, "pulse")


def test_an_interrupt_racing_the_isr_read_raises_the_line_again(kvm_bus):
    backend, bus, t = kvm_bus
    line, calls = t.irq_line, backend.vm.calls
    lower = bus.irq_lower_sink

    def lower_after_a_queue_thread_interrupts(irq):
        bus.irq_lower_sink = lower
        t.interrupt(0)          # between ISR's clearing and the line going down
        lower(irq)
    t.interrupt(0)
    bus.irq_lower_sink = lower_after_a_queue_thread_interrupts
    assert read_isr(bus, t) == 1
    assert calls == [(line, 1), (line, 1), (line, 0), (line, 1)]   # up again: ISR is set
    assert read_isr(bus, t) == 1 and calls[-1] == (line, 0)


def test_a_reset_lowers_the_line(kvm_bus):
    backend, bus, t = kvm_bus
    t.interrupt(0)
    t.reset()
    assert backend.vm.calls[-1] == (t.irq_line, 0) and read_isr(bus, t) == 0


def test_where_raising_is_an_event_an_isr_read_adds_none():
    from lguest.devices.inmemory import CountingEntropy
    from lguest.devices.rng import RngDevice
    from lguest.memory import GuestMemory
    from lguest.pci.bus import PciBus
    memory = GuestMemory(1 << 20)
    try:
        bus = PciBus(memory)
        raised = []
        bus.irq_sink = raised.append               # as the lguest and fake backends do
        t = bus.add_device(RngDevice(CountingEntropy()))
        t.interrupt(0)
        assert read_isr(bus, t) == 1 and raised == [t.irq_line]
    finally:
        memory.close()
