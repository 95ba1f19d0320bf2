"""Issue 15's hostile-guest findings at the ring (what PciBus.access reaches, through
the transport's queue_enable -> check_enable() and a notify -> InlineRunner.serve):
rings laid over each other are refused, a notify does a bounded amount of work
whatever the indices say, and a chain longer than 2^32 bytes is refused, so no
struct.error can escape."""

import struct

import pytest

from lguest import virtqueue as vqmod
from lguest.devices.base import InlineRunner, serve_until_idle
from lguest.devices.rng import MAX_FILL, RngDevice
from lguest.errors import GuestError
from lguest.host.runner import ThreadedRunner
from lguest.memory import GuestMemory
from lguest.virtio import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from lguest.virtqueue import Virtqueue

DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
WRITE_NEXT = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT


class CountingSource:
    """/dev/urandom's stand-in, counting what it was asked for (and, so that the old
    unbounded loop fails instead of hanging the suite, giving up after `limit` reads)."""

    def __init__(self, limit=100_000):
        self.reads = self.bytes = 0
        self.limit = limit

    def readv(self, views):
        self.reads += 1
        if self.reads > self.limit:
            raise RuntimeError("unbounded work for one notify")
        n = sum(v.nbytes for v in views)
        self.bytes += n
        return n


def desc(mem, i, addr, length, flags=0, nxt=0):
    mem.write(DESC + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


@pytest.mark.parametrize("used", [AVAIL, AVAIL + 4, DESC, DESC + 0x40])
def test_a_used_ring_over_the_avail_ring_or_the_table_is_refused_at_enable(used):
    with GuestMemory(64 << 10) as mem:
        vq = Virtqueue(mem, 16, DESC, AVAIL, used, device="rng", name="input")
        with pytest.raises(GuestError) as excinfo:
            vq.check_enable()
        assert excinfo.value.rule == vqmod.RULE_RINGS_OVERLAP


def test_rings_side_by_side_are_accepted():
    with GuestMemory(64 << 10) as mem:
        size = 16
        avail_end = AVAIL + 4 + 2 * size
        Virtqueue(mem, size, DESC, AVAIL, avail_end + (-avail_end % 4)).check_enable()
        Virtqueue(mem, size, AVAIL + 0x100, AVAIL, DESC + 16 * size).check_enable()


def test_a_notify_is_bounded_when_pushes_move_the_avail_index():
    """The fuzzer's notify that never returned: used == avail and the shared index
    ahead, so each push() bumps what the next pop() reads as avail.idx."""
    with GuestMemory(64 << 10) as mem:
        size = 16
        for i in range(size):
            desc(mem, i, 0x8000, 1, VRING_DESC_F_WRITE)   # used len 1: a valid head
        mem.write_u16(AVAIL + 2, 5)           # the shared index, ahead of us
        vq = Virtqueue(mem, size, DESC, AVAIL, AVAIL, device="rng", name="input")
        source = CountingSource()
        device = RngDevice(source)
        device.activate([vq], 0)
        runner = InlineRunner()
        runner.start(device, lambda qi: None)
        runner.kick(0)                        # before: never returned
        assert source.reads <= size


def test_a_threaded_queue_spending_its_rounds_comes_back_and_still_stops():
    with GuestMemory(64 << 10) as mem:
        size = 16
        for i in range(size):
            desc(mem, i, 0x8000, 1, VRING_DESC_F_WRITE)   # used len 1: a valid head
        mem.write_u16(AVAIL + 2, 5)
        vq = Virtqueue(mem, size, DESC, AVAIL, AVAIL, device="rng", name="input")
        source = CountingSource(limit=10 ** 9)
        device = RngDevice(source)
        device.activate([vq], 0)
        runner = ThreadedRunner()
        runner.start(device, lambda qi: None)
        import time
        time.sleep(0.2)
        runner.stop()                         # before: the thread never saw its stop fd
        assert not runner.running and source.reads > 0


def test_serve_until_idle_is_bounded_per_call():
    with GuestMemory(64 << 10) as mem:
        size = 8
        for i in range(size):
            desc(mem, i, 0x8000, 1, VRING_DESC_F_WRITE)   # used len 1: a valid head
        mem.write_u16(AVAIL + 2, 3)
        vq = Virtqueue(mem, size, DESC, AVAIL, AVAIL, device="rng", name="input")
        source = CountingSource()
        device = RngDevice(source)
        device.activate([vq], 0)
        serve_until_idle(device, 0, lambda qi: None)
        assert source.reads <= 2 * size * 4 and vq.round_spent


def test_a_chain_longer_than_2_to_the_32_is_refused_and_rng_work_is_bounded():
    """256 writable descriptors, each over all of 17 MiB of RAM: 4.35 GB, which no
    used len can say (before: struct.error out of push())."""
    ram = 17 << 20
    with GuestMemory(ram) as mem:
        size = 256
        for i in range(size):
            desc(mem, i, 0, ram, WRITE_NEXT if i < size - 1 else VRING_DESC_F_WRITE, i + 1)
        mem.write_u16(AVAIL + 4, 0)
        mem.write_u16(AVAIL + 2, 1)
        vq = Virtqueue(mem, size, DESC, AVAIL, 0x10000, device="rng", name="input")
        with pytest.raises(GuestError) as excinfo:
            vq.pop()
        assert excinfo.value.rule == vqmod.RULE_CHAIN_LENGTH


def test_rng_fills_at_most_max_fill_per_chain():
    ram = 4 << 20
    with GuestMemory(ram) as mem:
        size = 8
        for i in range(size):
            desc(mem, i, 0x100000, 2 << 20, WRITE_NEXT if i < size - 1 else VRING_DESC_F_WRITE, i + 1)
        mem.write_u16(AVAIL + 2, 1)
        vq = Virtqueue(mem, size, DESC, AVAIL, 0x10000, device="rng", name="input")
        source = CountingSource()
        device = RngDevice(source)
        device.activate([vq], 0)
        assert device.process(0)
        assert source.bytes == MAX_FILL        # before: 8 x 2 MiB of urandom
        assert struct.unpack_from("<II", mem.read(0x10000 + 4, 8)) == (0, MAX_FILL)


def one_chain_offered(mem, size):
    """A table of `size` one-byte writable descriptors, chain 0 offered in the avail ring."""
    for i in range(size):
        desc(mem, i, 0x8000, 1, VRING_DESC_F_WRITE)
    mem.write_u16(AVAIL + 4, 0)
    mem.write_u16(AVAIL + 2, 1)


class EagerDriverQueue(Virtqueue):
    """A ring whose driver adds a chain each time the device asks for kicks again: the
    fast front-end that answers an interrupt before the device's last look."""

    def __init__(self, *args, publish=0, **kw):
        super().__init__(*args, **kw)
        self.publish = publish

    def set_notifications(self, enabled):
        super().set_notifications(enabled)
        if enabled and self.publish:
            self.publish -= 1
            idx = self.memory.read_u16(AVAIL + 2)
            self.memory.write_u16(AVAIL + 4 + 2 * (idx % self.size), idx % self.size)
            self.memory.write_u16(AVAIL + 2, (idx + 1) & 0xFFFF)


def test_serve_until_idle_leaves_kicks_armed_when_its_last_round_found_more():
    """EVENT_IDX: serving ROUNDS rounds, each of whose second look found a chain the
    driver had just added, used to return with avail_event one behind what it had
    taken and round_spent false: the runner slept, the driver's next chain did not pass
    avail_event, so it never kicked, and that ring hung for good (seen with our own
    front-end when the interrupt was sent a few microseconds earlier)."""
    from lguest.devices.base import ROUNDS
    from lguest.virtio import F_RING_EVENT_IDX, bit
    from lguest.virtqueue import vring_need_event
    with GuestMemory(64 << 10) as mem:
        size = 8
        one_chain_offered(mem, size)
        vq = EagerDriverQueue(mem, size, DESC, AVAIL, 0x3000, device="rng", name="input",
                              features=bit(F_RING_EVENT_IDX), publish=ROUNDS)
        device = RngDevice(CountingSource())
        device.activate([vq], bit(F_RING_EVENT_IDX))
        serve_until_idle(device, 0, lambda qi: None)
        assert vq.last_avail_idx == 1 + ROUNDS                 # every chain was served
        if not vq.round_spent:                                 # the runner will sleep, so:
            avail_event = mem.read_u16(0x3000 + 4 + 8 * size)
            old = mem.read_u16(AVAIL + 2)
            assert vring_need_event(avail_event, old + 1, old), \
                f"the driver's next chain would not kick (avail_event {avail_event}, taken {old})"


def test_the_interrupt_goes_out_before_the_last_look():
    """At queue depth 1 the guest waits for the interrupt: it is sent as soon as the
    first pass used the chain, as the seed's add_used_and_trigger() does, and not
    after the second look (L:315) -- which, for a fast front-end, could already find
    its next request. Each pass's interrupt is checked on its own."""
    with GuestMemory(64 << 10) as mem:
        size = 8
        one_chain_offered(mem, size)
        events = []
        vq = EagerDriverQueue(mem, size, DESC, AVAIL, 0x3000, device="rng", name="input",
                              publish=1)
        device = RngDevice(CountingSource())
        device.activate([vq], 0)
        process = device.process
        device.process = lambda qi: events.append("process") or process(qi)
        serve_until_idle(device, 0, lambda qi: events.append(("interrupt", vq.used_idx)))
        # First pass: chain 0, its interrupt; the kicks-on look finds the chain the
        # driver added meanwhile, and that one gets its own interrupt, then idle.
        assert events[:4] == ["process", ("interrupt", 1), "process", ("interrupt", 2)]
        assert vq.last_avail_idx == 2
