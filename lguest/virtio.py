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

DESC_SIZE = 16          # struct vring_desc: u64 addr, u32 len, u16 flags, u16 next
USED_ELEM_SIZE = 8      # struct vring_used_elem: u32 id, u32 len


def bit(n):
    return 1 << n
