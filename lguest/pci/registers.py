"""The register file of BAR0, declared: struct virtio_pci_common_cfg and what follows
it in the seed's struct virtio_pci_mmio, the per-queue registers, and the MSI-X hook.
The rules that govern the registers are in transport.py (L:410 onwards).
"""

# struct virtio_pci_common_cfg, with the names of the virtio 1.0 spec (4.1.4.3).
COMMON_CFG = (
    ("device_feature_select", 0, 4), ("device_feature", 4, 4),
    ("driver_feature_select", 8, 4), ("driver_feature", 12, 4),
    ("msix_config", 16, 2), ("num_queues", 18, 2),
    ("device_status", 20, 1), ("config_generation", 21, 1),
    ("queue_select", 22, 2), ("queue_size", 24, 2), ("queue_msix_vector", 26, 2),
    ("queue_enable", 28, 2), ("queue_notify_off", 30, 2),
    ("queue_desc_lo", 32, 4), ("queue_desc_hi", 36, 4),
    ("queue_avail_lo", 40, 4), ("queue_avail_hi", 44, 4),
    ("queue_used_lo", 48, 4), ("queue_used_hi", 52, 4),
)
REG = {name: (off, size) for name, off, size in COMMON_CFG}
OFFSET = {name: off for name, off, _ in COMMON_CFG}
COMMON_CFG_SIZE = 56
NOTIFY_OFFSET = 56          # u16 notify
ISR_OFFSET = 58             # u8 isr
PADDING_OFFSET = 59         # u8 padding
DEVICE_CFG_OFFSET = 60      # sizeof(struct virtio_pci_mmio): device config follows
QUEUE_REGS_START = OFFSET["queue_size"]     # per-queue registers: queue_size onwards
QUEUE_REGS_SIZE = COMMON_CFG_SIZE - QUEUE_REGS_START
ADDRESS_REGS = ("queue_desc_lo", "queue_desc_hi", "queue_avail_lo", "queue_avail_hi",
                "queue_used_lo", "queue_used_hi")
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# Where each region of BAR0 lies, for the capabilities of the config space (L:404).
BAR0_LAYOUT = {"common": (0, COMMON_CFG_SIZE), "notify": (NOTIFY_OFFSET, 2),
               "isr": (ISR_OFFSET, 1), "device": (DEVICE_CFG_OFFSET, 0)}

_WIDTH_BITS = {1: 8, 2: 16, 4: 32}


def width_bits(size):
    return _WIDTH_BITS.get(size, 8)


class MsixHook:
    """The extension point the seed did not have. Without a hook, MSI-X register
    accesses are refused as the seed refused them. A backend that offers an MSI-X
    capability (KVM) sets `transport.msix` to an object with this shape."""

    def enabled(self):
        """True while the driver has MSI-X switched on (interrupts go as messages)."""
        raise NotImplementedError

    def accept_vector(self, vector):
        """The driver asked for `vector`: return it, or VIRTIO_MSI_NO_VECTOR if it
        cannot be mapped (4.1.5.1.2: the driver reads the register back to know)."""
        raise NotImplementedError

    def signal(self, vector):
        """Send the message of `vector` to the guest."""
        raise NotImplementedError


class QueueRegs:
    """One queue's registers (queue_size onwards), kept while another is selected:
    the seed's save_vq_config()/restore_vq_config() without the copying."""

    def __init__(self, max_size):
        self.regs = bytearray(QUEUE_REGS_SIZE)
        self.reset(max_size)

    def reset(self, max_size):
        # 4.1.4.3.1: "The device MUST present a 0 in queue_enable on reset."
        self.regs[:] = bytes(QUEUE_REGS_SIZE)
        self.set("queue_size", max_size)

    def get(self, name):
        off, size = REG[name]
        off -= QUEUE_REGS_START
        return int.from_bytes(self.regs[off:off + size], "little")

    def set(self, name, value):
        off, size = REG[name]
        off -= QUEUE_REGS_START
        self.regs[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def address(self, part):
        return self.get(f"queue_{part}_lo") | (self.get(f"queue_{part}_hi") << 32)


# 4.1.4.3.1: "The device MUST present a 0 in queue_size if the virtqueue corresponding
# to the current queue_select is unavailable." An unavailable queue reads as all zeros.
UNAVAILABLE = QueueRegs(0)
