"""Hostile rings: Hypothesis strategies for split rings a malicious driver could write.

Each strategy draws a `HostileRing`, a recipe: `ring.build(memory)` writes it into a
small guest memory (`ring_memory()`, guard pages on both sides, so a stray access kills
the process instead of passing) and returns the device-side `Virtqueue` over it. Three
kinds, from shallow to deep: random bytes everywhere (`random_byte_rings`), plausible
descriptor tables whose heads, nexts, lengths and flags are sometimes wrong
(`random_field_rings`), and random ring addresses (`random_address_rings`).
`hostile_rings()` draws any of them.

Whatever the ring holds, the code under test may only raise GuestError (a clear "bad
driver" error) and must never reach outside guest memory. `exercise_queue()` drives a
Virtqueue the way a device would and checks that; `serve_hostile()` hands the queue to a
device of yours and lets its process() loose on it:

    @given(ring=hostile_rings())
    def test_my_device_survives(ring):
        serve_hostile(MyDevice(), ring)
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Callable

from hypothesis import strategies as st

from ..devices.base import VirtioDevice
from ..errors import GuestError
from ..memory import GuestMemory
from ..virtio import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, bit
from ..virtqueue import SEED_RULES, Virtqueue

__all__ = ["HostileRing", "RING_MEMORY", "exercise_queue", "hostile_rings", "inside_guest",
           "random_address_rings", "random_byte_rings", "random_field_rings", "ring_memory",
           "serve_hostile"]

RING_MEMORY = 16 * 1024          # the whole guest: rings, tables and buffers
DESC, AVAIL, USED = 0x0, 0x1000, 0x1800

sizes = st.sampled_from([1, 2, 4, 8, 16, 64, 128])
features = st.sampled_from([0, bit(F_RING_INDIRECT_DESC), bit(F_RING_EVENT_IDX),
                            bit(F_RING_INDIRECT_DESC) | bit(F_RING_EVENT_IDX)])
addrs = st.one_of(st.integers(0, RING_MEMORY - 64),
                  st.integers(0, 8).map(lambda k: DESC + 16 * k),
                  st.sampled_from([RING_MEMORY - 1, RING_MEMORY - 16, 2**32 - 1, 2**64 - 1,
                                   2**64 - 16]),
                  st.integers(0, 2**64 - 1))
lengths = st.one_of(st.integers(0, 64), st.integers(0, 9).map(lambda k: 16 * k),
                    st.sampled_from([16 * 129, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
# Small flags and nexts twice as likely as wild ones, so chains go on and loop.
descs = st.tuples(addrs, lengths,
                  st.one_of(st.integers(0, 7), st.integers(0, 7), st.integers(0, 0xFFFF)),
                  st.one_of(st.integers(0, 999), st.integers(0, 999), st.integers(0, 0xFFFF)))
mostly_none = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 0xFFFF))
flag_words = st.one_of(st.just(0), st.just(1), st.integers(0, 0xFFFF))


def ring_memory() -> GuestMemory:
    """A fresh guest memory of RING_MEMORY bytes with guard pages (use it in a `with`)."""
    return GuestMemory(RING_MEMORY)


@dataclass
class HostileRing:
    """A recipe for one hostile ring; build() writes it and returns the device's queue."""

    kind: str
    size: int
    features: int
    last_avail_idx: int = 0
    where: tuple = (DESC, AVAIL, USED)
    write: Callable[[GuestMemory], None] = field(default=lambda mem: None, repr=False)
    detail: dict = field(default_factory=dict)

    def build(self, memory: GuestMemory, *, name: str = "q", device: str = "dev") -> Virtqueue:
        """Write the ring into `memory` and return the device's Virtqueue over it."""
        self.write(memory)
        return Virtqueue(memory, self.size, *self.where, features=self.features, name=name,
                         device=device, last_avail_idx=self.last_avail_idx)

    def __repr__(self):
        return (f"HostileRing({self.kind}, size={self.size}, features={self.features:#x}, "
                f"last={self.last_avail_idx}, {self.detail})")


@st.composite
def random_byte_rings(draw) -> HostileRing:
    """All of memory random (so indirect tables and used.flags are too), then the
    descriptor table and avail ring drawn by Hypothesis, so failures shrink."""
    size, feats = draw(sizes), draw(features)
    seed = draw(st.integers(0, 2**32))
    desc, avail = draw(st.binary(max_size=2048)), draw(st.binary(max_size=262))
    last, offered = draw(st.integers(0, 0xFFFF)), draw(mostly_none)

    def write(mem):
        mem.write(0, random.Random(seed).randbytes(RING_MEMORY))
        mem.write(DESC, desc)
        mem.write(AVAIL, avail)
        if offered is None:     # mostly a believable avail.idx, so pop() reads on
            mem.write_u16(AVAIL + 2, (last + 1 + mem.read_u8(AVAIL + 2) % size) & 0xFFFF)
            mem.write_u16(AVAIL, mem.read_u8(AVAIL) & 1)
            for n in range(size):
                slot = AVAIL + 4 + 2 * n
                mem.write_u16(slot, mem.read_u16(slot) % size)

    return HostileRing("random bytes", size, feats, last, write=write,
                       detail=dict(seed=seed, desc=desc, avail=avail, offered=offered))


@st.composite
def random_field_rings(draw) -> HostileRing:
    """Plausible tables whose heads, nexts, lengths and flags are sometimes wrong.
    Indirect tables point into the same descriptor area, so they are garbage too."""
    size, feats = draw(sizes), draw(features)
    table = draw(st.lists(descs, min_size=1, max_size=16))
    heads = draw(st.lists(st.integers(0, 999), min_size=1, max_size=6))
    wild_head, avail_jump = draw(mostly_none), draw(mostly_none)
    avail_flags, last = draw(flag_words), draw(st.integers(0, 0xFFFF))

    def fold(n):
        # Small numbers (< 1000) are folded into the ring: most heads and nexts are in
        # range and chains go on (and loop); the rest stay wild.
        return n % size if n < 1000 else n

    def write(mem):
        for i, (addr, length, flags, nxt) in enumerate(table[:size]):
            mem.write(DESC + 16 * i, struct.pack("<QIHH", addr, length, flags, fold(nxt)))
        chosen = heads[:size] if wild_head is None else heads[:size - 1] + [wild_head]
        for n, head in enumerate(chosen):
            mem.write_u16(AVAIL + 4 + 2 * ((last + n) % size), fold(head))
        idx = (last + len(chosen)) & 0xFFFF if avail_jump is None else avail_jump
        mem.write_u16(AVAIL + 2, idx)
        mem.write_u16(AVAIL, avail_flags)

    return HostileRing("random fields", size, feats, last, write=write,
                       detail=dict(table=table, heads=heads, wild_head=wild_head,
                                   avail_jump=avail_jump, avail_flags=avail_flags))


@st.composite
def random_address_rings(draw) -> HostileRing:
    """Zeroed memory, but the three ring addresses are anything at all."""
    size, feats = draw(sizes), draw(features)
    where = draw(st.tuples(*[st.integers(0, 2**64 - 1)] * 3))
    return HostileRing("random addresses", size, feats, where=where)


def hostile_rings() -> st.SearchStrategy[HostileRing]:
    """Any of the three kinds of hostile ring."""
    return st.one_of(random_byte_rings(), random_field_rings(), random_address_rings())


def inside_guest(memory: GuestMemory, view: memoryview) -> bool:
    """A view is inside guest RAM if it is a slice of the guest's own buffer."""
    return view.obj is memory._ram.obj and len(view) <= memory.size


def check_guest_error(error: GuestError, known_rules=SEED_RULES):
    assert error.rule in known_rules, f"unexpected rule {error.rule!r}"


def exercise_queue(memory: GuestMemory, vq: Virtqueue, rounds: int = 8) -> list[str]:
    """Drive the device side of `vq` the way a device would, for a few rounds.

    Returns the rules of the GuestErrors met (at most one: a device stops at the first);
    fails (AssertionError) on any other exception's rule or a view outside memory."""
    rules = []
    try:
        vq.check_enable()
    except GuestError as e:
        check_guest_error(e)
        rules.append(e.rule)
    for _ in range(rounds):
        try:
            vq.set_notifications(False)
            chain = vq.pop()
            if chain is None:
                vq.set_notifications(True)
                vq.should_interrupt()
                break
            for view in chain.readable + chain.writable:
                assert inside_guest(memory, view)
            bytes(chain.gather())
            n = chain.scatter(b"\xee" * 40)
            vq.push(chain.head, n)
            vq.should_interrupt()
        except GuestError as e:
            check_guest_error(e)
            assert (e.device, e.queue) == (vq.device, vq.name)
            rules.append(e.rule)
            break
    return rules


def serve_hostile(device: VirtioDevice, ring: HostileRing, queue_index: int = 0,
                  *, negotiated: int | None = None, rounds: int = 4) -> list[GuestError]:
    """Activate `device` with `ring` as queue `queue_index` and call its process().

    The device may raise GuestError (it must, rather than serve a broken ring) and
    nothing else; returns the GuestErrors it raised. The device is reset afterwards."""
    errors = []
    with ring_memory() as memory:
        name = (device.queue_names[queue_index] if queue_index < len(device.queue_names)
                else str(queue_index))
        vq = ring.build(memory, name=name, device=device.name)
        queues = [None] * max(len(device.queue_names), queue_index + 1)
        queues[queue_index] = vq
        device.activate(queues, ring.features if negotiated is None else negotiated)
        try:
            for _ in range(rounds):
                try:
                    if not device.process(queue_index):
                        break
                    vq.should_interrupt()
                except GuestError as e:
                    assert e.rule, "a GuestError must name the rule the driver broke"
                    # Without its traceback: the frames hold views of guest memory.
                    errors.append(e.with_traceback(None))
                    break
        finally:
            device.reset()
            del vq, queues
    return errors
