"""virtio-net mergeable rx buffers (VIRTIO_NET_F_MRG_RXBUF, L:387-388): a frame spread
over many small rx chains, num_buffers in the first header; sans-I/O, with the fake tap."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from lguest.devices import net
from lguest.devices.base import serve_until_idle
from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.virtio import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC
from lguest.virtqueue import vring_need_event
from hypothesis_budget import examples
from test_dev_net import FakeTap, vnet
from test_dev_rings import GuestRing

MRG = 1 << net.F_MRG_RXBUF
GSO = (1 << net.F_GUEST_TSO4) | (1 << net.F_GUEST_TSO6) | (1 << net.F_GUEST_CSUM)
HDR = 12


class StrictTap(FakeTap):
    """The fake tap, refusing what the kernel refuses: more than IOV_MAX buffers."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def readv(self, views):
        if len(views) > net.IOV_MAX:
            raise OSError(22, "Invalid argument")
        self.reads += 1
        return super().readv(views)


def make(size=256, negotiated=MRG | GSO, mem=8 << 20):
    memory = GuestMemory(mem)
    rx = GuestRing(memory, size, base=0x1000, heap=0x100000)
    tx = GuestRing(memory, 8, base=0x80000, heap=0x90000)
    tap = StrictTap()
    dev = net.NetDevice(tap)
    dev.activate([rx.queue, tx.queue], negotiated)
    return dev, rx, tap


def post(rx, count, *layout):
    """Post `count` chains, each of writable buffers of the sizes in layout (default one
    of 1536, as Linux's mergeable buffers are about); returns [(head, [(addr, len)])]."""
    layout = layout or (1536,)
    chains = []
    for _ in range(count):
        head, addrs = rx.add([], layout)
        chains.append((head, list(zip(addrs, layout))))
    return chains


def frame(body_len, seed=0):
    """A header (num_buffers left 0, as the tap leaves it) and a patterned body."""
    body = bytes((i * 7 + seed) & 0xFF for i in range(body_len))
    return vnet(flags=1) + body


def delivered(rx, posted, used):
    """The bytes the driver sees for used entries, read from the chains' buffers."""
    by_head = dict(posted)
    data = b""
    for head, n in used:
        for addr, length in by_head[head]:
            take = min(length, n)
            data += rx.memory.read(addr, take)
            n -= take
    return data


def num_buffers(data):
    return struct.unpack_from("<H", data, 10)[0]


def test_mrg_rxbuf_is_offered_beyond_the_seeds_features():
    dev = net.NetDevice(FakeTap())
    assert dev.features & MRG
    assert dev.features == net.SEED_FEATURES | MRG


@pytest.mark.parametrize("body_len", [60, 1514, 4000, 65550])
@pytest.mark.parametrize("layout", [(1536,), (100,), (5, 7, 500)])
def test_a_frame_spreads_over_small_chains_byte_exact(body_len, layout):
    dev, rx, tap = make(size=1024)
    posted = post(rx, 700 if layout == (100,) else 200, *layout)
    sent = frame(body_len)
    tap.incoming = [sent]
    assert dev.process(net.RX)
    used = rx.used_entries()
    per_chain = sum(layout)
    need = -(-len(sent) // per_chain)
    assert len(used) == need
    assert [h for h, _ in used] == [h for h, _ in posted[:need]]        # in ring order
    # 5.1.6.4.1: every buffer but the last used completely.
    assert [n for _, n in used[:-1]] == [per_chain] * (need - 1)
    assert sum(n for _, n in used) == len(sent)
    got = delivered(rx, posted, used)
    assert num_buffers(got) == need
    assert got[:10] == sent[:10] and got[HDR:] == sent[HDR:]
    assert dev.stats["rx"] == 1 and dev.stats["rx_merged"] == (need > 1)
    # The chains popped for a largest frame but not used went back: the next pop is
    # the first of them, and nothing was lost from the ring.
    chain = rx.queue.pop()
    assert chain.head == posted[need][0]


def test_several_frames_in_a_burst_use_consecutive_chains_then_give_back_the_rest():
    dev, rx, tap = make()
    posted = post(rx, 200)
    frames = [frame(n, seed=i) for i, n in enumerate((60, 4000, 1514, 65550, 60))]
    tap.incoming = list(frames)
    assert dev.process(net.RX)
    used = rx.used_entries()
    at = 0
    for sent in frames:
        count = num_buffers(delivered(rx, posted, used[at:at + 1]))
        got = delivered(rx, posted, used[at:at + count])
        assert got[HDR:] == sent[HDR:] and count == -(-len(sent) // 1536)
        at += count
    assert at == len(used) and dev.stats["rx"] == 5
    assert rx.queue.last_avail_idx == at           # exactly the used ones taken
    assert rx.queue.pop().head == posted[at][0]


def test_not_negotiated_keeps_one_chain_a_frame_and_num_buffers_one():
    dev, rx, tap = make(negotiated=GSO)
    posted = post(rx, 4)
    tap.incoming = [frame(1000), frame(60)]
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert used == [(posted[0][0], 1012), (posted[1][0], 72)]
    assert num_buffers(delivered(rx, posted, used[:1])) == 1
    assert rx.queue.pop().head == posted[2][0]      # only the one it needed, a frame


def test_without_gso_a_frame_needs_room_for_1514_bytes_only():
    dev, rx, tap = make(size=16, negotiated=MRG)
    post(rx, 2)                                     # 3072 >= 1526: no bounce needed
    tap.incoming = [frame(60)]
    assert dev.process(net.RX)
    assert rx.queue.last_avail_idx == 1


def test_few_small_buffers_still_take_small_frames_and_a_big_one_waits_for_more():
    # The driver posted 5 buffers, not a 64 KiB frame's worth: small frames must not
    # stall (they go through a host buffer), and a frame too big waits, in order.
    dev, rx, tap = make(size=64)
    posted = post(rx, 5)
    small, middle, big, after = frame(60, 1), frame(4000, 2), frame(10000, 3), frame(60, 4)
    tap.incoming = [small, middle, big, after]
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert len(used) == 1 + 3
    assert delivered(rx, posted, used[:1])[HDR:] == small[HDR:]
    assert delivered(rx, posted, used[1:])[HDR:] == middle[HDR:]
    # The big one was read (the tap cannot say how long a frame is first) and is held.
    assert tap.incoming == [after] and dev.stats["rx_waits"] == 1
    assert not dev.wants_host_input(net.RX)         # the driver's kick brings us back
    assert not dev.process(net.RX)                  # still nothing to hold it
    more = posted + post(rx, 7)
    assert not dev.wants_host_input(net.RX)         # held until delivered
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert len(used) == 7 + 1 and used[0][0] == posted[4][0]
    assert delivered(rx, more, used[:7])[HDR:] == big[HDR:]
    assert num_buffers(delivered(rx, more, used[:1])) == 7
    assert delivered(rx, more, used[7:])[HDR:] == after[HDR:]   # and the next, after it
    assert dev.stats["rx"] == 4 and tap.incoming == [] and dev._held == [None]


def test_a_frame_no_posted_ring_can_hold_is_dropped_not_waited_for(caplog):
    dev, rx, tap = make(size=8, negotiated=MRG)
    posted = post(rx, 8, 64)                        # the whole ring: 512 bytes
    tap.incoming = [frame(1000), frame(40)]
    assert dev.process(net.RX)
    assert dev.stats["rx_dropped"] == 1 and "dropped a frame of 1012 bytes" in caplog.text
    used = rx.used_entries()
    assert len(used) == 1 and delivered(rx, posted, used)[HDR:] == frame(40)[HDR:]


def test_more_chains_than_readv_takes_go_through_the_host_buffer():
    # 1,639 chains of 40 bytes hold a largest frame: more than IOV_MAX for one readv.
    dev, rx, tap = make(size=2048, mem=16 << 20)
    posted = post(rx, 2048, 40)
    sent = frame(65550)
    tap.incoming = [sent]
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert len(used) == -(-len(sent) // 40) > net.IOV_MAX
    got = delivered(rx, posted, used)
    assert got[HDR:] == sent[HDR:] and num_buffers(got) == len(used)
    assert dev.stats["rx_errors"] == 0


def test_a_spent_round_gives_the_chains_back_and_the_frame_waits_for_the_next():
    dev, rx, tap = make(size=8)
    post(rx, 8, 4096)                               # 32 KiB: less than a largest frame

    class GuestAddsMeanwhile(StrictTap):
        def readv(self, views):                     # the driver refills as we work
            n = super().readv(views)
            post(rx, 1, 4096)
            return n

    dev.taps[0] = tap = GuestAddsMeanwhile()
    tap.incoming = [frame(60), frame(60, 1)]
    rx.queue.new_round()
    assert dev.process(net.RX)
    assert len(rx.used_entries()) == 1 and len(tap.incoming) == 1
    assert rx.queue.round_spent                     # the runner comes back
    assert rx.queue.last_avail_idx == 1             # the 7 unused went back
    rx.queue.new_round()
    assert dev.process(net.RX)
    assert len(rx.used_entries()) == 1 and tap.incoming == []


def test_reset_forgets_a_held_frame():
    dev, rx, tap = make(size=16)
    post(rx, 1)
    tap.incoming = [frame(5000)]
    assert not dev.process(net.RX)
    assert dev._held[0] is not None
    dev.reset()
    assert dev._held == [None]


def test_a_frames_entries_appear_with_one_used_index_update(monkeypatch):
    dev, rx, tap = make()
    post(rx, 64)
    monkeypatch.setattr(rx.queue, "push", lambda *a: pytest.fail("push() per chain"))
    tap.incoming = [frame(65550)]
    assert dev.process(net.RX)
    assert len(rx.used_entries()) == 43


@pytest.mark.parametrize("readable,writable,rule", [
    ([b"x"], [2048], net.RULE_RX_READABLE),
    ([], [11], net.RULE_RX_SHORT),
    ([], [4, 7], net.RULE_RX_SHORT),
])
def test_bad_rx_chains_are_guest_errors_naming_the_rule(readable, writable, rule):
    dev, rx, tap = make()
    post(rx, 2)
    rx.add(readable, writable)
    tap.incoming = [frame(65550)]                   # pops past the good ones to the bad
    with pytest.raises(GuestError) as e:
        dev.process(net.RX)
    assert e.value.rule == rule and e.value.queue == "rx" and e.value.device == "net"


def test_a_buffer_of_exactly_the_header_is_allowed():
    dev, rx, tap = make(size=16, negotiated=MRG)
    posted = post(rx, 1, 12)                        # the header alone, then the frame
    posted += post(rx, 6, 1500)
    tap.incoming = [frame(100)]
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert [n for _, n in used] == [12, 100]
    assert delivered(rx, posted, used)[HDR:] == frame(100)[HDR:]


@settings(max_examples=examples(60), deadline=None)
@given(bodies=st.lists(st.integers(0, 65550), min_size=1, max_size=3),
       sizes=st.lists(st.integers(HDR, 6000), min_size=1, max_size=5),
       gso=st.booleans())
def test_property_frames_over_any_buffers_arrive_whole_or_are_dropped(bodies, sizes, gso):
    dev, rx, tap = make(size=256, negotiated=MRG | (GSO if gso else 0), mem=16 << 20)
    posted = []
    for i in range(256):
        posted += post(rx, 1, sizes[i % len(sizes)])
    limit = net.MAX_GSO_FRAME if gso else net.MAX_FRAME
    frames = [frame(min(n, limit), seed=i) for i, n in enumerate(bodies)]
    tap.incoming = list(frames)
    dev.process(net.RX)
    used = rx.used_entries()
    at = 0
    room_left = sum(sizes[i % len(sizes)] for i in range(256))
    delivered_count = held = 0
    for sent in frames:
        if len(sent) > room_left:
            if at == 0:
                continue                            # the whole ring cannot hold it: dropped
            held = room_left > 0                    # read, and held for the next buffers;
            break                                   # or (ring empty) left in the tap
        count = num_buffers(delivered(rx, posted, used[at:at + 1]))
        entries = used[at:at + count]
        got = delivered(rx, posted, entries)
        assert got[:10] == sent[:10] and got[HDR:] == sent[HDR:]
        assert sum(n for _, n in entries) == len(sent)
        # 5.1.6.4.1: all buffers but the last used completely.
        assert all(n == sum(ln for _, ln in dict(posted)[h]) for h, n in entries[:-1])
        at += count
        delivered_count += 1
        room_left -= sum(sum(ln for _, ln in dict(posted)[h]) for h, _ in entries)
    assert at == len(used) and dev.stats["rx"] == delivered_count
    assert rx.queue.last_avail_idx == at            # the unused went back to the ring
    assert (dev._held[0] is not None) == bool(held)
    assert dev.stats["rx_dropped"] == len(frames) - delivered_count - held - len(tap.incoming)


def test_a_held_frame_still_gets_the_drivers_kick_with_event_idx():
    # The frame waits for the driver's next buffers, and only a kick brings us back
    # (wants_host_input says no). With EVENT_IDX the driver kicks when avail.idx passes
    # avail_event: that must not be left behind the chains we popped and gave back.
    memory = GuestMemory(8 << 20)
    rx = GuestRing(memory, 64, base=0x1000, heap=0x100000,
                   features=(1 << F_RING_EVENT_IDX) | (1 << F_RING_INDIRECT_DESC))
    tx = GuestRing(memory, 8, base=0x80000, heap=0x90000)
    tap = StrictTap()
    dev = net.NetDevice(tap)
    dev.activate([rx.queue, tx.queue], MRG | GSO)
    post(rx, 3)
    tap.incoming = [frame(10000)]
    serve_until_idle(dev, net.RX, lambda qi: None)
    assert dev._held[0] is not None and not dev.wants_host_input(net.RX)
    avail_event = memory.read_u16(rx.used + 4 + 8 * rx.size)
    old = rx.avail_idx
    post(rx, 5)
    assert vring_need_event(avail_event, rx.avail_idx, old)     # the driver kicks
    serve_until_idle(dev, net.RX, lambda qi: None)
    assert dev._held == [None] and len(rx.used_entries()) == 7


@pytest.mark.parametrize("chains", [200, 2])        # straight into the ring; bounced
def test_a_failed_tap_read_is_counted_and_every_chain_goes_back(chains, caplog):
    dev, rx, tap = make()
    posted = post(rx, chains)

    def fail_once(views):
        tap.readv = StrictTap.readv.__get__(tap)
        raise OSError(5, "Input/output error")

    tap.readv = fail_once
    tap.incoming = [frame(60)]
    assert not dev.process(net.RX)
    assert dev.stats["rx_errors"] == 1 and "Failed to read from tun" in caplog.text
    assert rx.queue.last_avail_idx == 0             # nothing kept, nothing used
    assert dev.process(net.RX)                      # the next read works
    assert [h for h, _ in rx.used_entries()] == [posted[0][0]]
