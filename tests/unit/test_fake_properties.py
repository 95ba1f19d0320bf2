"""Properties of the whole trap path, driven by hypothesis.

* random legal driver behaviour (feature subsets, queue sizes, buffer shapes, direct or
  indirect chains) always ends with the devices doing the right thing;
* random illegal behaviour always ends with the guest error the seed would give;
* the trap path (fake backend: x86 traps -> decode -> bus) and the direct path
  (bus.access called straight) leave the devices in identical states.
"""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis_budget import examples

from lguest.backends.fake_guest import BLK_IN, BLK_OUT, BLK_OUTHDR, GuestKernel
from lguest.devices.base import InlineRunner
from lguest.errors import GuestError
from lguest.simulation import simulate, simulated_devices
from lguest.memory import GuestMemory
from lguest.pci.bus import MMIO, PciBus
from lguest.virtio import (F_RING_INDIRECT_DESC, F_VERSION_1, ID_BLOCK, ID_CONSOLE, ID_RNG,
                           STATUS_ACKNOWLEDGE, bit)
from lguest import virtqueue

KINDS = ["console", "block:8", "rng"]
TRAP_EXAMPLES = examples(20)     # every example is a whole simulated run


class DirectGuest:
    """The same driver straight on the bus: no traps, interrupts after each access."""

    def __init__(self, bus, memory):
        self.bus, self.memory = bus, memory
        self.pending, self.on_interrupt, self.traps = [], None, 0
        self.in_handler = False
        bus.irq_sink = self.pending.append
        self.log = lambda text: None

    def io(self, space, addr, size, is_write, value=0):
        result = self.bus.access(space, addr, size, is_write, value)
        if not self.in_handler:
            self.in_handler = True
            try:
                while self.pending:
                    irq = self.pending.pop(0)
                    if self.on_interrupt:
                        self.on_interrupt(irq)
            finally:
                self.in_handler = False
        return result


def run_direct(play, kinds=KINDS):
    memory = GuestMemory(8 << 20)
    try:
        bus = PciBus(memory)
        for device in simulated_devices(kinds):
            bus.add_device(device, InlineRunner())
        observed = play(DirectGuest(bus, memory))
        return observed, device_state(bus)
    finally:
        memory.close()


def run_trapped(play, seed, kinds=KINDS):
    box = {}

    def scenario(guest):
        box["observed"] = play(guest)
        return "played"
    exit_, bus, _ = simulate(kinds, seed=seed, scenario=scenario)
    if exit_.status != 0:
        raise AssertionError(exit_.reason)
    return box["observed"], device_state(bus)


def device_state(bus):
    state = []
    for t in bus.devices:
        d = t.device
        entry = {"name": d.name, "negotiated": d.negotiated,
                 "used": [q.used_idx if q is not None else None for q in d.queues]}
        if hasattr(d, "store"):
            entry["disk"] = bytes(d.store.data)
        if hasattr(d, "sink"):
            entry["console"] = bytes(d.sink.data).decode()
        if hasattr(d, "source") and hasattr(d.source, "next"):
            entry["entropy_given"] = d.source.next
        state.append(entry)
    return state


# -- legal behaviour -----------------------------------------------------------------
@dataclass
class Plan:
    feature_mask: int
    queue_size: int
    indirect: bool
    text_pieces: list
    rng_lengths: list
    block_sector: int
    block_pieces: list


plans = st.builds(
    Plan,
    feature_mask=st.integers(0, 0xFFFFFFFF),
    queue_size=st.sampled_from([4, 8, 16, 64, 256]),
    indirect=st.booleans(),
    text_pieces=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                 min_size=1, max_size=40), min_size=1, max_size=2),
    rng_lengths=st.lists(st.integers(1, 100), min_size=1, max_size=2),
    block_sector=st.integers(0, 7),
    block_pieces=st.lists(st.integers(1, 512), min_size=1, max_size=2),
)


def legal_play(plan):
    def play(guest):
        kernel = GuestKernel(guest)
        observed = []
        for h in kernel.probe():
            accepted = h.negotiate(bit(F_VERSION_1) | plan.feature_mask)
            h.setup_queues([plan.queue_size] * 2)
            h.driver_ok()
            indirect = plan.indirect and bool(accepted & bit(F_RING_INDIRECT_DESC))
            observed.append((h.device_type, accepted, play_device(kernel, h, plan, indirect)))
        return observed
    return play


def play_device(kernel, h, plan, indirect):
    if h.device_type == ID_CONSOLE:
        pieces = [p.encode() for p in plan.text_pieces]
        h.queue(1).add_buffer(pieces, (), indirect=indirect)
        h.kick(1)
        return [u.len for u in h.queue(1).collect()]
    if h.device_type == ID_RNG:
        h.queue(0).add_buffer((), plan.rng_lengths, indirect=indirect)
        h.kick(0)
        return [(u.len, u.data) for u in h.queue(0).collect()]
    if h.device_type == ID_BLOCK:
        data = bytes((plan.block_sector + i) & 0xFF for i in range(512))
        cuts = sorted({min(c, 511) for c in plan.block_pieces[:-1]})
        parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [512]) if b > a]
        q = h.queue(0)
        q.add_buffer([BLK_OUTHDR.pack(BLK_OUT, 0, plan.block_sector)] + parts, [1], indirect=indirect)
        h.kick(0)
        wrote = q.collect()
        q.add_buffer([BLK_OUTHDR.pack(BLK_IN, 0, plan.block_sector)], [512, 1], indirect=indirect)
        h.kick(0)
        read = q.collect()
        return [(u.len, u.data) for u in wrote + read]
    return None


def check_legal(plan, observed, state):
    by_type = {t: (acc, obs) for t, acc, obs in observed}
    text = "".join(plan.text_pieces)
    assert by_type[ID_CONSOLE][1] == [0]
    assert state[0]["console"] == text
    assert by_type[ID_RNG][1][0][0] == sum(plan.rng_lengths)
    (w_len, w_data), (r_len, r_data) = by_type[ID_BLOCK][1]
    expected = bytes((plan.block_sector + i) & 0xFF for i in range(512))
    assert w_data == b"\0" and r_len == 513 and r_data == expected + b"\0"
    start = 512 * plan.block_sector
    assert state[1]["disk"][start:start + 512] == expected
    for _, accepted, _ in observed:
        assert accepted & bit(F_VERSION_1)


@settings(max_examples=TRAP_EXAMPLES)
@given(plans, st.integers(0, 2**16))
def test_legal_driver_behaviour_through_traps_always_works_and_agrees_with_direct(plan, seed):
    trapped, trapped_state = run_trapped(legal_play(plan), seed)
    check_legal(plan, trapped, trapped_state)
    direct, direct_state = run_direct(legal_play(plan))
    assert direct == trapped
    assert direct_state == trapped_state


# -- illegal behaviour ---------------------------------------------------------------
def _console(guest):
    kernel = GuestKernel(guest)
    return kernel, kernel.probe()[0]


def _live_rng(guest):
    kernel = GuestKernel(guest)
    h = [h for h in kernel.probe() if h.device_type == ID_RNG][0]
    h.negotiate()
    h.setup_queues()
    h.driver_ok()
    return h


def _publish(h, head, desc_writer):
    q = h.queue(0)
    desc_writer(q)
    slot = q.avail_idx_shadow & (q.size - 1)
    q.memory.write_u16(q.avail_addr + 4 + 2 * slot, head)
    q.avail_idx_shadow = (q.avail_idx_shadow + 1) & 0xFFFF
    q.memory.write_u16(q.avail_addr + 2, q.avail_idx_shadow)
    h.notify(0)


def _desc(q, i, addr, length, flags, nxt):
    q.memory.write(q.desc_addr + 16 * i, BLK_OUTHDR.pack(0, 0, 0)[:0] + addr.to_bytes(8, "little")
                   + length.to_bytes(4, "little") + flags.to_bytes(2, "little") + nxt.to_bytes(2, "little"))


ILLEGAL = {
    "feature read before VIRTIO_CONFIG_S_DRIVER":
        lambda g: _console(g)[1].read_common("device_feature"),
    "over-accepted features":
        lambda g: _console(g)[1].negotiate(0xFFFF_FFFF_FFFF_FFFF, force=True),
    "unset of device status bit":
        lambda g: (lambda h: (h.reset(), h.add_status(STATUS_ACKNOWLEDGE), h.add_status(2),
                              h.write_common("device_status", STATUS_ACKNOWLEDGE)))(_console(g)[1]),
    "Invalid vq notification on":
        lambda g: (lambda h: h.io(MMIO, h.notify_addrs[0], 2, True, 99))(_live_rng(g)),
    "read from padding":
        lambda g: _console(g)[1].mmio_read(59, 1),
    "Unexpected write to isr":
        lambda g: _console(g)[1].mmio_write(58, 1, 0),
    virtqueue.RULE_LOOP:
        lambda g: _publish(_live_rng(g), 0, lambda q: _desc(q, 0, 0x400000, 8, 1 | 2, 0)),
    virtqueue.RULE_HEAD_RANGE:
        lambda g: _publish(_live_rng(g), 4000, lambda q: None),
    virtqueue.RULE_NEXT_RANGE:
        lambda g: _publish(_live_rng(g), 0, lambda q: _desc(q, 0, 0x400000, 8, 1 | 2, 999)),
}


def expect_rule(run):
    with pytest.raises(GuestError) as info:
        run()
    return info.value.rule


@settings(max_examples=TRAP_EXAMPLES)
@given(st.sampled_from(sorted(ILLEGAL)), st.integers(0, 2**16))
def test_illegal_behaviour_ends_with_the_seeds_rule_on_both_paths(rule, seed):
    play = ILLEGAL[rule]
    assert expect_rule(lambda: run_trapped(play, seed)) == rule
    assert expect_rule(lambda: run_direct(play)) == rule
