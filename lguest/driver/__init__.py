"""The guest-side test driver: plays Linux's virtio drivers against our devices.

vring.py is the split ring's driver half (a guest-memory allocator, DriverQueue);
pci.py walks the PCI config space and the virtio-PCI capabilities as
virtio_pci_modern does.
"""

from .vring import DriverError, DriverQueue, GuestAllocator, Used, vring_layout

__all__ = ["DriverError", "DriverQueue", "GuestAllocator", "Used", "vring_layout"]
