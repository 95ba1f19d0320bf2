"""virtio-net multiqueue (L:385): queue pairs, each on its own tap queue, and the
control queue's MQ_VQ_PAIRS_SET; sans-I/O, with in-memory taps."""

import struct

import pytest

from lguest.devices import net
from lguest.memory import GuestMemory
from test_dev_net import FakeTap, vnet
from test_dev_rings import GuestRing


class QueueTap(FakeTap):
    """One queue of a multi-queue tap: remembers whether it is attached."""

    def __init__(self):
        super().__init__()
        self.attached = True
        self.changes = []

    def set_attached(self, on):
        self.attached = on
        self.changes.append(on)


def make(pairs=3, with_ctrl=True, negotiated=None):
    memory = GuestMemory(4 << 20)
    taps = [QueueTap() for _ in range(pairs)]
    dev = net.NetDevice(taps)
    rings = [GuestRing(memory, 8, base=0x1000 + 0x1000 * i, heap=0x40000 + 0x20000 * i)
             for i in range(2 * pairs + 1)]
    queues = [r.queue for r in rings]
    if not with_ctrl:
        queues[-1] = None
    dev.activate(queues, dev.features if negotiated is None else negotiated)
    return dev, rings, taps


def pairs_set(ring, dev, pairs, extra=b""):
    head, (ack,) = ring.add([bytes([net.CTRL_MQ, net.CTRL_MQ_VQ_PAIRS_SET]),
                             struct.pack("<H", pairs) + extra], [1])
    assert dev.process(dev.ctrl_index)
    return ring.memory.read(ack, 1)[0]


def test_layout_features_and_config():
    dev = make(3)[0]
    assert dev.queue_names == ("rx0", "tx0", "rx1", "tx1", "rx2", "tx2", "ctrl")
    assert dev.features & (1 << net.F_MQ) and dev.features & (1 << net.F_CTRL_VQ)
    assert struct.unpack_from("<H", dev.config, net.CONFIG_MAX_PAIRS)[0] == 3
    assert dev.vhost_queue_num == 3
    one = net.NetDevice(FakeTap())
    assert one.queue_names == ("rx", "tx") and not one.features & (1 << net.F_MQ)
    assert one.vhost_queue_num == 1 and bytes(one.config[8:10]) == b"\0\0"
    with pytest.raises(ValueError):
        net.NetDevice([FakeTap() for _ in range(net.MAX_QUEUE_PAIRS + 1)])


def test_one_pair_until_the_driver_asks_then_those_pairs():
    dev, rings, taps = make(3)
    # 5.1.6.5.5: only the first pair until MQ_VQ_PAIRS_SET; the others' tap queues
    # are detached so the host's flows go to the queue that is served.
    assert [t.attached for t in taps] == [True, False, False]
    rings[2].add([], [2048])
    taps[1].incoming = [vnet() + b"x" * 60]
    assert not dev.wants_host_input(2)
    woken = []
    dev.wake_queue = woken.append
    assert pairs_set(rings[6], dev, 2) == net.CTRL_OK
    assert [t.attached for t in taps] == [True, True, False]
    assert woken == [2]               # rx1's thread looks again: its buffers came unkicked
    assert dev.wants_host_input(2) and not dev.wants_host_input(4)
    assert dev.process(2) and rings[2].used_entries()[0][1] == 12 + 60
    assert pairs_set(rings[6], dev, 1) == net.CTRL_OK
    assert [t.attached for t in taps] == [True, False, False]


def test_each_pair_sends_on_its_own_tap_queue():
    dev, rings, taps = make(2)
    pairs_set(rings[4], dev, 2)
    rings[1].add([vnet() + b"zero"])
    rings[3].add([vnet() + b"one"])
    assert dev.process(1) and dev.process(3)
    assert taps[0].sent == [vnet() + b"zero"] and taps[1].sent == [vnet() + b"one"]


@pytest.mark.parametrize("command", [
    bytes([net.CTRL_MQ, net.CTRL_MQ_VQ_PAIRS_SET]) + struct.pack("<H", 0),      # no pairs
    bytes([net.CTRL_MQ, net.CTRL_MQ_VQ_PAIRS_SET]) + struct.pack("<H", 4),      # too many
    bytes([net.CTRL_MQ, net.CTRL_MQ_VQ_PAIRS_SET]) + b"\1",                     # short
    bytes([0, 0, 1]),                                                           # RX promisc
    b"\4",                                                                      # no command
])
def test_bad_or_unknown_commands_are_answered_err_and_change_nothing(command):
    dev, rings, taps = make(3)
    head, (ack,) = rings[6].add([command], [1])
    assert dev.process(dev.ctrl_index)
    assert rings[6].memory.read(ack, 1)[0] == net.CTRL_ERR
    assert rings[6].used_entries() == [(head, 1)]
    assert dev.active_pairs == 1 and [t.attached for t in taps] == [True, False, False]


def test_pairs_set_without_mq_negotiated_is_refused():
    dev, rings, taps = make(2, negotiated=0)
    assert pairs_set(rings[4], dev, 2) == net.CTRL_ERR and dev.active_pairs == 1


def test_a_command_without_an_ack_byte_is_a_guest_error():
    dev, rings, _ = make(2)
    rings[4].add([bytes([net.CTRL_MQ, 0, 2, 0])], [0])
    with pytest.raises(net.GuestError, match="without an ack byte"):
        dev.process(dev.ctrl_index)


def test_a_huge_command_is_read_only_as_far_as_needed():
    dev, rings, _ = make(2)
    assert pairs_set(rings[4], dev, 2, extra=bytes(1 << 16)) == net.CTRL_OK


def test_without_our_control_queue_the_rings_served_are_the_pairs_in_use():
    # QEMU keeps the control queue for itself and enables pairs with SET_VRING_ENABLE.
    dev, rings, taps = make(3, with_ctrl=False)
    assert [t.attached for t in taps] == [True, True, True]
    queues = [r.queue for r in rings[:2]] + [None] * 5
    dev.reset()
    dev.activate(queues, dev.features)
    assert [t.attached for t in taps] == [True, False, False]


def test_a_ring_restart_keeps_the_pairs_the_driver_asked_for():
    dev, rings, taps = make(3)
    pairs_set(rings[6], dev, 3)
    dev.reset()
    dev.activate([r.queue for r in rings], dev.features)
    assert dev.active_pairs == 3 and all(t.attached for t in taps)
    # A new session starts its rings one by one: one pair again once its control queue is.
    dev.reset()
    dev.activate([rings[0].queue] + [None] * 6, dev.features)
    dev.reset()
    dev.activate([r.queue for r in rings], dev.features)
    assert dev.active_pairs == 1
