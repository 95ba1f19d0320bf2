"""What every transport (virtio-PCI, vhost-user) holds a driver to, in one place.

#L:205 The virtio-PCI register file (L:410) and the vhost-user back-end (L:720) are
# two ways of being told the same things, so they hold the driver to the same rules,
# written once. Each function returns what is wrong (a detail for the error), or None;
# the transport raises its own kind of error with its own names.
#
# Features: everything the device offers plus VERSION_1, which every modern device
# offers (the seed's new_pci_device() starts with it); 2.2.1: "The driver MUST NOT
# accept a feature which the device did not offer".
#
# Queue sizes: 2.4 "Queue Size value is always a power of 2. The maximum Queue Size
# value is 32768", and no more than the maximum the driver was shown. A PCI driver
# is shown the device's queue_max_size in queue_size (4.1.4.3: "On reset, specifies
# the maximum queue size supported by the device"); a vhost-user front-end is shown
# nothing -- it makes its own virtio device and picks the ring size itself (QEMU's
# queue-size=, rx_queue_size=, up to 1024; DPDK virtio-user's queue_size=, up to
# 32768) -- so it is held to the device's vhost_user_queue_max_size (virtio's 32768):
# with the PCI maximum (256) instead, QEMU's vhost-user-blk-pci,queue-size=512 or 1024
# got SET_VRING_NUM refused, and as QEMU asks for no reply there, its guest hung at
# boot with no error; with 1024, DPDK's queue_size=2048 (no reply asked either, and no
# err fd set) sent frames into rings we never served, its link up.
#
# Ring alignment: 2.4 "Descriptor Table 16, Available Ring 2, Used Ring 4" (the
# modern layout; legacy's 4096-byte used ring is not ours: we are virtio 1.0 only).
"""

from .virtio import F_VERSION_1, MAX_QUEUE_SIZE, bit


def offered_features(device):
    return device.features | bit(F_VERSION_1)


def over_accepted(accepted, offered):
    if accepted & ~offered:
        return f"{accepted:#x} of {offered:#x}"
    return None


def queue_size_problem(size, maximum=MAX_QUEUE_SIZE):
    if size <= 0 or size & (size - 1) or size > min(maximum, MAX_QUEUE_SIZE):
        return f"{size} (max {min(maximum, MAX_QUEUE_SIZE)})"
    return None


def ring_alignment_problem(desc, avail, used):
    if desc % 16 or avail % 2 or used % 4:
        return f"desc {desc:#x} avail {avail:#x} used {used:#x}"
    return None
