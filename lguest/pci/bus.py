"""The PCI bus, and the one entry point every backend calls for a port or MMIO access.

#L:430 Every guest access we emulate arrives here as (space, address, size, is_write,
# value), whichever backend trapped it: the lguest backend decoding an `in` or a `mov`
# (L:500 onwards), a KVM exit, or the fake backend's scripted trap. Port accesses
# reach the two PCI configuration ports (configuration mechanism #1: an address latch
# at 0xCF8, a data window at 0xCFC) or nothing; MMIO accesses reach the BAR0 of one
# device. Slot 0 holds a dummy host bridge, because Linux expects one; devices take
# slots 1-31 in the order they are added (the console first), each with its own
# interrupt line and a window of MMIO above the guest's RAM.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, Any

from ..errors import GuestError, LauncherError
from ..memory import PAGE_SIZE, MmioAllocator
from .config import (SIZE_MASKS, WINDOW_DATA_WORD, init_pci_host_bridge, ioread,
                     iowrite, virtio_pci_config)
from .transport import BAR0_LAYOUT, VirtioPciTransport

if TYPE_CHECKING:
    from ..devices.base import DeviceRunner, VirtioDevice
    from ..memory import Memory
    from .config import PciConfig

PIO = "pio"
MMIO = "mmio"

PCI_CONFIG_ADDR = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PS2_KEYBOARD_STATUS = 0x64
MAX_PCI_DEVICES = 32        # 5-bit device number in PCI_CONFIG_ADDR
DEVICE_PAGES = 256          # the seed leaves this much room between RAM and MMIO

# The seed's verbose() lines go to this logger at DEBUG (the launcher's -v shows them).
log = logging.getLogger(__name__)


class UnclaimedAccess(GuestError):
    """An access no device accepts. The seed warned and re-injected the trap into the
    guest (a #GP for ports, a page fault for MMIO): `trap` says which, for a backend
    that can do the same. Uncaught, it is a guest error like any other."""

    def __init__(self, rule, *, trap, detail=None):
        super().__init__(rule, device="pci", detail=detail)
        self.trap = trap


#L:431 The address latch: what the guest wrote to 0xCF8 says what 0xCFC means.
#   bit 31 enable, bits 23-16 bus, 15-11 device, 10-8 function, 7-2 register.
# Like the seed's dev_and_reg(): one bus, one function, and only registers inside our
# struct pci_config; anything else is no one, and reads as all ones.
def decode_config_address(latch):
    return {"enabled": latch >> 31, "bus": (latch >> 16) & 0xFF, "device": (latch >> 11) & 0x1F,
            "function": (latch >> 8) & 0x7, "register": (latch >> 2) & 0x3F}


class PciBus:
    """Up to 31 virtio devices behind a host bridge, reached by port and MMIO."""

    def __init__(self, memory: Memory, mmio_base: int | None = None):
        self.memory = memory
        if mmio_base is None:
            mmio_base = memory.size + DEVICE_PAGES * PAGE_SIZE
        self.mmio_base = mmio_base
        self._allocator = MmioAllocator(mmio_base)
        self.configs = [None] * MAX_PCI_DEVICES
        self.configs[0] = init_pci_host_bridge()
        self.slots = [None] * MAX_PCI_DEVICES       # transports by slot
        self.devices = []                           # transports in the order added
        self.config_address = 0                     # the 0xCF8 latch
        self.irq_sink = lambda irq_line: None       # the backend sets this
        # A backend whose interrupt lines are levels (KVM's irqchip) sets this too: the
        # line is held from irq_sink until the driver reads the device's ISR (L:406).
        self.irq_lower_sink = None
        self._next_irq = 1
        self._window_starts = []                    # sorted BAR0 addresses
        self._window_owners = []

    @property
    def mmio_limit(self) -> int:
        """One past the last MMIO window handed out."""
        return self._allocator.limit

    #L:432 new_pci_device() and set_device_config(): a device gets the next slot
    # and interrupt line, a BAR0 window big enough for the common config, notify,
    # ISR and its own config (a power of two, from the allocator above RAM: L:100),
    # and the config space that describes all of it (L:404).
    def add_device(self, device: VirtioDevice,
                   runner: DeviceRunner | None = None) -> VirtioPciTransport:
        """Put a device in the next slot, behind a transport of its own, and return that."""
        slot = len(self.devices) + 1
        if slot >= MAX_PCI_DEVICES:
            raise LauncherError(f"Can only handle {MAX_PCI_DEVICES - 1} PCI devices")
        irq_line = self._next_irq
        self._next_irq += 1
        transport = VirtioPciTransport(device, self.memory, runner=runner, irq_line=irq_line,
                                       raise_irq=lambda: self.irq_sink(irq_line),
                                       lower_irq=lambda: self._lower_irq(irq_line))
        transport.mmio_addr = self._allocator.allocate(transport.mmio_size)
        transport.slot = slot
        transport.pci_config = virtio_pci_config(device.device_id, irq_line, BAR0_LAYOUT,
                                                 len(device.config), transport.mmio_addr,
                                                 name=device.name)
        self.configs[slot] = transport.pci_config
        self.slots[slot] = transport
        self.devices.append(transport)
        self.add_mmio_window(transport.mmio_addr, transport)
        return transport

    #L:435 More MMIO than BAR0s: a backend may place a region of its own (an MSI-X
    # table, say) with allocate_mmio() and add_mmio_window(). `handler` needs
    # `mmio_size`, `emulate_mmio_read(off, size)` and `emulate_mmio_write(off, size,
    # value)`, as a transport has. Windows are kept sorted for find_mmio_region().
    def allocate_mmio(self, size: int) -> int:
        """Reserve a power-of-two MMIO window above RAM; return its address."""
        return self._allocator.allocate(size)

    def add_mmio_window(self, addr: int, handler: Any) -> None:
        """Route MMIO at addr to handler (mmio_size, emulate_mmio_read/write)."""
        i = bisect.bisect_right(self._window_starts, addr)
        self._window_starts.insert(i, addr)
        self._window_owners.insert(i, handler)

    def reset_all(self) -> None:
        """The seed's cleanup_devices(): reset every device (stops its runner)."""
        for transport in self.devices:
            transport.reset()

    # -- the one entry point ----------------------------------------------------------
    def access(self, space: str, addr: int, size: int, is_write: bool, value: int = 0) -> int:
        """Emulate one guest access. Reads return the value read; writes return 0."""
        if space == MMIO:
            found = self.find_mmio_region(addr)
            if found is None:
                raise UnclaimedAccess("MMIO touching (not a device)", trap=14,
                                      detail=f"{addr:#x}")
            transport, off = found
            if is_write:
                transport.emulate_mmio_write(off, size, value)
                return 0
            return transport.emulate_mmio_read(off, size)
        if space != PIO:
            raise ValueError(f"unknown address space {space!r}")
        if size not in SIZE_MASKS:
            raise UnclaimedAccess("Attempt to access port", trap=13, detail=f"{size}-byte at {addr:#x}")
        if is_write:
            self._port_write(addr, size, value)
            return 0
        return self._port_read(addr, size)

    def find_mmio_region(self, paddr: int) -> tuple[Any, int] | None:
        """(transport, offset in its BAR0), or None: windows are sorted, so bisect."""
        i = bisect.bisect_right(self._window_starts, paddr) - 1
        if i < 0:
            return None
        handler = self._window_owners[i]
        off = paddr - self._window_starts[i]
        if off >= handler.mmio_size:
            return None
        return handler, off

    # -- ports ------------------------------------------------------------------------
    #L:433 Port reads. "Default is to return all-ones on IO port reads, which
    # traditionally means 'there's nothing there'"; the PS/2 keyboard status port says
    # 1, "ready for output", so the guest's keyboard probe does not wait forever.
    def _port_read(self, port, size):
        if port == PS2_KEYBOARD_STATUS:
            return 1
        if PCI_CONFIG_ADDR <= port < PCI_CONFIG_ADDR + 4:
            return ioread(self.config_address, port - PCI_CONFIG_ADDR, size)
        if PCI_CONFIG_DATA <= port < PCI_CONFIG_DATA + 4:
            return self._config_read(port - PCI_CONFIG_DATA, size)
        return SIZE_MASKS[size]

    # "There are many other ports, eg. CMOS clock, serial and parallel ports, so we
    # ignore them all." A refused config write is the seed's bad_io: the trap goes back.
    def _port_write(self, port, size, value):
        if PCI_CONFIG_ADDR <= port < PCI_CONFIG_ADDR + 4:
            self.config_address = iowrite(self.config_address, port - PCI_CONFIG_ADDR, size, value)
            if log.isEnabledFor(logging.DEBUG):
                a = decode_config_address(self.config_address)
                log.debug("PCI%s: %#x/%x: bus %u dev %u func %u reg %u",
                          "" if a["enabled"] else " DISABLED", value, SIZE_MASKS[size],
                          a["bus"], a["device"], a["function"], a["register"])
        elif PCI_CONFIG_DATA <= port < PCI_CONFIG_DATA + 4:
            if not self._config_write(port - PCI_CONFIG_DATA, size, value):
                raise UnclaimedAccess("Attempt to write to port", trap=13,
                                      detail=f"port {port} ({SIZE_MASKS[size]:#x} mask) "
                                             f"address {self.config_address:#x}")

    def dev_and_reg(self) -> tuple[int, PciConfig, int] | None:
        """(slot, config, word register) the latch points at, or None."""
        a = decode_config_address(self.config_address)
        if not a["enabled"] or a["function"] != 0 or a["bus"] != 0:
            return None
        config = self.configs[a["device"]]
        if config is None or a["register"] * 4 >= len(config.space):
            return None
        return a["device"], config, a["register"]

    def _config_read(self, portoff, size):
        found = self.dev_and_reg()
        if found is None:
            return SIZE_MASKS[size]
        slot, config, reg = found
        if reg == WINDOW_DATA_WORD:
            self._window_read(slot, config)
        return config.read(reg, portoff, size)

    def _config_write(self, portoff, size, value):
        found = self.dev_and_reg()
        if found is None:
            return False
        slot, config, reg = found
        if reg == WINDOW_DATA_WORD:
            return self._window_write(slot, config, portoff, size, value)
        return config.write(reg, portoff, size, value)

    #L:434 The VIRTIO_PCI_CAP_PCI_CFG window: "a backdoor to access the MMIO regions
    # without mapping them. Weird, but useful." 4.1.4.7.1: "Upon detecting driver read
    # access to pci_cfg_data, the device MUST execute a read access of length cap.length
    # at offset cap.offset at BAR selected by cap.bar and store the first cap.length
    # bytes in pci_cfg_data", and likewise for writes. The access width is cap.length,
    # *not* that of the port access. A bad window read is the driver's fault (the seed's
    # "Invalid cfg_access"), and goes where every misuse of a device goes (L:425): strict,
    # it ends us; --lenient, the device needs a reset and the read answers all ones. A bad
    # window write is refused like any other (L:403).
    def _window_read(self, slot, config):
        transport = self.slots[slot]
        if not config.valid_bar_access():
            error = GuestError("Invalid cfg_access to bar", device=config.name,
                               detail=f"bar {config['cfg_access.bar']} offset "
                                      f"{config['cfg_access.offset']} len {config['cfg_access.length']}")
            if transport is not None:
                transport.misused(error)        # raises unless lenient
            elif not self.lenient:              # the host bridge: no device to reset
                raise error
            else:
                log.error("%s (ignored: --lenient)", error)
            config["cfg_access.pci_cfg_data"] = 0xFFFFFFFF
            return
        config["cfg_access.pci_cfg_data"] = transport.emulate_mmio_read(
            config["cfg_access.offset"], config["cfg_access.length"])
        log.debug("Window read %#x from bar 0, offset %u len %u", config["cfg_access.pci_cfg_data"],
                  config["cfg_access.offset"], config["cfg_access.length"])

    def _window_write(self, slot, config, portoff, size, value):
        if not config.valid_bar_access():
            return False
        data = iowrite(config["cfg_access.pci_cfg_data"], portoff, size, value)
        config["cfg_access.pci_cfg_data"] = data
        length = config["cfg_access.length"]
        log.debug("Window writing %#x to bar 0, offset %u len %u", data & SIZE_MASKS[length],
                  config["cfg_access.offset"], length)
        self.slots[slot].emulate_mmio_write(config["cfg_access.offset"], length,
                                            data & SIZE_MASKS[length])
        return True

    def _lower_irq(self, irq_line):
        if self.irq_lower_sink is None:
            return False
        self.irq_lower_sink(irq_line)
        return True

    @property
    def lenient(self) -> bool:
        """Lenient when its devices are (the launcher sets them all alike, L:425)."""
        return bool(self.devices) and all(t.lenient for t in self.devices)

    def describe(self) -> list[str]:
        """One line per device, for the launcher's --verbose."""
        return [f"device {t.slot}: {t.name} irq {t.irq_line} bar0 {t.mmio_addr:#x}+{t.mmio_size:#x}"
                for t in self.devices]
