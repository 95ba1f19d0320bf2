"""PciBus: the 0xCF8 latch and 0xCFC data ports at every width and byte offset, other
ports, the MMIO windows and the one entry point."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lguest.devices.base import VirtioDevice
from lguest.errors import GuestError, LauncherError
from lguest.memory import PAGE_SIZE, GuestMemory
from lguest.pci.bus import MMIO, PIO, PciBus, UnclaimedAccess, decode_config_address


class Tiny(VirtioDevice):
    device_id = 4
    queue_names = ("q",)

    def __init__(self, name="tiny", config_len=0):
        super().__init__(name)
        self.config = bytearray(range(1, config_len + 1))


@pytest.fixture
def memory():
    with GuestMemory(1 << 20) as m:
        yield m


@pytest.fixture
def bus(memory):
    b = PciBus(memory)
    b.add_device(Tiny("first", 12))
    b.add_device(Tiny("second"))
    return b


def merge(word, portoff, size, value):
    mask = (((1 << (8 * size)) - 1) << (8 * portoff)) & 0xFFFFFFFF
    return (word & ~mask) | ((value << (8 * portoff)) & mask)


@settings(max_examples=80)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF),
                          st.booleans()), min_size=1, max_size=30))
def test_address_latch_bytes_words_and_dwords_at_every_offset(ops):
    with GuestMemory(PAGE_SIZE) as m:
        bus = PciBus(m)
        latch = 0
        for portoff, size, value, is_write in ops:
            if is_write:
                assert bus.access(PIO, 0xCF8 + portoff, size, True, value) == 0
                latch = merge(latch, portoff, size, value & ((1 << (8 * size)) - 1))
            else:
                got = bus.access(PIO, 0xCF8 + portoff, size, False)
                assert got == (latch >> (8 * portoff)) & ((1 << (8 * size)) - 1)
        assert bus.config_address == latch


def test_data_port_at_every_byte_offset_and_width(bus):
    # Select slot 1, register 0 (vendor 0x1AF4, device 0x1044) through byte writes
    # of the latch, as a guest doing outb would.
    for i, byte in enumerate((0x80000800).to_bytes(4, "little")):
        bus.access(PIO, 0xCF8 + i, 1, True, byte)
    word = 0x10441AF4
    for portoff in range(4):
        for size in (1, 2, 4):
            expected = (word >> (8 * portoff)) & ((1 << (8 * size)) - 1)
            assert bus.access(PIO, 0xCFC + portoff, size, False) == expected


def test_decode_config_address():
    a = decode_config_address(0x80FF_F8FC)
    assert a == {"enabled": 1, "bus": 0xFF, "device": 31, "function": 0, "register": 63}
    assert decode_config_address(0x0000_0104)["function"] == 1


@pytest.mark.parametrize("port", [0x60, 0x70, 0x3F8, 0xCF7, 0xD00, 0x1F0, 0x80])
def test_unknown_ports_read_all_ones_and_ignore_writes(bus, port):
    for size in (1, 2, 4):
        assert bus.access(PIO, port, size, False) == (1 << (8 * size)) - 1
        assert bus.access(PIO, port, size, True, 0x12) == 0


def test_keyboard_status_port_reads_one(bus):
    assert bus.access(PIO, 0x64, 1, False) == 1


def test_port_access_of_a_strange_size_is_refused(bus):
    with pytest.raises(UnclaimedAccess) as e:
        bus.access(PIO, 0xCFC, 3, False)
    assert e.value.trap == 13


def test_unknown_space_is_a_programming_error(bus):
    with pytest.raises(ValueError):
        bus.access("dma", 0, 1, False)


def test_devices_take_slots_irqs_and_aligned_windows_above_ram(memory, bus):
    first, second = bus.devices
    assert (first.slot, second.slot) == (1, 2)
    assert (first.irq_line, second.irq_line) == (1, 2)
    assert bus.mmio_base == memory.size + 256 * PAGE_SIZE
    assert first.mmio_addr == bus.mmio_base and first.mmio_size == 72
    assert second.mmio_addr == first.mmio_addr + 128 and second.mmio_size == 60
    assert second.mmio_addr % 64 == 0
    assert bus.mmio_limit == second.mmio_addr + 64
    assert [line.split(":")[0] for line in bus.describe()] == ["device 1", "device 2"]
    assert "first" in bus.describe()[0]


def test_find_mmio_region_edges(bus):
    first, second = bus.devices
    assert bus.find_mmio_region(first.mmio_addr) == (first, 0)
    assert bus.find_mmio_region(first.mmio_addr + 71) == (first, 71)
    assert bus.find_mmio_region(first.mmio_addr + 72) is None     # in the window, past BAR0 use
    assert bus.find_mmio_region(second.mmio_addr + 59) == (second, 59)
    assert bus.find_mmio_region(second.mmio_addr + 60) is None
    assert bus.find_mmio_region(first.mmio_addr - 1) is None
    assert bus.find_mmio_region(0) is None


def test_mmio_outside_every_device_is_unclaimed(bus):
    for addr in (0, bus.mmio_base - 4, bus.mmio_limit, bus.devices[0].mmio_addr + 100):
        with pytest.raises(UnclaimedAccess) as e:
            bus.access(MMIO, addr, 4, False)
        assert e.value.trap == 14 and e.value.rule == "MMIO touching (not a device)"
        assert isinstance(e.value, GuestError)


def test_mmio_reaches_the_right_device(bus):
    first, second = bus.devices
    assert bus.access(MMIO, first.mmio_addr + 18, 2, False) == 1      # num_queues
    bus.access(MMIO, second.mmio_addr + 20, 1, True, 1)              # ACKNOWLEDGE
    assert (first.status, second.status) == (0, 1)
    assert bus.access(MMIO, second.mmio_addr + 20, 1, False) == 1


def test_irq_sink_gets_the_devices_line_even_if_set_late(bus):
    seen = []
    bus.irq_sink = seen.append
    bus.devices[1].interrupt(0)
    bus.devices[0].interrupt(0)
    assert seen == [2, 1]


def test_at_most_31_devices(memory):
    bus = PciBus(memory)
    for i in range(31):
        bus.add_device(Tiny(f"d{i}"))
    assert bus.devices[-1].slot == 31
    with pytest.raises(LauncherError, match="31 PCI devices"):
        bus.add_device(Tiny("one too many"))


def test_reset_all_resets_every_device(bus):
    for t in bus.devices:
        t.emulate_mmio_write(20, 1, 1)
    bus.reset_all()
    assert [t.status for t in bus.devices] == [0, 0]


def test_explicit_mmio_base(memory):
    bus = PciBus(memory, mmio_base=0xE0000000)
    t = bus.add_device(Tiny())
    assert t.mmio_addr == 0xE0000000
    assert t.pci_config["bar0"] == 0xE0000000
    assert t.notify_address == 0xE0000000 + 56


def test_verbose_lines_go_to_the_debug_log(bus, caplog):
    import logging
    with caplog.at_level(logging.DEBUG, logger="lguest.pci"):
        bus.access(PIO, 0xCF8, 4, True, 0x80000800)
        bus.access(PIO, 0xCF8, 4, True, 0x00000800)
        bus.devices[0].emulate_mmio_write(20, 1, 0)
    text = caplog.text
    assert "PCI: 0x80000800/ffffffff: bus 0 dev 1 func 0 reg 0" in text
    assert "PCI DISABLED" in text
    assert "first: device status -> 0x0" in text and "Resetting device first" in text
