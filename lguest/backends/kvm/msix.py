"""MSI-X for a virtio-PCI device on KVM: the capability, the table, the messages.

#L:630 Why MSI-X here when the seed had none: the Debian kernel has no MP-table parser
# and we give it no ACPI, so it cannot learn how legacy PCI interrupt lines are wired
# to the IOAPIC. A message-signalled interrupt needs no wiring: the device writes the
# message (address, data) the driver put in its MSI-X table, and the local APIC named
# in the address takes the vector in the data. We add, per device, the MSI-X
# capability (PCI 3.0 6.8.2) to its config space (the extension point of L:405), the
# table and pending-bit array in BAR1 (a window from the bus, L:435), and hand the
# transport an MsixHook (registers.py) so queue and config interrupts become messages,
# sent with KVM_SIGNAL_MSI from whichever thread raised them.
#
# virtio 1.0 4.1.4.3: queue_msix_vector / msix_config "The device MUST return vector
# mapped to a given event, (NO_VECTOR if unmapped) on read"; 4.1.5.1.2: the driver
# "MUST NOT" assume a mapping stuck without reading it back, so an out-of-range vector
# is answered with NO_VECTOR.
"""

import struct
import threading

from ...pci.registers import VIRTIO_MSI_NO_VECTOR, MsixHook

PCI_CAP_ID_MSIX = 0x11
MSIX_ENTRY_SIZE = 16
MSIX_BAR = 1
CONTROL_ENABLE = 1 << 15
CONTROL_FUNCTION_MASK = 1 << 14
ENTRY_CONTROL_MASKED = 1
ENTRY_CONTROL_OFFSET = 12


class MsixTable(MsixHook):
    """One device's MSI-X vectors: table and PBA in its BAR1, the control word in its
    config space, and signal() sending messages through `send(address, data)`."""

    def __init__(self, vectors, send):
        self.vectors = vectors
        self.send = send
        # Vector control word starts masked (PCI 3.0 6.8.2.9: "default value 1").
        self.table = bytearray(vectors * MSIX_ENTRY_SIZE)
        for v in range(vectors):
            struct.pack_into("<I", self.table, v * MSIX_ENTRY_SIZE + ENTRY_CONTROL_OFFSET,
                             ENTRY_CONTROL_MASKED)
        self.pba_offset = (len(self.table) + 7) & ~7
        self.pending = set()
        self.control = 0
        self.cap_offset = None
        self.config = None
        self.mmio_size = 1
        while self.mmio_size < self.pba_offset + 8:
            self.mmio_size <<= 1
        self._lock = threading.Lock()

    # -- placing it on a device ------------------------------------------------------
    def install(self, bus, transport):
        """Add the capability and BAR1 window to `transport`'s device, and attach."""
        address = bus.allocate_mmio(self.mmio_size)
        bus.add_mmio_window(address, self)
        config = transport.pci_config
        body = struct.pack("<HII", self.vectors - 1, MSIX_BAR, self.pba_offset | MSIX_BAR)
        self.cap_offset = config.add_capability(PCI_CAP_ID_MSIX, body, on_write=self._config_write)
        config.bar_sizes[MSIX_BAR] = self.mmio_size
        config["bar1"] = address
        self.config = config
        transport.attach_msix(self)
        return address

    #L:631 The one writable part of the capability is the message control word's two
    # top bits: MSI-X Enable and Function Mask (the table size is read-only). A
    # write that touches anything else in the capability is refused, as any other
    # write to read-only config space is (L:402).
    def _config_write(self, config, reg, portoff, size, value):
        byte = reg * 4 + portoff
        control_at = self.cap_offset + 2
        if byte + size > control_at + 2 or byte + size <= control_at:
            return False
        control = bytearray(config.space[control_at:control_at + 2])
        for i in range(size):
            if control_at <= byte + i < control_at + 2:
                control[byte + i - control_at] = (value >> (8 * i)) & 0xFF
        writable = CONTROL_ENABLE | CONTROL_FUNCTION_MASK
        word = int.from_bytes(config.space[control_at:control_at + 2], "little")
        word = (word & ~writable) | (int.from_bytes(control, "little") & writable)
        config.space[control_at:control_at + 2] = word.to_bytes(2, "little")
        self.control = word
        self._deliver_pending()
        return True

    # -- MsixHook ----------------------------------------------------------------------
    def enabled(self):
        return bool(self.control & CONTROL_ENABLE)

    def accept_vector(self, vector):
        return vector if vector < self.vectors else VIRTIO_MSI_NO_VECTOR

    def signal(self, vector):
        """Send vector's message, or leave it pending while masked (6.8.2.9)."""
        if not 0 <= vector < self.vectors:
            return
        with self._lock:
            if self._masked(vector):
                self.pending.add(vector)
                return
            address, data = self._message(vector)
        self.send(address, data)

    def _masked(self, vector):
        control = struct.unpack_from("<I", self.table, vector * MSIX_ENTRY_SIZE + ENTRY_CONTROL_OFFSET)[0]
        return bool(control & ENTRY_CONTROL_MASKED or self.control & CONTROL_FUNCTION_MASK)

    def _message(self, vector):
        lo, hi, data = struct.unpack_from("<III", self.table, vector * MSIX_ENTRY_SIZE)
        return lo | (hi << 32), data

    def _deliver_pending(self):
        with self._lock:
            ready = [v for v in sorted(self.pending) if not self._masked(v)]
            self.pending.difference_update(ready)
            messages = [self._message(v) for v in ready]
        for address, data in messages:
            self.send(address, data)

    # -- BAR1: the table and the PBA -----------------------------------------------------
    def emulate_mmio_read(self, off, size):
        if off + size <= len(self.table):
            return int.from_bytes(self.table[off:off + size], "little")
        if self.pba_offset <= off and off + size <= self.pba_offset + 8:
            bits = sum(1 << v for v in self.pending)
            shift = 8 * (off - self.pba_offset)
            return (bits >> shift) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def emulate_mmio_write(self, off, size, value):
        # Writes to the PBA or past the table are ignored (PBA is read-only).
        if off + size > len(self.table):
            return
        with self._lock:
            self.table[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._deliver_pending()
