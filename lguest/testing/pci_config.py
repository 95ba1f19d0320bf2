"""PCI config space as a model: struct pci_config written out byte by byte from the seed
and the virtio 1.0 spec (not from lguest.pci.config's tables), the 0xCF8/0xCFC port
accesses a driver makes, and a RuleBasedStateMachine that checks the config space of a
device you supply against the model, for reads and writes of every width at every
offset.

    class MyDeviceConfig(PciConfigMachine):
        def make_device(self):
            return MyDevice()

    TestMyDeviceConfig = MyDeviceConfig.TestCase
"""

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ..devices.base import VirtioDevice
from ..memory import GuestMemory
from ..pci.bus import PIO, PciBus, UnclaimedAccess

__all__ = ["PciConfigMachine", "CLASS_CODES", "cfg_read", "cfg_write", "config_writes",
           "device_config_image", "expected_image", "model_read", "model_write"]

# (class, subclass) by virtio device type: network, mass storage, communication.
CLASS_CODES = {1: (0x02, 0x00), 2: (0x01, 0x80), 3: (0x07, 0x00)}
# BAR0: common config 56, notify 2, ISR 1, padding 1, then the device's config.
BAR0_FIXED = 60
WINDOW_REG = 37                  # pci_cfg_data: the PCI_CFG window has its own tests


def put(image, off, size, value):
    image[off:off + size] = value.to_bytes(size, "little")


def expected_image(device_type, cls, subclass, irq, bar0, config_len):
    """struct pci_config as init_pci_config() + set_device_config() leave it."""
    img = bytearray(152)
    put(img, 0, 2, 0x1AF4)
    put(img, 2, 2, 0x1040 + device_type)
    put(img, 6, 2, 0x10)                     # status: capability list
    img[8] = 1                               # revision
    img[10], img[11] = subclass, cls
    put(img, 16, 4, bar0)
    put(img, 46, 2, 0x40)                    # subsystem device id
    img[52] = 64                             # capabilities pointer
    img[60] = irq
    # struct virtio_pci_cap: vndr 9, next, len, cfg_type, bar 0, pad, offset, length
    def cap(at, nxt, length, cfg_type, offset, bar_len):
        img[at:at + 4] = bytes([9, nxt, length, cfg_type])
        put(img, at + 8, 4, offset)
        put(img, at + 12, 4, bar_len)
    cap(64, 80, 16, 1, 0, 56)                # common config
    cap(80, 100, 20, 2, 56, 2)               # notify (multiplier 0 at 96)
    cap(100, 132, 16, 3, 58, 1)              # ISR
    cap(116, 0, 16, 4, 60, config_len)       # device config
    cap(132, 116 if config_len else 0, 20, 5, 0, 0)   # PCI_CFG window
    return img


def device_config_image(device, transport):
    """The model's image for a device on a bus (its IRQ line and BAR0 from the bus)."""
    cls, subclass = CLASS_CODES.get(device.device_id, (0xFF, 0x00))
    return expected_image(device.device_id, cls, subclass, transport.pci_config["irq_line"],
                          transport.mmio_addr, len(device.config))


def cfg_read(bus, slot, off, size, port_off=None):
    bus.access(PIO, 0xCF8, 4, True, 0x80000000 | (slot << 11) | (off & 0xFC))
    return bus.access(PIO, 0xCFC + (off & 3 if port_off is None else port_off), size, False)


def cfg_write(bus, slot, off, size, value):
    bus.access(PIO, 0xCF8, 4, True, 0x80000000 | (slot << 11) | (off & 0xFC))
    return bus.access(PIO, 0xCFC + (off & 3), size, True, value)


def model_read(img, off, size):
    word = int.from_bytes(img[off & ~3:(off & ~3) + 4], "little")
    return (word >> (8 * (off & 3))) & ((1 << (8 * size)) - 1)


def bar0_sized(value, mmio_size):
    size = 1
    while size < mmio_size:
        size <<= 1
    return value & ~(size - 1) & 0xFFFFFFFF


def model_write(img, off, size, value, mmio_size):
    """The seed's pci_data_iowrite(); returns False where it refuses (bad_io)."""
    reg, portoff = off >> 2, off & 3
    word = int.from_bytes(img[reg * 4:reg * 4 + 4], "little")
    mask = (((1 << (8 * size)) - 1) << (8 * portoff)) & 0xFFFFFFFF
    merged = (word & ~mask) | ((value << (8 * portoff)) & mask)
    if reg == 4:
        new = bar0_sized(merged, mmio_size)
    elif 5 <= reg <= 10 or reg == 12 or reg in (34, 35, 36):
        new = merged
    elif reg == 3:
        new = (word & ~(mask & 0xFFFF)) | (merged & mask & 0xFFFF)
    elif reg == 1 and size == 2:
        return True
    else:
        return False
    img[reg * 4:reg * 4 + 4] = new.to_bytes(4, "little")
    return True


writes = st.lists(st.tuples(st.integers(0, 147), st.sampled_from([1, 2, 4]),
                            st.integers(0, 0xFFFFFFFF)), min_size=1, max_size=40)


config_writes = st.lists(st.tuples(st.integers(0, 147), st.sampled_from([1, 2, 4]),
                                   st.integers(0, 0xFFFFFFFF)), min_size=1, max_size=40)


class PciConfigMachine(RuleBasedStateMachine):
    """The config space of make_device()'s device, in slot 1, against the model."""

    def make_device(self) -> VirtioDevice:
        """Override: a fresh device for each run of the machine."""
        raise NotImplementedError("a PciConfigMachine needs make_device()")

    @initialize()
    def setup(self) -> None:
        """Start a run: make_device()'s device in slot 1 of a fresh bus."""
        self.memory = GuestMemory(1 << 20)
        self.bus = PciBus(self.memory)
        self.device = self.make_device()
        self.transport = self.bus.add_device(self.device)
        self.image = device_config_image(self.device, self.transport)
        self.bar0_size = BAR0_FIXED + len(self.device.config)

    def teardown(self) -> None:
        if hasattr(self, "memory"):
            self.bus.reset_all()
            self.memory.close()

    @rule(off=st.integers(0, 147), size=st.sampled_from([1, 2, 4]),
          value=st.one_of(st.integers(0, 0xFFFFFFFF), st.just(0xFFFFFFFF)))
    def write(self, off, size, value):
        if off >> 2 == WINDOW_REG:
            return
        accepted = model_write(self.image, off, size, value & ((1 << (8 * size)) - 1),
                               self.bar0_size)
        try:
            cfg_write(self.bus, 1, off, size, value)
            assert accepted, f"the model refuses a {size}-byte write at {off}"
        except UnclaimedAccess:
            assert not accepted, f"the model accepts a {size}-byte write at {off}"

    @rule(off=st.integers(0, 147), size=st.sampled_from([1, 2, 4]))
    def read(self, off, size):
        if off >> 2 == WINDOW_REG:
            return
        assert cfg_read(self.bus, 1, off, size) == model_read(self.image, off, size), (off, size)

    @rule(off=st.integers(152, 255), size=st.sampled_from([1, 2, 4]))
    def read_past_the_struct(self, off, size):
        if len(self.bus.configs[1].space) <= 152:
            assert cfg_read(self.bus, 1, off, size) == (1 << (8 * size)) - 1

    @invariant()
    def space_is_the_model(self):
        if hasattr(self, "bus"):
            assert bytes(self.bus.configs[1].space[:152]) == bytes(self.image)
