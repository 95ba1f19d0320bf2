"""virtio-rng device logic: every buffer filled completely, even from a stingy source."""

import pytest

from lguest.devices.rng import RngDevice
from lguest.errors import GuestError, LauncherError
from test_dev_rings import new_ring


class StingySource:
    """Gives at most `step` bytes a read, counting up, like a short-reading /dev/urandom."""

    def __init__(self, step=7):
        self.step = step
        self.counter = 0
        self.reads = 0

    def readv(self, views):
        self.reads += 1
        n = 0
        for v in views:
            take = min(v.nbytes, self.step - n)
            v[:take] = bytes((self.counter + i) & 0xFF for i in range(take))
            self.counter += take
            n += take
            if n == self.step:
                break
        return n


def test_buffers_are_filled_completely_despite_short_reads():
    ring = new_ring()
    source = StingySource()
    dev = RngDevice(source)
    dev.activate([ring.queue], 0)
    h1, outs1 = ring.add([], [10, 0, 23])
    h2, outs2 = ring.add([], [64], indirect=True)
    assert dev.process(0)
    assert ring.used_entries() == [(h1, 33), (h2, 64)]
    expected = bytes(i & 0xFF for i in range(97))
    got = ring.memory.read(outs1[0], 10) + ring.memory.read(outs1[2], 23) + ring.memory.read(outs2[0], 64)
    assert got == expected
    assert source.reads == (33 + 6) // 7 + (64 + 6) // 7
    assert dev.device_id == 4 and dev.config == bytearray() and dev.features == 0


def test_readable_buffers_are_a_guest_error():
    ring = new_ring()
    dev = RngDevice(StingySource())
    dev.activate([ring.queue], 0)
    ring.add([b"seed"], [8])
    with pytest.raises(GuestError) as e:
        dev.process(0)
    assert e.value.rule == "Output buffers in rng?" and e.value.queue == "input"


def test_a_dry_source_is_a_host_error():
    ring = new_ring()
    dev = RngDevice(StingySource(step=0))
    dev.activate([ring.queue], 0)
    ring.add([], [8])
    with pytest.raises(LauncherError):
        dev.process(0)
