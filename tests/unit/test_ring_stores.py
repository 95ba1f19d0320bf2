"""Ring indices are published in one store: another process reading them while we
write sees the old value or the new one, never something in between.

The crash campaign once stopped with "device used id 1, which is not a head": the
back-end had been SIGKILLed inside struct's pack_into of used.idx, which zeroes the
field before it writes it, so the front-end found used.idx 0 and walked into used
entries nobody had written (L:105). Here a second process watches the field while
we write it many times; with pack_into it sees 0 thousands of times a second."""

import mmap
import os
import struct
import time

from lguest.driver.vring import DriverQueue, GuestAllocator
from lguest.memory import Memory
from lguest.virtqueue import Virtqueue

SIZE = 256
DESC, AVAIL, USED = 0, 0x2000, 0x4000
STATE = 0xF000           # the watch's own words, on a page of their own
CHUNK = 500              # writes between two looks at the reader
CHANGES = 20_000         # times the reader must see the field change under it


class Shared(Memory):
    """Guest memory in a MAP_SHARED anonymous mapping, so a forked child sees our stores."""

    def __init__(self, size=1 << 16):
        self.map = mmap.mmap(-1, size)       # MAP_SHARED by default
        self.buf = memoryview(self.map)
        self.size = size

    def _locate(self, addr, length):
        return self.buf, addr


def watch(memory, addr, write, until_bad=False):
    """Fork a reader of the u16 at addr (which never holds 0 in these tests) and call
    write(n) for n = 0, 1, ... until the reader has seen the field change CHANGES
    times from one read to the next: proof that it read while we wrote, on another
    CPU (each call also waits for the reader to show it is running). With until_bad,
    stop at the first 0 the reader saw. Returns (changes seen, reads of 0)."""
    stop_r, stop_w = os.pipe()
    out_r, out_w = os.pipe()
    # [heartbeat, zeros seen, changes seen]
    state = memory.buf[STATE:STATE + 12].cast("I")
    state[0] = state[1] = state[2] = 0
    pid = os.fork()
    if pid == 0:                                       # the reader: another CPU
        try:
            read = struct.Struct("=H").unpack_from      # one load of the whole field
            buf = memory.buf
            changes, bad, last = 0, 0, read(buf, addr)[0]
            os.set_blocking(stop_r, False)
            while True:
                for _ in range(200):
                    value = read(buf, addr)[0]
                    if value != last:
                        changes += 1
                        last = value
                    if value == 0:
                        bad += 1
                state[1], state[2] = bad, changes
                state[0] = (state[0] + 1) & 0xFFFFFFFF
                try:
                    if os.read(stop_r, 1):
                        break
                except BlockingIOError:
                    pass
            os.write(out_w, f"{changes} {bad}".encode())
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 30
        n = 0
        while state[2] < CHANGES and time.monotonic() < deadline:
            if until_bad and state[1]:
                break
            beat = state[0]
            while state[0] == beat and time.monotonic() < deadline:
                time.sleep(0)
            write(n)
            n += 1
    finally:
        os.write(stop_w, b"x")
        os.waitpid(pid, 0)
        state.release()
    result = os.read(out_r, 100).decode().split()
    for fd in (stop_r, stop_w, out_r, out_w):
        os.close(fd)
    return tuple(int(x) for x in result)


def check(changes, bad):
    # The reader must really have watched the writes happen, or this proves nothing.
    assert changes >= CHANGES, f"the reader saw the field change only {changes} times"
    assert bad == 0, f"{bad} reads saw a value never published ({changes} changes seen)"


def fresh_used_ring(memory, **kw):
    """A device's queue on a ring already used once: used.idx 1, so 0 is never right."""
    memory.write_u16(USED + 2, 1)
    return Virtqueue(memory, SIZE, DESC, AVAIL, USED, **kw)


def test_used_idx_never_reads_as_a_value_the_device_did_not_publish():
    memory = Shared()
    queue = fresh_used_ring(memory)
    assert queue.used_idx == 1

    def push(_):
        nonlocal queue
        if queue.used_idx > 60_000:              # before the index wraps to 0
            queue = fresh_used_ring(memory)
        for n in range(CHUNK):
            queue.push(n % SIZE, 1)

    check(*watch(memory, USED + 2, push))
    assert memory.read_u16(USED + 2) == queue.used_idx > 1


def test_push_many_publishes_its_index_in_one_store_too():
    memory = Shared()
    queue = fresh_used_ring(memory)

    def push_many(_):
        nonlocal queue
        if queue.used_idx > 60_000:
            queue = fresh_used_ring(memory)
        for n in range(CHUNK // 2):
            queue.push_many([(n % SIZE, 1), ((n + 1) % SIZE, 2)])

    check(*watch(memory, USED + 2, push_many))
    assert memory.read_u16(USED + 2) == queue.used_idx > 1


def test_avail_event_never_passes_through_zero():
    # With EVENT_IDX the driver kicks only when avail.idx passes avail_event: a 0
    # read there would tell it not to kick a device that is about to sleep.
    memory = Shared()
    queue = Virtqueue(memory, SIZE, DESC, AVAIL, USED, features=1 << 29, last_avail_idx=1)
    event = USED + 4 + 8 * SIZE
    queue.set_notifications(True)
    assert memory.read_u16(event) == 1

    def notify(chunk):
        # As if the device had popped that far (avail_event is one past the furthest
        # chain popped, L:270): the values the store passes through are the test.
        for n in range(CHUNK):
            queue._popped_to = 1 + (chunk * CHUNK + n) % 60_000
            queue.set_notifications(True)

    check(*watch(memory, event, notify))
    assert memory.read_u16(event) == queue._popped_to


def test_the_drivers_avail_idx_never_reads_as_zero():
    # The driver's side (the vhost-user front-end's rings): DriverQueue publishes
    # avail.idx, used_event and the avail flags with Memory.write_u16. A device that
    # read avail.idx 0 would see the guest move it by 65000 and stop the ring.
    memory = Shared(1 << 20)
    allocator = GuestAllocator(0, 1 << 20)
    buf = allocator.alloc(16)
    ring = DriverQueue(memory, allocator, SIZE, start_idx=1)

    def publish(_):
        if ring.avail_idx_shadow > 60_000:
            # Before the index wraps to 0: the ring as DriverQueue(start_idx=1) leaves it.
            ring.avail_idx_shadow = ring.last_used_idx = 1
            memory.write_u16(ring.used_addr + 2, 1)
            memory.write_u16(ring.avail_addr + 2, 1)
        for _ in range(SIZE):
            ring.add_chain([(buf, 16)])
        # Play the device: every chain used, so the driver can add them again.
        for n in range(SIZE):
            memory.write_u32(ring.used_addr + 4 + 8 * n, n)
        memory.write_u16(ring.used_addr + 2, ring.avail_idx_shadow)
        assert len(ring.collect()) == SIZE

    check(*watch(memory, ring.avail_addr + 2, publish))
    assert memory.read_u16(ring.avail_addr + 2) == ring.avail_idx_shadow > 1


def test_the_watcher_sees_a_zeroing_store():
    """The check itself: struct's pack_into, as push() used, is caught."""
    memory = Shared()
    write = struct.Struct("<H").pack_into
    memory.write_u16(USED + 2, 1)

    def pack(chunk):
        for n in range(CHUNK):
            write(memory.buf, USED + 2, 1 + (chunk * CHUNK + n) % 60_000)

    changes, bad = watch(memory, USED + 2, pack, until_bad=True)
    assert bad > 0, (changes, bad)
