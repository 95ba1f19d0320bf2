"""The split ring as a state machine (lguest.testing.SplitRingMachine: the driver half
and the device half on one ring, against the spec's notification rules), run here on
our own Virtqueue, and a check that its runs cross the 16-bit wrap."""

from hypothesis import settings

from lguest.testing import SplitRingMachine


class SplitRing(SplitRingMachine):
    pass


SplitRing.TestCase.settings = settings(max_examples=60, stateful_step_count=60)
test_split_ring = SplitRing.TestCase


def test_the_machine_crosses_the_wrap():
    """The machine is only worth having if its runs cross 65535 -> 0; run one fixed
    scenario through the same rules and see that they do."""
    m = SplitRing()
    m.setup(size=4, indirect=True, event_idx=True, start=65534)
    for _ in range(6):
        m.add([b"ab"], [3], None)
        m.kick()
        m.pop()
        m.push(0, b"xyz", 0)
        m.interrupt()
        m.collect()
    assert m.wrapped and m.dev.used_idx == 4
    m.teardown()
