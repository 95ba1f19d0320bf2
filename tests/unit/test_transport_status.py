"""The device-status and feature machine of the virtio-PCI transport
(lguest.testing.StatusMachine: a model of the seed's rules), around a two-queue device
and around our real block device."""

from hypothesis import settings

from lguest.devices.base import VirtioDevice
from lguest.devices.block import BlockDevice
from lguest.devices.inmemory import MemoryStore
from lguest.testing import StatusMachine

DEVICE_FEATURES = (1 << 28) | (1 << 5) | (1 << 33)


class TwoQueues(VirtioDevice):
    device_id = 4
    queue_names = ("in", "out")
    queue_max_size = 8

    def __init__(self):
        super().__init__("two")
        self.features = DEVICE_FEATURES


class TwoQueueStatus(StatusMachine):
    def make_device(self):
        return TwoQueues()


class BlockStatus(StatusMachine):
    def make_device(self):
        return BlockDevice(MemoryStore(bytes(4096)), serial="status")


TestStatusMachine = TwoQueueStatus.TestCase
TestStatusMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestBlockStatusMachine = BlockStatus.TestCase
TestBlockStatusMachine.settings = settings(max_examples=20, stateful_step_count=30,
                                           deadline=None)
