"""What every virtio device is, whatever transport carries it.

#L:300 A device is a small thing: a type number, the features it offers, a few queues
# with their names and maximum sizes, and a block of device-specific configuration.
# It does no I/O of its own: host resources (a file, a tap, the console) are handed to
# it as objects with a narrow interface, so the same device can be tested against an
# in-memory model and served over PCI (lguest, KVM, the fake backend) or vhost-user.
#
# A transport drives a device through its life: activate() once the driver has set up
# the queues and said DRIVER_OK, process() for each kick (or whenever host data may
# flow), and reset() when the driver writes 0 to the status register. *Who* calls
# process(), and on which thread, is a DeviceRunner's business (see L:310).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import GuestError
from ..virtio import MAX_QUEUE_SIZE

if TYPE_CHECKING:
    from ..virtqueue import Virtqueue


class VirtioDevice:
    """Base class of every device. Subclasses set the class attributes and override
    process() (and usually activate()/reset())."""

    device_id = 0              # virtio device type (lguest.virtio.ID_*)
    queue_names = ()           # e.g. ("input", "output")
    queue_max_size = 256       # the largest ring the device accepts, per queue
    # A vhost-user front-end sizes the rings itself, and neither QEMU nor DPDK hears a
    # refusal (L:205), so we take what virtio allows (2.4: 32768). QEMU's largest
    # (queue-size=, rx_queue_size=) is 1024: refused, its guest hung at boot. DPDK's
    # virtio-user takes queue_size= up to 32768: with our old limit of 1024, testpmd's
    # queue_size=2048 came up with its link up, and the frames it sent went into rings
    # we never served. The ring lies in the front-end's memory; we keep no state per entry.
    vhost_user_queue_max_size = MAX_QUEUE_SIZE

    def __init__(self, name: str | None = None):
        self.name = name or type(self).__name__.lower()
        self.features = 0               # device-specific and ring features offered
        self.config = bytearray()       # device-specific config space, little-endian
        self.config_generation = 0
        self.queues = []                # Virtqueue (or None) per queue, once active
        self.negotiated = 0             # features the driver accepted
        self.on_config_change = None    # set by the transport: raise a config interrupt

    # -- configuration space ------------------------------------------------------
    def read_config(self, offset: int, size: int) -> int:
        """The driver reads `size` bytes of device config at `offset`."""
        if offset < 0 or size <= 0 or offset + size > len(self.config):
            raise GuestError("config read past end", device=self.name,
                             detail=f"offset {offset} size {size} of {len(self.config)}")
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """The driver writes device config (read-only unless a device says otherwise)."""
        raise GuestError("write to read-only device config", device=self.name,
                         detail=f"offset {offset} size {size}")

    def update_config(self, new_bytes: bytes | bytearray) -> None:
        """The host changed the config: bump the generation and tell the driver."""
        self.config[:] = new_bytes
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.on_config_change:
            self.on_config_change()

    # -- life cycle -----------------------------------------------------------------
    def activate(self, queues: Iterable[Virtqueue | None], negotiated: int) -> None:
        """The driver said DRIVER_OK (or a vhost-user front-end started the rings)."""
        self.queues = list(queues)
        self.negotiated = negotiated

    def process(self, queue_index: int) -> bool:
        """Serve what is available on one queue. Return True if any buffer was used
        (the runner then asks the queue whether the guest wants an interrupt)."""
        return False

    def reset(self) -> None:
        """Forget the queues and negotiated features; keep host resources open."""
        self.queues = []
        self.negotiated = 0

    def close(self) -> None:
        """Release host resources for good (the launcher is exiting)."""


#L:310 Who calls process(). The transport tells its runner three things: the
# device became live (start), the guest kicked a queue (kick), the device was reset
# (stop). `interrupt(queue_index)` is the transport's function to signal the guest;
# the runner calls it only when the queue says the guest wants one.
class DeviceRunner:
    """Drives a device's process() calls on behalf of a transport."""

    def start(self, device: VirtioDevice, interrupt: Callable[[int], None]) -> None:
        """The device went live; `interrupt(queue_index)` signals the guest."""
        raise NotImplementedError

    def kick(self, queue_index: int) -> None:
        """The guest kicked a queue."""
        raise NotImplementedError

    def stop(self) -> None:
        """The device was reset: call process() no more."""
        raise NotImplementedError


class InlineRunner(DeviceRunner):
    """The sans-I/O runner: a kick is served at once, on the caller's thread. The fake
    backend and the unit tests use it, so everything is deterministic."""

    def __init__(self):
        self.device = None
        self.interrupt = None

    def start(self, device: VirtioDevice, interrupt: Callable[[int], None]) -> None:
        """The device went live: serve its kicks from now on."""
        self.device = device
        self.interrupt = interrupt

    def kick(self, queue_index: int) -> None:
        """Serve the kicked queue at once (nothing if the device is not live)."""
        if self.device is None:
            return
        self.serve(queue_index)

    def serve(self, queue_index: int) -> None:
        """One round of process() on a queue, and its interrupt if the guest wants one."""
        queue = self.device.queues[queue_index]
        if queue is not None:
            queue.new_round()       # one notify, at most one ring's worth (L:221)
        if self.device.process(queue_index):
            if queue is not None and queue.should_interrupt():
                self.interrupt(queue_index)

    def stop(self) -> None:
        """Forget the device: later kicks do nothing."""
        self.device = None
        self.interrupt = None


#L:315 The seed's wait_for_vq_desc() dance, for runners that serve a queue until it
# is empty: while we drain a queue the guest need not kick us (VRING_USED_F_NO_NOTIFY,
# or an old avail_event); before we sleep we ask for kicks again and look once more,
# because a chain added just before the guest saw our change would get no kick. The
# interrupt goes out when the device used something and the queue says the guest
# wants to hear of it (L:260) -- at once, before that second look, as the seed's
# add_used_and_trigger() does: at queue depth 1 the guest is waiting for it, and the
# look finds nothing (with EVENT_IDX, should_interrupt() keeps a second one from
# going out unless the guest asked for it).
#
# However busy the ring, one call does a bounded amount of work: ROUNDS rounds of at
# most a ring's worth of chains each (L:221). A guest that keeps the ring full (or
# writes into its own avail ring) then finds queue.round_spent set, and the runner
# comes back after looking at its stop fd -- so a reset can always stop the thread.
ROUNDS = 4


def serve_until_idle(device, queue_index, interrupt):
    """Serve one queue until nothing more comes, or the rounds are spent (then
    queue.round_spent says so); True if any buffer was used."""
    queue = device.queues[queue_index]
    progress = False
    for _ in range(ROUNDS):
        queue.set_notifications(False)
        queue.new_round()
        used = device.process(queue_index)
        if used and queue.should_interrupt():
            interrupt(queue_index)
        queue.set_notifications(True)
        queue.new_round()
        used_more = device.process(queue_index)
        progress = progress or used or used_more
        if used_more and queue.should_interrupt():
            interrupt(queue_index)
        if not used_more:
            break
    else:
        # Every round's last look found more, so kicks were last asked for before
        # chains we have since taken: with EVENT_IDX avail_event is behind them, and a
        # driver adding one more would not kick. Ask again at where we are, and have
        # the runner come back (round_spent) if something came in meanwhile.
        queue.set_notifications(True)
        queue.spend_round()
    return progress


# -- scatter-gather helpers shared by the devices and their host side ------------------
# A chain's buffers are lists of memoryviews straight into guest memory (the seed's
# iovecs). These are the seed's iov_empty()/iov_consume(), without copying the data.

def iov_length(views):
    """Total bytes in a list of buffers."""
    # A loop, not sum() of a generator: a third of the time for the one to four
    # buffers of a typical chain, and virtio-fs asks twice per request.
    n = 0
    for v in views:
        n += v.nbytes
    return n


def iov_skip(views, n):
    """The buffers with their first n bytes removed (new slices; nothing is copied).
    Returns fewer bytes than asked for only if the buffers are shorter: callers check."""
    rest = []
    for v in views:
        if n >= v.nbytes:
            n -= v.nbytes
            continue
        rest.append(v[n:] if n else v)
        n = 0
    return rest


def iov_write(views, data, offset=0):
    """Copy data into the buffers from byte `offset` on (a header field, a reply, a
    frame); return the bytes that fitted."""
    if offset:
        views = iov_skip(views, offset)
    done = 0
    for v in views:
        if done >= len(data):
            break
        take = min(v.nbytes, len(data) - done)
        v[:take] = data[done:done + take]
        done += take
    return done


def iov_take(views, n):
    """Copy the first n bytes out of the buffers (a header), and return
    (header_bytes, remaining_buffers). The header may be shorter than n: callers check."""
    head = bytearray()
    for v in views:
        if len(head) >= n:
            break
        head += v[:n - len(head)]
    return bytes(head), iov_skip(views, n)


def give_back(queue, count=1):
    """Un-pop the `count` chains just popped: we took them hoping for host input that
    turned out not to be there (or not to need them all). The driver cannot have reused
    them: they are not in the used ring, so it still counts their descriptors, and the
    avail slots naming them, as the device's. Stepping last_avail_idx back makes the
    next pop()s find the same heads again, in the same order."""
    queue.last_avail_idx = (queue.last_avail_idx - count) & 0xFFFF
