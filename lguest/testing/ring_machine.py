"""The split ring as a state machine: the driver half and the device half on one ring.

The driver adds random chains (direct and indirect), the device pops them, completes
them in any order and pushes them back; either side may suppress notifications, and
the indices start near 65535 so the 16-bit wrap is crossed. After every step what the
device saw must be what the driver added, and the kick and interrupt decisions must
match a small model of the spec's rules, written here without vring_need_event().
"""

from collections import deque

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ..driver import DriverError, DriverQueue, GuestAllocator
from ..memory import GuestMemory
from ..virtio import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, bit
from ..virtqueue import Virtqueue

__all__ = ["SplitRingMachine", "crossed"]

MEM = 256 * 1024
CANARY_END = 0x1000          # the allocator starts above this: nobody may write below it
SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def crossed(event, old, count):
    """Did moving an index from `old` by `count` steps write position `event`?
    (2.4.7.2 / 2.4.8.2: notify when the index written equals the event index.)"""
    return any((old + k) & 0xFFFF == event for k in range(count))


class SplitRingMachine(RuleBasedStateMachine):
    """Our DriverQueue and the device's Virtqueue on one ring, against a model.

    Subclass it (or use it as is) and take `.TestCase`; override `make_device_queue`
    to put a Virtqueue of your own (a wrapper, a subclass) under the same checks."""

    def make_device_queue(self, size: int, desc: int, avail: int, used: int, features: int,
                          last_avail_idx: int) -> Virtqueue:
        """Override: the device's queue over the driver's ring (default: our Virtqueue)."""
        return Virtqueue(self.mem, size, desc, avail, used, features=features,
                         last_avail_idx=last_avail_idx)

    @initialize(size=st.sampled_from(SIZES), indirect=st.booleans(), event_idx=st.booleans(),
                start=st.one_of(st.integers(65530, 65535), st.integers(65530, 65535),
                                st.integers(0, 65535)))
    def setup(self, size: int, indirect: bool, event_idx: bool, start: int) -> None:
        """Start a run: a ring of `size` with the drawn features, indices from `start`."""
        self.mem = GuestMemory(MEM)
        self.mem.write(0, b"\xa5" * CANARY_END)
        features = (bit(F_RING_INDIRECT_DESC) if indirect else 0) | (bit(F_RING_EVENT_IDX) if event_idx else 0)
        self.size, self.event_idx = size, event_idx
        self.drv = DriverQueue(self.mem, GuestAllocator(CANARY_END, MEM), size,
                               features=features, start_idx=start)
        self.dev = self.make_device_queue(size, self.drv.desc_addr, self.drv.avail_addr,
                                          self.drv.used_addr, features, start)
        self.dev.check_enable()
        # The model.
        self.offered = deque()       # (token, readable bytes, writable lengths) not yet popped
        self.held = []               # (token, chain) the device holds
        self.used = deque()          # (token, len, data) pushed, not collected
        self.next_token = 0
        self.slots = {}              # token -> descriptors of the main table it takes
        self.avail_idx = self.used_idx = self.start = start
        self.added_since_kick = 0
        self.dev_notify = True       # device wants kicks (no NO_NOTIFY flag)
        self.avail_event = 0         # EVENT_IDX: as the zeroed ring says
        self.cb_enabled = True       # driver wants interrupts
        self.used_event = 0
        self.last_used = start       # driver's last_used_idx
        self.signalled = start       # used idx at the device's last interrupt decision
        self.wrapped = False

    def teardown(self) -> None:
        if hasattr(self, "mem"):
            self.held.clear()
            self.mem.close()

    # -- driver --------------------------------------------------------------------------
    @rule(readable=st.lists(st.binary(max_size=24), max_size=4),
          writable=st.lists(st.integers(0, 24), max_size=4),
          indirect=st.sampled_from([None, False, True]))
    def add(self, readable, writable, indirect):
        total = len(readable) + len(writable)
        use_indirect = indirect if indirect is not None else (
            self.drv.indirect and total > 1 and self.drv.num_free > 0)
        if use_indirect and not self.drv.indirect:
            return     # a well-behaved driver does not; the hostile tests cover it
        token = self.next_token
        needed = 1 if use_indirect else total
        if total == 0 or total > self.size or needed > self.drv.num_free:
            free = self.drv.num_free
            try:
                self.drv.add_buffer(readable, writable, token=token, indirect=indirect)
            except DriverError:
                assert self.drv.num_free == free
                return
            raise AssertionError("driver accepted a chain it has no room for")
        self.drv.add_buffer(readable, writable, token=token, indirect=indirect)
        self.next_token += 1
        self.slots[token] = needed
        self.offered.append((token, [bytes(r) for r in readable], list(writable)))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.added_since_kick += 1
        self.wrapped |= self.avail_idx < self.start

    @rule()
    def kick(self):
        old, count = (self.avail_idx - self.added_since_kick) & 0xFFFF, self.added_since_kick
        if self.event_idx:
            expected = crossed(self.avail_event, old, count)
        else:
            expected = self.dev_notify
        self.added_since_kick = 0
        assert self.drv.kick_prepare() == expected

    @rule()
    def collect(self):
        for got in self.drv.collect():
            token, length, data = self.used.popleft()
            assert (got.token, got.len, got.data) == (token, length, data)
            del self.slots[token]
            self.last_used = (self.last_used + 1) & 0xFFFF
            if self.event_idx and self.cb_enabled:
                self.used_event = self.last_used
        assert not self.used

    @rule()
    def disable_cb(self):
        self.drv.disable_cb()
        if self.event_idx and self.cb_enabled:
            self.used_event = 0
        self.cb_enabled = False

    @rule()
    def enable_cb(self):
        nothing_pending = self.drv.enable_cb()
        self.cb_enabled = True
        self.used_event = self.last_used
        assert nothing_pending == (not self.used)

    # -- device ----------------------------------------------------------------------------
    @rule()
    def pop(self):
        chain = self.dev.pop()
        if not self.offered:
            assert chain is None
            return
        token, readable, writable = self.offered.popleft()
        assert [bytes(b) for b in chain.readable] == readable
        assert [len(b) for b in chain.writable] == writable
        self.held.append((token, chain))

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 255), payload=st.binary(max_size=100), claim=st.integers(0, 8))
    def push(self, which, payload, claim):
        token, chain = self.held.pop(which % len(self.held))
        written = chain.scatter(payload)
        # A device may report less than it wrote, never more than the space.
        length = max(0, written - claim)
        self.dev.push(chain.head, length)
        self.used.append((token, length, bytes(payload[:length])))
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    @rule()
    def interrupt(self):
        count = (self.used_idx - self.signalled) & 0xFFFF
        if count == 0:
            expected = False
        elif self.event_idx:
            expected = crossed(self.used_event, self.signalled, count)
        else:
            expected = self.cb_enabled
        if count:
            self.signalled = self.used_idx
        assert self.dev.should_interrupt() == expected

    @rule(enabled=st.booleans())
    def notifications(self, enabled):
        self.dev.set_notifications(enabled)
        if self.event_idx:
            if enabled:
                self.avail_event = self.dev.last_avail_idx
        else:
            self.dev_notify = enabled

    @rule(count=st.integers(1, 40), payload=st.binary(min_size=1, max_size=8))
    def burst(self, count, payload):
        """Many small round trips at once, so runs go far enough to wrap the indices."""
        for _ in range(count):
            self.add([payload], [len(payload)], None)
            self.pop()
            if self.held:
                self.push(len(self.held) - 1, payload, 0)
            self.interrupt()
        self.kick()
        self.collect()

    @rule()
    def resume_elsewhere(self):
        """vhost-user's GET/SET_VRING_BASE: a new Virtqueue picks the ring up where the
        old one left it; used.idx comes from the ring, pending interrupts are forgotten."""
        old = self.dev
        self.dev = self.make_device_queue(self.size, old.desc, old.avail, old.used,
                                          old.features, old.last_avail_idx)
        # (No check_enable(): used.flags may hold our own NO_NOTIFY by now.)
        self.signalled = self.used_idx

    # -- what must always hold ---------------------------------------------------------------
    @invariant()
    def indices_agree(self):
        assert self.dev.used_idx == self.used_idx
        assert self.dev.last_avail_idx == (self.avail_idx - len(self.offered)) & 0xFFFF
        assert self.drv.outstanding == len(self.offered) + len(self.held) + len(self.used)
        assert self.dev.has_available() == bool(self.offered)
        assert self.drv.num_free == self.size - sum(self.slots.values())

    @invariant()
    def nothing_written_outside_the_allocator(self):
        assert self.mem.read(0, CANARY_END) == b"\xa5" * CANARY_END
