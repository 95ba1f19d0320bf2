#!/usr/bin/env python3
"""Example (a): a virtio device of your own, tested the way lguest-py tests its own.

The "echo" device has one queue; each buffer chain the driver offers carries bytes to
read and room to write, and the device writes back what it read. We test it
  1. with our guest-side driver on a PCI bus (the `virtio_driver` fixture of the
     lguest pytest plugin): the bytes come back, and the device config says how much
     it echoed;
  2. against hostile rings (lguest.testing's Hypothesis strategies): whatever garbage a
     broken or malicious driver writes, the device raises only GuestError, never
     another exception and never a touch outside guest memory;
  3. under the status/feature state machine (lguest.testing.StatusMachine).

Run it:  python examples/echo_device.py     (or: pytest examples/echo_device.py)
"""

import sys

import pytest
from hypothesis import given, settings

import lguest
from lguest.testing import StatusMachine, hostile_rings, serve_hostile

ECHO_DEVICE_ID = 0x2A            # an unassigned virtio device type, for the example


class EchoDevice(lguest.VirtioDevice):
    """Writes back what it reads. Config: the number of bytes echoed so far (le32)."""

    device_id = ECHO_DEVICE_ID
    queue_names = ("echo",)
    queue_max_size = 64

    def __init__(self):
        super().__init__("echo")
        self.config = bytearray(4)
        self.echoed = 0

    def process(self, queue_index):
        queue: lguest.Virtqueue = self.queues[queue_index]
        used = False
        while (chain := queue.pop()) is not None:
            if not chain.writable:
                # The driver's fault: say which rule it broke (a one-line error).
                raise lguest.GuestError("echo chain without room to answer",
                                        device=self.name, queue="echo")
            written = chain.scatter(chain.gather())
            queue.push(chain.head, written)
            self.echoed += written
            self.config[:] = self.echoed.to_bytes(4, "little")
            used = True
        return used


def test_the_driver_gets_its_bytes_back(virtio_driver):
    rig = virtio_driver(EchoDevice())
    (handle,) = rig.handles
    used = rig.request(handle, 0, [b"hello, ", b"device"], [8, 8])
    assert [u.data for u in used] == [b"hello, device"]
    assert handle.read_config(0, 4) == len(b"hello, device")
    assert rig.irqs                       # the device interrupted the guest


def test_a_chain_without_room_is_the_drivers_error(virtio_driver):
    rig = virtio_driver(EchoDevice())
    (handle,) = rig.handles
    with pytest.raises(lguest.GuestError, match="without room"):
        rig.request(handle, 0, [b"no room for the answer"], [])


@settings(max_examples=100, deadline=None)
@given(ring=hostile_rings())
def test_hostile_rings_give_only_guest_errors(ring):
    errors = serve_hostile(EchoDevice(), ring)
    assert all(e.device == "echo" for e in errors)


class EchoStatus(StatusMachine):
    def make_device(self):
        return EchoDevice()


TestEchoStatus = EchoStatus.TestCase
TestEchoStatus.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)


if __name__ == "__main__":
    # (hypothesis is imported above, before pytest could rewrite it: say nothing of it)
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::pytest.PytestAssertRewriteWarning"]))
