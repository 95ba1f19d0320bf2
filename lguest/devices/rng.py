"""The virtio entropy device: fill the guest's buffers from an entropy source.

#L:360 Our random number generator device reads from /dev/urandom into the Guest's
# input buffers. The usual case is that the Guest doesn't want random numbers and so
# has no buffers although /dev/urandom is still readable, whereas console is the
# reverse. The source is injected: anything with readv(views) -> bytes read.
"""

from ..errors import GuestError, LauncherError
from ..virtio import ID_RNG
from .base import VirtioDevice, iov_skip


#L:362 How much we give per buffer. The device may write less than a buffer holds
# (the used len says how much), and a guest that hands us 256 descriptors over all
# of its RAM -- overlapping, so a chain is 256 x RAM -- must not cost us gigabytes of
# /dev/urandom per kick. Linux asks for 64 bytes at a time; 64 KiB is plenty.
MAX_FILL = 64 << 10


def iov_prefix(views, n):
    """The first n bytes of the buffers, as slices (nothing is copied)."""
    out = []
    for v in views:
        if n <= 0:
            break
        out.append(v[:n] if v.nbytes > n else v)
        n -= v.nbytes
    return out


class RngDevice(VirtioDevice):
    """virtio-rng: one queue, "input", no configuration space, no features."""

    device_id = ID_RNG
    queue_names = ("input",)

    def __init__(self, source, *, name="rng"):
        super().__init__(name)
        self.source = source

    def process(self, queue_index):
        queue = self.queues[queue_index]
        used = False
        while (chain := queue.pop()) is not None:
            if chain.readable:
                raise GuestError("Output buffers in rng?", device=self.name,
                                 queue=self.queue_names[queue_index])
            queue.push(chain.head, self.fill(iov_prefix(chain.writable, MAX_FILL)))
            used = True
        return used

    def fill(self, views):
        #L:361 Just like the console write, we loop to cover the whole buffer. In
        # this case, short reads actually happen quite a bit. A source that gives
        # nothing is the host's problem, not the guest's.
        total = 0
        remaining = [v for v in views if v.nbytes]
        while remaining:
            n = self.source.readv(remaining)
            if n <= 0:
                raise LauncherError(f"Read from /dev/urandom gave {n}")
            total += n
            remaining = iov_skip(remaining, n)
        return total
