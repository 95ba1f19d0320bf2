"""A guest-side virtio-PCI driver, playing Linux's virtio_pci_modern.

#L:440 To test the transport honestly we need a driver that does what Linux does, in
# Linux's order, through nothing but port and MMIO accesses: the `io(space, addr, size,
# is_write, value)` callable is either PciBus.access itself or a backend's trap path.
# Enumeration (drivers/pci/probe.c) reads each slot's vendor and device id through
# 0xCF8/0xCFC and sizes BAR0 by writing all ones; virtio_pci_modern's probe follows the
# vendor capabilities to the common, notify, ISR and device config regions; then
# virtio_dev_probe() resets the device and walks the status machine (L:415):
# ACKNOWLEDGE, DRIVER, features (both 32-bit windows), FEATURES_OK and a read back,
# queue setup (select, size, the three addresses, notify offset) with every queue
# enabled last, and DRIVER_OK. The rings themselves are L:280.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from ..pci.bus import MMIO, PCI_CONFIG_ADDR, PCI_CONFIG_DATA, PIO
from ..pci.config import (FIELDS, PCI_CAP_ID_VNDR, PCI_STATUS_CAP_LIST,
                          PCI_VENDOR_ID_REDHAT_QUMRANET, VIRTIO_PCI_CAP_COMMON_CFG,
                          VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
                          VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG)
from ..pci.transport import REG
from ..virtio import (F_VERSION_1, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
                      STATUS_FEATURES_OK, bit)
from .vring import DriverError, DriverQueue

if TYPE_CHECKING:
    from ..memory import Memory
    from .vring import GuestAllocator

MODERN_DEVICE_IDS = range(0x1040, 0x1080)   # virtio_pci_modern_probe(): 0x1040 + type
MAX_SLOTS = 32
PCI_COMMAND_MEMORY = 0x2


class PciConfigAccess:
    """Configuration mechanism #1 from the guest's side (arch/x86/pci/direct.c)."""

    def __init__(self, io):
        self.io = io

    def _select(self, bus, slot, offset):
        self.io(PIO, PCI_CONFIG_ADDR, 4, True,
                0x80000000 | (bus << 16) | (slot << 11) | (offset & 0xFC))

    def read(self, bus, slot, offset, size):
        self._select(bus, slot, offset)
        return self.io(PIO, PCI_CONFIG_DATA + (offset & 3), size, False)

    def write(self, bus, slot, offset, size, value):
        self._select(bus, slot, offset)
        self.io(PIO, PCI_CONFIG_DATA + (offset & 3), size, True, value)


class VirtioPciDriver:
    """Finds the virtio devices on bus 0 and hands out a DeviceHandle for each."""

    def __init__(self, io: Callable[..., int], memory: Memory, allocator: GuestAllocator):
        self.io = io
        self.memory = memory
        self.allocator = allocator
        self.config = PciConfigAccess(io)

    def probe(self, bus: int = 0) -> list[DeviceHandle]:
        """Enumerate the bus: a DeviceHandle for each modern virtio device found."""
        handles = []
        for slot in range(MAX_SLOTS):
            ids = self.config.read(bus, slot, 0, 4)
            # pci_bus_generic_read_dev_vendor_id(): all ones or zeros means no one there.
            if ids in (0xFFFFFFFF, 0):
                continue
            vendor, device_id = ids & 0xFFFF, ids >> 16
            if vendor == PCI_VENDOR_ID_REDHAT_QUMRANET and device_id in MODERN_DEVICE_IDS:
                handles.append(DeviceHandle(self, bus, slot, device_id - 0x1040))
        return handles


class DeviceHandle:
    """One virtio-PCI device, as virtio_pci_modern and virtio core drive it."""

    def __init__(self, driver: VirtioPciDriver, bus: int, slot: int, device_type: int):
        self.driver, self.io, self.memory = driver, driver.io, driver.memory
        self.bus, self.slot, self.device_type = bus, slot, device_type
        self.queues = []
        self.notify_addrs = []
        self.features = 0
        self.irq_line = self.cfg_read(FIELDS["irq_line"][0], 1)
        self.bar0 = self._size_and_enable_bar0()
        self.caps = self._find_capabilities()
        self._map_regions()

    def cfg_read(self, offset: int, size: int) -> int:
        """Read the device's PCI config space through 0xCF8/0xCFC."""
        return self.driver.config.read(self.bus, self.slot, offset, size)

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        """Write the device's PCI config space through 0xCF8/0xCFC."""
        self.driver.config.write(self.bus, self.slot, offset, size, value)

    #L:441 __pci_read_base(): "PCI uses a weird way to determine the BAR size"
    # (L:402). Read the BAR, write all ones, read what stuck, put the address back;
    # the size is the lowest bit that stuck. Then pci_enable_device() sets the memory
    # decode bit in the 16-bit command register (which our device ignores).
    def _size_and_enable_bar0(self):
        bar_off = FIELDS["bar0"][0]
        address = self.cfg_read(bar_off, 4)
        self.cfg_write(bar_off, 4, 0xFFFFFFFF)
        sized = self.cfg_read(bar_off, 4) & ~0xF
        self.cfg_write(bar_off, 4, address)
        if sized == 0:
            raise DriverError(f"slot {self.slot}: BAR0 is not implemented")
        self.bar0_size = sized & -sized
        command = self.cfg_read(FIELDS["command"][0], 2)
        self.cfg_write(FIELDS["command"][0], 2, command | PCI_COMMAND_MEMORY)
        return address & ~0xF

    #L:442 virtio_pci_find_capability(): follow the list from the capabilities
    # pointer, taking the first vendor-specific capability of each cfg_type (as Linux
    # does), with a bound on the walk (Linux's TTL of 48) against a looping chain.
    def _find_capabilities(self):
        if not self.cfg_read(FIELDS["status"][0], 2) & PCI_STATUS_CAP_LIST:
            raise DriverError(f"slot {self.slot}: no capability list")
        caps = {}
        pos = self.cfg_read(FIELDS["capabilities"][0], 1)
        for _ in range(48):
            if pos < 0x40:
                break
            pos &= ~3
            entry = self.cfg_read(pos, 2)
            if entry & 0xFF == PCI_CAP_ID_VNDR:
                cfg_type = self.cfg_read(pos + 3, 1)
                caps.setdefault(cfg_type, {
                    "pos": pos, "bar": self.cfg_read(pos + 4, 1),
                    "offset": self.cfg_read(pos + 8, 4), "length": self.cfg_read(pos + 12, 4)})
            pos = entry >> 8
        return caps

    def _map_regions(self):
        """vp_modern_map_capability(): each region must lie inside BAR0."""
        for need in (VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG):
            if need not in self.caps:
                raise DriverError(f"slot {self.slot}: missing virtio capability type {need}")
        for cap in self.caps.values():
            if cap["offset"] + cap["length"] > self.bar0_size and cap["length"]:
                raise DriverError(f"slot {self.slot}: capability outside BAR0: {cap}")
        self.common = self.bar0 + self.caps[VIRTIO_PCI_CAP_COMMON_CFG]["offset"]
        self.isr = self.bar0 + self.caps[VIRTIO_PCI_CAP_ISR_CFG]["offset"]
        notify = self.caps[VIRTIO_PCI_CAP_NOTIFY_CFG]
        self.notify_base = self.bar0 + notify["offset"]
        self.notify_len = notify["length"]
        self.notify_multiplier = self.cfg_read(notify["pos"] + 16, 4)
        device = self.caps.get(VIRTIO_PCI_CAP_DEVICE_CFG)
        self.device_cfg = self.bar0 + device["offset"] if device else None
        self.device_cfg_len = device["length"] if device else 0

    # -- raw registers (tests may misbehave through these) ----------------------------
    def read_common(self, name: str, size: int | None = None) -> int:
        """Read a common-config register by name (its natural width unless `size`)."""
        off, natural = REG[name]
        return self.io(MMIO, self.common + off, size or natural, False)

    def write_common(self, name: str, value: int, size: int | None = None) -> None:
        """Write a common-config register by name (its natural width unless `size`)."""
        off, natural = REG[name]
        self.io(MMIO, self.common + off, size or natural, True, value)

    def mmio_read(self, off: int, size: int) -> int:
        """Read `size` bytes at offset `off` of BAR0."""
        return self.io(MMIO, self.bar0 + off, size, False)

    def mmio_write(self, off: int, size: int, value: int) -> None:
        """Write `size` bytes at offset `off` of BAR0."""
        self.io(MMIO, self.bar0 + off, size, True, value)

    def get_status(self) -> int:
        """The device_status register."""
        return self.read_common("device_status")

    def add_status(self, status_bit: int) -> None:
        """virtio_add_status(): read, OR in the bit, write back."""
        self.write_common("device_status", self.get_status() | status_bit)

    #L:443 vp_reset(): "0 status means a reset", then wait until the device reads
    # back 0 ("Flush out the status write, and flush in device writes, including
    # MSI-X interrupts, if any"). Our device resets at once; a device that did not
    # would be a bug we want to see, so we read only a bounded number of times.
    def reset(self) -> None:
        """vp_reset(): write 0 to device_status and wait until it reads back 0."""
        self.write_common("device_status", 0)
        for _ in range(100):
            if self.get_status() == 0:
                break
        else:
            raise DriverError(f"slot {self.slot}: device status stays non-zero after reset")
        self.queues, self.notify_addrs, self.features = [], [], 0

    def device_features(self) -> int:
        """All 64 feature bits the device offers."""
        self.write_common("device_feature_select", 0)
        low = self.read_common("device_feature")
        self.write_common("device_feature_select", 1)
        return low | (self.read_common("device_feature") << 32)

    #L:444 virtio_dev_probe(): reset, ACKNOWLEDGE, DRIVER, read the device's
    # features, accept a subset (all we are offered unless told otherwise), write both
    # halves, FEATURES_OK, and read the status back (virtio_features_ok(): "device
    # refuses features"). A modern device must offer VERSION_1.
    def negotiate(self, features: int | None = None, *, force: bool = False) -> int:
        """Reset and negotiate up to FEATURES_OK; return the features accepted."""
        self.reset()
        self.add_status(STATUS_ACKNOWLEDGE)
        self.add_status(STATUS_DRIVER)
        offered = self.device_features()
        if not offered & bit(F_VERSION_1):
            raise DriverError(f"slot {self.slot}: modern device without VIRTIO_F_VERSION_1")
        wanted = offered if features is None else features
        accepted = wanted if force else wanted & offered
        self.write_common("driver_feature_select", 0)
        self.write_common("driver_feature", accepted & 0xFFFFFFFF)
        self.write_common("driver_feature_select", 1)
        self.write_common("driver_feature", accepted >> 32)
        self.add_status(STATUS_FEATURES_OK)
        if not self.get_status() & STATUS_FEATURES_OK:
            raise DriverError(f"slot {self.slot}: device refuses features {accepted:#x}")
        self.features = accepted
        return accepted

    #L:445 vp_modern_find_vqs() / setup_vq(): for each queue, select it, read its
    # size (0: not available), refuse one already enabled, lay out a ring (L:285),
    # tell the device its size and the three addresses (low then high halves, as
    # vp_iowrite64_twopart), and find its notify address from queue_notify_off and
    # notify_off_multiplier. "Select and activate all queues. Has to be done last:
    # once we do this, there's no way to go back except reset."
    def setup_queues(self, sizes: Sequence[int] | None = None) -> list[DriverQueue | None]:
        """Lay out and enable every queue the device has (None where it has none)."""
        count = self.read_common("num_queues")
        for qi in range(count):
            self.write_common("queue_select", qi)
            max_size = self.read_common("queue_size")
            if max_size == 0 or self.read_common("queue_enable"):
                self.queues.append(None)
                self.notify_addrs.append(None)
                continue
            size = min(sizes[qi], max_size) if sizes else max_size
            queue = DriverQueue(self.memory, self.driver.allocator, size, features=self.features)
            if size != max_size:
                self.write_common("queue_size", size)
            for part, addr in (("desc", queue.desc_addr), ("avail", queue.avail_addr),
                               ("used", queue.used_addr)):
                self.write_common(f"queue_{part}_lo", addr & 0xFFFFFFFF)
                self.write_common(f"queue_{part}_hi", addr >> 32)
            notify_off = self.read_common("queue_notify_off") * self.notify_multiplier
            if notify_off + 2 > self.notify_len:
                raise DriverError(f"slot {self.slot}: queue {qi} notify offset {notify_off} "
                                  f"outside notify region of {self.notify_len}")
            self.queues.append(queue)
            self.notify_addrs.append(self.notify_base + notify_off)
        for qi, queue in enumerate(self.queues):
            if queue is not None:
                self.write_common("queue_select", qi)
                self.write_common("queue_enable", 1)
        return self.queues

    def driver_ok(self) -> None:
        """virtio_device_ready(): the device is live."""
        self.add_status(STATUS_DRIVER_OK)

    def queue(self, qi: int) -> DriverQueue | None:
        """The driver's half of queue `qi`."""
        return self.queues[qi]

    #L:446 vp_notify(): write the queue's index to its notify address, but only if
    # virtqueue_kick_prepare() says the device wants to hear (L:291).
    def kick(self, qi: int) -> bool:
        """Notify the device of queue `qi` if it wants to hear; True if we did."""
        if self.queues[qi].kick_prepare():
            self.notify(qi)
            return True
        return False

    def notify(self, qi: int) -> None:
        """Write queue `qi`'s index to its notify address, unconditionally."""
        self.io(MMIO, self.notify_addrs[qi], 2, True, qi)

    def ack_interrupt(self) -> int:
        """vp_interrupt(): reading the ISR acknowledges the interrupt and clears it."""
        return self.io(MMIO, self.isr, 1, False)

    #L:447 Reading device config (virtio_cread()): read config_generation, the
    # field, and the generation again, until the two agree, so a multi-part value is
    # never torn by a change in between. Fields of 1, 2 and 4 bytes take one access of
    # their width, 8 bytes two 32-bit ones (vp_get()), anything else bytes.
    def read_config(self, off: int, size: int, *, max_tries: int = 16) -> int:
        """A device-config field, read until config_generation holds still."""
        for _ in range(max_tries):
            before = self.read_common("config_generation")
            value = self._read_config_once(off, size)
            if self.read_common("config_generation") == before:
                return value
        raise DriverError(f"slot {self.slot}: config_generation keeps changing")

    def _read_config_once(self, off, size):
        if self.device_cfg is None or off < 0 or off + size > self.device_cfg_len:
            raise DriverError(f"slot {self.slot}: config read {off}+{size} outside "
                              f"{self.device_cfg_len} bytes")
        addr = self.device_cfg + off
        if size in (1, 2, 4):
            return self.io(MMIO, addr, size, False)
        if size == 8:
            return self.io(MMIO, addr, 4, False) | (self.io(MMIO, addr + 4, 4, False) << 32)
        return int.from_bytes(bytes(self.io(MMIO, addr + i, 1, False) for i in range(size)),
                              "little")

    def write_config(self, off: int, size: int, value: int) -> None:
        """Write a device-config field."""
        if self.device_cfg is None:
            raise DriverError(f"slot {self.slot}: device has no config")
        self.io(MMIO, self.device_cfg + off, size, True, value)

    #L:448 The VIRTIO_PCI_CAP_PCI_CFG window (L:434), as a driver without a mapping
    # of BAR0 would use it: set bar, offset and length, then touch pci_cfg_data.
    def _window_setup(self, off, length):
        pos = self.caps[VIRTIO_PCI_CAP_PCI_CFG]["pos"]
        self.cfg_write(pos + 4, 1, 0)
        self.cfg_write(pos + 8, 4, off)
        self.cfg_write(pos + 12, 4, length)
        return pos + 16

    def window_read(self, off: int, length: int) -> int:
        """Read BAR0 through the PCI_CFG capability's window."""
        return self.cfg_read(self._window_setup(off, length), 4) & ((1 << (8 * length)) - 1)

    def window_write(self, off: int, length: int, value: int) -> None:
        """Write BAR0 through the PCI_CFG capability's window."""
        self.cfg_write(self._window_setup(off, length), 4, value)
