"""The rules both transports hold a driver to (L:205), and that both use them."""

import pytest

from lguest import transport_rules as rules
from lguest.devices.rng import RngDevice
from lguest.devices.inmemory import CountingEntropy
from lguest.virtio import F_VERSION_1, MAX_QUEUE_SIZE, bit
from lguest.vhost_user.backend import VhostUserTransport
from lguest.pci.transport import VirtioPciTransport


def test_features():
    dev = RngDevice(CountingEntropy())
    offered = rules.offered_features(dev)
    assert offered == dev.features | bit(F_VERSION_1)
    assert rules.over_accepted(offered, offered) is None
    assert rules.over_accepted(offered | bit(40), offered) == f"{offered | bit(40):#x} of {offered:#x}"


@pytest.mark.parametrize("size, maximum, ok", [(1, 256, True), (256, 256, True), (512, 256, False),
                                               (0, 256, False), (3, 256, False),
                                               (MAX_QUEUE_SIZE, MAX_QUEUE_SIZE, True),
                                               (2 * MAX_QUEUE_SIZE, 10 ** 6, False)])
def test_queue_sizes(size, maximum, ok):
    assert (rules.queue_size_problem(size, maximum) is None) == ok


@pytest.mark.parametrize("desc, avail, used, ok", [(0, 0, 0, True), (16, 2, 4, True),
                                                   (8, 0, 0, False), (0, 1, 0, False),
                                                   (0, 0, 2, False)])
def test_ring_alignment(desc, avail, used, ok):
    assert (rules.ring_alignment_problem(desc, avail, used) is None) == ok


def test_both_transports_offer_the_same_virtio_features():
    from lguest.memory import GuestMemory
    from lguest.vhost_user import protocol as P
    dev = RngDevice(CountingEntropy())
    memory = GuestMemory(1 << 20)
    try:
        pci = VirtioPciTransport(dev, memory)
        vhost = VhostUserTransport(dev)
        assert pci.features == rules.offered_features(dev)
        # Over vhost-user every device adds the ring features (L:726); otherwise the same.
        from lguest.vhost_user.backend import RING_FEATURES
        assert vhost.offered_features() & ~bit(P.F_PROTOCOL_FEATURES) == pci.features | RING_FEATURES
    finally:
        memory.close()
