"""What the simulated guest does: probe the PCI bus and put every device to work.

#L:570 The default scenario of the simulated guest (L:550), as a tiny Linux would
# boot: first two oddities a real lguest guest produces (a `cli`, which the launcher
# skips, and a port access from user mode, which must come back as a fault), then
# the PCI scan through 0xCF8/0xCFC, and for each virtio device Linux's probe
# (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK) and some
# real work: the console prints a line, the disk reads sectors and writes one back
# unchanged (it may be the user's image), the rng hands over entropy. Every access
# is a trap through the launcher, and every completed buffer arrives with an
# interrupt whose ISR read acknowledges it. Each step is told through `log`, so
# `lguest --backend=fake` prints a readable account of the run.
"""

import struct

from ..driver.pci import VirtioPciDriver
from ..driver.vring import GuestAllocator
from ..virtio import (DEVICE_FEATURE_NAMES, FEATURE_NAMES, ID_BLOCK, ID_CONSOLE, ID_NET,
                      ID_RNG, bit)

DEVICE_NAMES = {ID_NET: "net", ID_BLOCK: "block", ID_CONSOLE: "console", ID_RNG: "rng"}
GREETING = "Hello from the simulated lguest guest: the trap path works.\n"
BLK_OUTHDR = struct.Struct("<IIQ")
BLK_IN, BLK_OUT, BLK_FLUSH, BLK_GET_ID = 0, 1, 4, 8
SECTOR = 512


def feature_names(device_type, features):
    names = []
    for n in range(64):
        if features & bit(n):
            name = DEVICE_FEATURE_NAMES.get(device_type, {}).get(n) or FEATURE_NAMES.get(n)
            names.append(name or f"bit{n}")
    return ", ".join(names) or "none"


class GuestKernel:
    """The simulated guest's little kernel: its driver, interrupt handler and tallies."""

    def __init__(self, guest):
        self.guest = guest
        self.log = guest.log
        memory = guest.memory
        # The driver's rings and buffers live in the top half of RAM: clear of
        # boot_params at 0 and of a kernel image loaded at 1 or 16 MiB.
        self.allocator = GuestAllocator(memory.size // 2, memory.size)
        self.driver = VirtioPciDriver(guest.io, memory, self.allocator)
        self.handles = []
        self.interrupts = {}        # device name -> interrupts taken
        guest.on_interrupt = self.interrupt

    def interrupt(self, irq):
        """vp_interrupt(): find the device on this line and read its ISR (acks it)."""
        for handle in self.handles:
            if handle.irq_line == irq:
                isr = handle.ack_interrupt()
                name = DEVICE_NAMES.get(handle.device_type, "?")
                if isr:
                    self.interrupts[name] = self.interrupts.get(name, 0) + 1
                return
        self.log(f"  spurious interrupt {irq}")

    def probe(self):
        self.log("probing PCI bus 0 through ports 0xCF8/0xCFC")
        self.handles = self.driver.probe()
        for h in self.handles:
            name = DEVICE_NAMES.get(h.device_type, f"type {h.device_type}")
            self.log(f"  slot {h.slot}: virtio {name}, irq {h.irq_line}, "
                     f"BAR0 {h.bar0:#x} ({h.bar0_size} bytes)")
        return self.handles

    def bring_up(self, handle, features=None, sizes=None):
        """virtio_dev_probe(): negotiate, set up the queues, DRIVER_OK."""
        name = DEVICE_NAMES.get(handle.device_type, "?")
        # negotiate() reads the offer between DRIVER and FEATURES_OK, the only time
        # the transport allows it; note what it read on the way.
        offers = []
        read_offer = handle.device_features
        handle.device_features = lambda: offers.append(read_offer()) or offers[-1]
        try:
            accepted = handle.negotiate(features)
        finally:
            del handle.device_features
        offered = offers[-1]
        queues = handle.setup_queues(sizes)
        handle.driver_ok()
        self.log(f"{name}: offered {feature_names(handle.device_type, offered)}")
        self.log(f"{name}: accepted {feature_names(handle.device_type, accepted)}; queues "
                 + ", ".join(str(q.size) if q else "-" for q in queues))
        return accepted

    def transact(self, handle, qi, readable=(), writable=()):
        """Add one chain, kick, and take it back (our devices answer at the kick)."""
        queue = handle.queue(qi)
        queue.add_buffer(readable, writable)
        handle.kick(qi)
        used = queue.collect()
        if len(used) != 1:
            raise AssertionError(f"queue {qi}: expected one used buffer, got {len(used)}")
        return used[0]


def exercise_console(kernel, handle, text=GREETING):
    data = text.encode()
    handle.queue(0).add_buffer((), [64])          # an input buffer, as hvc does
    handle.kick(0)
    used = kernel.transact(handle, 1, [data])
    kernel.log(f"console: wrote {len(data)} bytes on the output queue "
               f"(used length {used.len}): {text.rstrip()!r}")


def block_request(kernel, handle, kind, sector=0, data=b"", read_len=0):
    used = kernel.transact(handle, 0, [BLK_OUTHDR.pack(kind, 0, sector) + data],
                           [read_len + 1] if read_len else [1])
    status = used.data[-1] if used.data else None
    return status, used.data[:-1]


def exercise_block(kernel, handle, sectors=2):
    capacity = handle.read_config(0, 8)
    read_only = bool(handle.features & bit(5))
    kernel.log(f"block: capacity {capacity} sectors ({capacity * SECTOR} bytes)"
               + (", read-only" if read_only else ""))
    if capacity == 0:
        return
    count = min(sectors, capacity)
    status, data = block_request(kernel, handle, BLK_IN, 0, read_len=count * SECTOR)
    kernel.log(f"block: read sectors 0-{count - 1}: status {status}, first bytes "
               f"{data[:16].hex(' ') or '(none)'}")
    last = capacity - 1
    status, original = block_request(kernel, handle, BLK_IN, last, read_len=SECTOR)
    if not read_only:
        status, _ = block_request(kernel, handle, BLK_OUT, last, data=original)
        check, again = block_request(kernel, handle, BLK_IN, last, read_len=SECTOR)
        same = "identical" if again == original else "DIFFERENT"
        kernel.log(f"block: wrote sector {last} back unchanged: status {status}; "
                   f"read again: {same}")
        if again != original:
            raise AssertionError(f"block: sector {last} changed after writing it back")
    else:
        status, _ = block_request(kernel, handle, BLK_OUT, last, data=original)
        kernel.log(f"block: write to a read-only disk: status {status} (1 is IOERR)")
    if handle.features & bit(9):
        status, _ = block_request(kernel, handle, BLK_FLUSH)
        kernel.log(f"block: flush: status {status}")
    status, ident = block_request(kernel, handle, BLK_GET_ID, read_len=20)
    kernel.log(f"block: id {ident.rstrip(bytes(1)).decode(errors='replace')!r} (status {status})")


def exercise_rng(kernel, handle, rounds=2, size=64):
    for n in range(rounds):
        used = kernel.transact(handle, 0, (), [size])
        kernel.log(f"rng: asked for {size} bytes, got {used.len}: {used.data[:8].hex()}...")


EXERCISES = {ID_CONSOLE: exercise_console, ID_BLOCK: exercise_block, ID_RNG: exercise_rng}


def default_scenario(guest):
    """Probe, bring up and exercise every device; return the closing summary."""
    kernel = GuestKernel(guest)
    guest.cli()
    guest.log("cli: skipped by the launcher, as the seed does")
    guest.privilege_probe()
    guest.log("user-mode `in`: handed back as a general protection fault")
    for handle in kernel.probe():
        name = DEVICE_NAMES.get(handle.device_type, "?")
        kernel.bring_up(handle)
        exercise = EXERCISES.get(handle.device_type)
        if exercise is None:
            kernel.log(f"{name}: brought up, but the simulated guest has nothing to send it")
            continue
        exercise(kernel, handle)
    counts = ", ".join(f"{n} {c}" for n, c in kernel.interrupts.items()) or "none"
    guest.log(f"interrupts taken: {counts}")
    return (f"simulated guest finished: {len(kernel.handles)} devices worked, "
            f"{guest.traps} traps emulated")
