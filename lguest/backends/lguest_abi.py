"""The /dev/lguest protocol's numbers (L:520), shared by the backend, the in-process
model of lguest_user.c (L:530) and the trap-stream files (L:560), apart from all three
so that none of them imports another just for a constant."""

import errno
import struct

LHREQ_INITIALIZE = 0
LHREQ_GETDMA = 1        # obsolete
LHREQ_IRQ = 2
LHREQ_BREAK = 3         # obsolete
LHREQ_EVENTFD = 4       # obsolete in the PCI launcher
LHREQ_GETREG = 5
LHREQ_SETREG = 6
LHREQ_TRAP = 7

LGUEST_IRQS = 32
PENDING = struct.Struct("<B7sI")          # struct lguest_pending
NATIVE_WORD = struct.calcsize("L")
PAGE_SIZE = 4096                          # lguest hosts were x86: 4 KiB pages
DEVICE_PATH = "/dev/lguest"
TRAP_GPF = 13
TRAP_PAGE_FAULT = 14
ERESTART = getattr(errno, "ERESTART", 85)  # kernel-internal, but lguest leaks it
