"""PCI config space: reads and writes of every width at every offset, through the
0xCF8/0xCFC ports, against a model of struct pci_config written out byte by byte
from the seed and the virtio 1.0 spec (not from lguest.pci.config's tables): the
model and PciConfigMachine are lguest.testing's (lguest/testing/pci_config.py)."""

import pytest
from hypothesis import given, settings

from lguest.devices.base import VirtioDevice
from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.pci import config as pc
from lguest.pci.bus import MMIO, PIO, PciBus, UnclaimedAccess
from lguest.testing import PciConfigMachine
from lguest.testing.pci_config import (cfg_read, cfg_write, config_writes, expected_image,
                                       model_read, model_write)


class Console(VirtioDevice):
    device_id = 3
    queue_names = ("input", "output")

    def __init__(self):
        super().__init__("console")
        self.config = bytearray(12)


class Rng(VirtioDevice):
    device_id = 4
    queue_names = ("input",)


@pytest.fixture
def bus():
    with GuestMemory(1 << 20) as memory:
        b = PciBus(memory)
        b.add_device(Console())
        b.add_device(Rng())
        yield b


def test_every_width_at_every_offset_reads_as_the_model(bus):
    console, rng = bus.devices
    images = {1: expected_image(3, 0x07, 0x00, 1, console.mmio_addr, 12),
              2: expected_image(4, 0xFF, 0x00, 2, rng.mmio_addr, 0)}
    for slot, img in images.items():
        for off in range(148):      # 148: pci_cfg_data, the window (below)
            for size in (1, 2, 4):
                assert cfg_read(bus, slot, off, size) == model_read(img, off, size), (slot, off, size)
        for off in range(152, 256, 1):
            for size in (1, 2, 4):
                assert cfg_read(bus, slot, off, size) == (1 << (8 * size)) - 1


def test_host_bridge_then_empty_slots(bus):
    bridge = bytearray(152)
    bridge[11] = 0x06
    for off in range(0, 148, 2):
        assert cfg_read(bus, 0, off, 2) == model_read(bridge, off, 2)
    for slot in range(3, 32):
        assert cfg_read(bus, slot, 0, 4) == 0xFFFFFFFF


@pytest.mark.parametrize("latch", [0x00000800,            # not enabled
                                   0x80000900,            # function 1
                                   0x80010800])           # bus 1
def test_latch_that_names_no_one_reads_all_ones(bus, latch):
    bus.access(PIO, 0xCF8, 4, True, latch)
    for size in (1, 2, 4):
        assert bus.access(PIO, 0xCFC, size, False) == (1 << (8 * size)) - 1
    with pytest.raises(UnclaimedAccess) as e:
        bus.access(PIO, 0xCFC, 4, True, 0)
    assert e.value.rule == "Attempt to write to port" and e.value.trap == 13


@settings(max_examples=60)
@given(config_writes)
def test_writes_of_every_width_at_every_offset_follow_the_model(ops):
    with GuestMemory(1 << 20) as memory:
        bus = PciBus(memory)
        console = bus.add_device(Console())
        img = expected_image(3, 0x07, 0x00, 1, console.mmio_addr, 12)
        for off, size, value in ops:
            if off >> 2 == 37:
                continue    # the window has its own test
            accepted = model_write(img, off, size, value & ((1 << (8 * size)) - 1), 72)
            try:
                cfg_write(bus, 1, off, size, value)
                assert accepted, (off, size)
            except UnclaimedAccess:
                assert not accepted, (off, size)
        assert bytes(bus.configs[1].space) == bytes(img)


def test_bar0_sizing_by_writing_all_ones(bus):
    console, rng = bus.devices
    cfg_write(bus, 1, 16, 4, 0xFFFFFFFF)
    assert cfg_read(bus, 1, 16, 4) == 0xFFFFFF80        # 72 bytes -> a 128-byte window
    cfg_write(bus, 2, 16, 4, 0xFFFFFFFF)
    assert cfg_read(bus, 2, 16, 4) == 0xFFFFFFC0        # 60 bytes -> 64
    cfg_write(bus, 1, 16, 4, console.mmio_addr)
    assert cfg_read(bus, 1, 16, 4) == console.mmio_addr


def test_the_field_table_matches_the_seed_struct():
    assert pc.CONFIG_SIZE == 152
    assert pc.FIELDS["irq_line"] == (60, 1)
    assert pc.FIELDS["notify.notify_off_multiplier"] == (96, 4)
    assert pc.FIELDS["cfg_access.pci_cfg_data"] == (148, 4)
    # No two fields overlap, and together they cover the struct exactly.
    covered = bytearray(152)
    for off, size in pc.FIELDS.values():
        for b in range(off, off + size):
            covered[b] += 1
    assert set(covered) == {1}


def test_class_codes_per_device_type():
    with GuestMemory(1 << 20) as memory:
        bus = PciBus(memory)
        for device_type, expected in ((1, (0x02, 0x00)), (2, (0x01, 0x80)), (3, (0x07, 0x00)),
                                      (4, (0xFF, 0x00)), (9, (0xFF, 0x00))):
            dev = VirtioDevice(f"t{device_type}")
            dev.device_id = device_type
            t = bus.add_device(dev)
            assert (t.pci_config["class"], t.pci_config["subclass"]) == expected
            assert t.pci_config["device_id"] == 0x1040 + device_type


# -- the PCI_CFG window (L:434) -------------------------------------------------------

def window(bus, slot, bar, offset, length):
    cfg_write(bus, slot, 136, 1, bar)
    cfg_write(bus, slot, 140, 4, offset)
    cfg_write(bus, slot, 144, 4, length)


def test_window_reads_and_writes_bar0(bus):
    console = bus.devices[0]
    window(bus, 1, 0, 20, 1)
    cfg_write(bus, 1, 148, 1, 1)                   # ACKNOWLEDGE through the window
    assert console.status == 1
    window(bus, 1, 0, 18, 2)
    assert cfg_read(bus, 1, 148, 4) == 2           # num_queues, read at width 2
    assert cfg_read(bus, 1, 150, 2) == 0
    window(bus, 1, 0, 20, 1)
    cfg_write(bus, 1, 148, 4, 0x300)               # one byte of it, 0: a reset
    assert console.status == 0


@pytest.mark.parametrize("bar,offset,length", [(1, 0, 1), (0, 72, 1), (0, 70, 4), (0, 20, 3),
                                               (0, 18, 4), (0, 0, 0)])
def test_invalid_window_refuses_writes_and_faults_reads(bus, bar, offset, length):
    window(bus, 1, bar, offset, length)
    with pytest.raises(UnclaimedAccess):
        cfg_write(bus, 1, 148, 4, 1)
    with pytest.raises(GuestError) as e:
        cfg_read(bus, 1, 148, 4)
    assert e.value.rule == "Invalid cfg_access to bar"


def test_reading_the_window_unset_is_the_drivers_fault(bus):
    # As in the seed: pci_cfg_data with cap.length 0 is an invalid BAR access.
    for size in (1, 2, 4):
        with pytest.raises(GuestError) as e:
            cfg_read(bus, 1, 148, size)
        assert e.value.rule == "Invalid cfg_access to bar"


def test_window_of_the_host_bridge_is_never_valid(bus):
    window(bus, 0, 0, 0, 4)
    with pytest.raises(GuestError):
        cfg_read(bus, 0, 148, 4)


# -- the extension point for a backend's own capability and BAR (L:405, L:435) ---------

MSIX_CAP_ID = 0x11


def test_added_capability_joins_the_chain_and_routes_its_writes(bus):
    config = bus.configs[1]
    writes = []

    def on_write(cfg, reg, portoff, size, value):
        writes.append((reg, portoff, size, value))
        return portoff == 2          # only message control (bytes 2-3) is writable

    body = (0).to_bytes(2, "little") + (1).to_bytes(4, "little") + (0x801).to_bytes(4, "little")
    at = config.add_capability(MSIX_CAP_ID, body, on_write)
    assert at == 152
    assert cfg_read(bus, 1, 116 + 1, 1) == 152            # device cap -> the new one
    assert cfg_read(bus, 1, 152, 2) == MSIX_CAP_ID         # id, next 0
    assert cfg_read(bus, 1, 156, 4) == 1 and cfg_read(bus, 1, 160, 4) == 0x801
    assert cfg_read(bus, 1, 164, 4) == 0xFFFFFFFF          # past its end: nothing
    cfg_write(bus, 1, 154, 2, 0x8000)
    assert writes == [(38, 2, 2, 0x8000)]
    with pytest.raises(UnclaimedAccess):
        cfg_write(bus, 1, 156, 4, 0)


def test_capability_on_a_config_without_a_chain_starts_one():
    config = pc.init_pci_host_bridge()
    at = config.add_capability(MSIX_CAP_ID, b"\x00\x00")
    assert config["capabilities"] == at and config["status"] & pc.PCI_STATUS_CAP_LIST
    assert config.space[at + 1] == 0
    assert config.write(at // 4, 0, 4, 0) is False          # no on_write: read-only
    while len(config.space) + 16 <= 256:
        config.add_capability(9, bytes(10))
    with pytest.raises(ValueError):
        config.add_capability(9, bytes(200))


def test_an_extra_sized_bar_and_mmio_window(bus):
    class Table:
        mmio_size = 32

        def __init__(self):
            self.regs = bytearray(32)

        def emulate_mmio_read(self, off, size):
            return int.from_bytes(self.regs[off:off + size], "little")

        def emulate_mmio_write(self, off, size, value):
            self.regs[off:off + size] = value.to_bytes(size, "little")

    config = bus.configs[1]
    addr = bus.allocate_mmio(32)
    config.bar_sizes[1] = 32
    config["bar1"] = addr
    cfg_write(bus, 1, 20, 4, 0xFFFFFFFF)
    assert cfg_read(bus, 1, 20, 4) == 0xFFFFFFE0
    table = Table()
    bus.add_mmio_window(addr, table)
    bus.access(MMIO, addr + 4, 4, True, 0xFEE00000)
    assert bus.access(MMIO, addr + 4, 4, False) == 0xFEE00000
    assert bus.find_mmio_region(addr + 32) is None
    first = bus.devices[0]
    assert bus.find_mmio_region(first.mmio_addr + 8) == (first, 8)


class ConsoleConfig(PciConfigMachine):
    def make_device(self):
        return Console()


TestConsoleConfigMachine = ConsoleConfig.TestCase
TestConsoleConfigMachine.settings = settings(max_examples=30, stateful_step_count=40,
                                             deadline=None)
