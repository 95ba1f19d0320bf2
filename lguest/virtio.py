"""Numbers from the virtio 1.0 specification, in one place.

Only constants live here; the rules that use them are next to the code that
enforces them.
"""

# 2.1: Device status field bits.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# 5: Device types (the PCI device id is 0x1040 + type).
ID_NET = 1
ID_BLOCK = 2
ID_CONSOLE = 3
ID_RNG = 4
ID_FS = 26

# 6: Reserved feature bits common to all devices.
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_VERSION_1 = 32

# 2.4.5: Descriptor flags.
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4

# 2.4.7 / 2.4.8: Ring flags.
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

# 4.1.4.5: ISR status bits.
ISR_QUEUE = 1
ISR_CONFIG = 2

# 2.4: "The maximum Queue Size value is 32768" (any transport, any device).
MAX_QUEUE_SIZE = 32768

# 5.1.6: struct virtio_net_hdr_v1 (num_buffers is always there in 1.0).
VNET_HDR_SIZE = 12

# 5.3.4: struct virtio_console_config: u16 cols, u16 rows, u32 max_nr_ports, u32 emerg_wr.
EMERG_WR_OFFSET = 8

# Feature bit names, for people reading logs and trace diffs: the common bits, then
# each device type's own (5.1.3, 5.2.3, 5.3.3).
FEATURE_NAMES = {F_RING_INDIRECT_DESC: "RING_INDIRECT_DESC", F_RING_EVENT_IDX: "RING_EVENT_IDX",
                 F_VERSION_1: "VERSION_1"}
DEVICE_FEATURE_NAMES = {
    ID_CONSOLE: {0: "SIZE", 1: "MULTIPORT", 2: "EMERG_WRITE"},
    ID_BLOCK: {2: "SEG_MAX", 5: "RO", 9: "FLUSH"},
    ID_NET: {0: "CSUM", 1: "GUEST_CSUM", 5: "MAC", 15: "MRG_RXBUF"},
}

DESC_SIZE = 16          # struct vring_desc: u64 addr, u32 len, u16 flags, u16 next
USED_ELEM_SIZE = 8      # struct vring_used_elem: u32 id, u32 len


def bit(n):
    return 1 << n
