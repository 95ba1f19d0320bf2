"""Backends run the guest: /dev/lguest, KVM, or a simulated guest (see L:001)."""

from .base import MMIO, PIO, Backend, Exit, GuestDied, IoExit, RebootRequested
from .choose import open_backend

__all__ = ["Backend", "Exit", "IoExit", "GuestDied", "RebootRequested",
           "open_backend", "PIO", "MMIO"]
