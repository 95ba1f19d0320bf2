"""The guest-side virtio_pci_modern driver against the bus, with a tiny test-only
device served by the InlineRunner: probe, negotiate, set up queues, exchange buffers
direct and indirect, interrupts, config reads with generation retry, misbehaviour."""

import pytest

from lguest import virtio
from lguest.devices.base import VirtioDevice
from lguest.driver.pci import VirtioPciDriver
from lguest.driver.vring import DriverError, GuestAllocator
from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.pci.bus import MMIO, PIO, PciBus

INDIRECT = virtio.bit(virtio.F_RING_INDIRECT_DESC)
EVENT_IDX = virtio.bit(virtio.F_RING_EVENT_IDX)
VERSION_1 = virtio.bit(virtio.F_VERSION_1)


class Reverser(VirtioDevice):
    """Test-only: every chain's readable bytes come back reversed in its writable part."""

    device_id = 9
    queue_names = ("requests", "spare")
    queue_max_size = 32

    def __init__(self, name="reverser", features=INDIRECT | EVENT_IDX):
        super().__init__(name)
        self.features = features
        self.config = bytearray((0x0123456789ABCDEF).to_bytes(8, "little") + b"\x05\x06\x07")
        self.seen_readable = []

    def process(self, qi):
        queue = self.queues[qi]
        used = False
        while (chain := queue.pop()) is not None:
            data = b"".join(bytes(v) for v in chain.readable)
            self.seen_readable.append(len(chain.readable))
            written = chain.scatter(data[::-1])
            queue.push(chain.head, written)
            used = True
        return used


class Quiet(VirtioDevice):
    """A second device type, so probe() has more than one thing to find."""

    device_id = 4
    queue_names = ("q",)


@pytest.fixture
def rig():
    with GuestMemory(2 << 20) as memory:
        bus = PciBus(memory)
        irqs = []
        bus.irq_sink = irqs.append
        reverser = bus.add_device(Reverser())
        quiet = bus.add_device(Quiet("quiet"))
        driver = VirtioPciDriver(bus.access, memory, GuestAllocator(0x10000, memory.size))
        yield bus, driver, irqs, reverser, quiet


def test_probe_finds_both_devices_with_their_regions(rig):
    bus, driver, _, reverser, quiet = rig
    handles = driver.probe()
    assert [(h.slot, h.device_type, h.irq_line) for h in handles] == [(1, 9, 1), (2, 4, 2)]
    h = handles[0]
    assert h.bar0 == reverser.mmio_addr and h.bar0_size == 128
    assert (h.common, h.isr, h.notify_base) == (h.bar0, h.bar0 + 58, h.bar0 + 56)
    assert (h.device_cfg, h.device_cfg_len) == (h.bar0 + 60, 11)
    assert handles[1].device_cfg is None
    # BAR sizing put the address back.
    assert bus.configs[1]["bar0"] == reverser.mmio_addr


def test_full_bring_up_and_echo_direct_and_indirect(rig):
    bus, driver, irqs, reverser, _ = rig
    h = driver.probe()[0]
    assert h.negotiate() == INDIRECT | EVENT_IDX | VERSION_1
    assert reverser.negotiated == INDIRECT | EVENT_IDX | VERSION_1
    queues = h.setup_queues(sizes=[8, 4])
    assert [q.size for q in queues] == [8, 4]
    h.driver_ok()
    assert reverser.status == 15
    assert [q.size for q in reverser.device.queues] == [8, 4]
    q = h.queue(0)
    q.add_buffer([b"hello ", b"world"], [6, 8], token="a", indirect=False)
    q.add_buffer([b"abc"], [3], token="b")
    q.add_buffer([b"12", b"34"], [4], token="c", indirect=True)
    assert h.kick(0) is True
    assert irqs == [1]
    assert h.ack_interrupt() == virtio.ISR_QUEUE
    assert h.ack_interrupt() == 0
    got = {u.token: u.data for u in q.collect()}
    assert got == {"a": b"dlrow olleh", "b": b"cba", "c": b"4321"}
    assert reverser.device.seen_readable == [2, 1, 2]


def test_many_rounds_wrap_the_ring(rig):
    _, driver, irqs, _, _ = rig
    h = driver.probe()[0]
    h.negotiate(features=VERSION_1)
    h.setup_queues(sizes=[2, 2])
    h.driver_ok()
    q = h.queue(0)
    for i in range(40):
        q.add_buffer([bytes([i, i + 1])], [2], token=i)
        h.kick(0)
        h.ack_interrupt()
        [used] = q.collect()
        assert (used.token, used.data) == (i, bytes([i + 1, i]))
    assert len(irqs) == 40


def test_negotiate_a_subset_and_read_config(rig):
    _, driver, _, reverser, _ = rig
    h = driver.probe()[0]
    assert h.negotiate(features=VERSION_1 | virtio.bit(5)) == VERSION_1   # 5 not offered
    assert h.read_config(0, 8) == 0x0123456789ABCDEF
    assert h.read_config(0, 4) == 0x89ABCDEF
    assert h.read_config(8, 2) == 0x0605
    assert h.read_config(8, 3) == 0x070605
    with pytest.raises(DriverError):
        h.read_config(9, 4)


class Flapping(Reverser):
    """Changes its config (and generation) on the first few reads of it."""

    def __init__(self, flaps):
        super().__init__("flapping")
        self.flaps = flaps

    def read_config(self, offset, size):
        value = super().read_config(offset, size)
        if self.flaps:
            self.flaps -= 1
            self.update_config(bytes(b ^ 0xFF for b in self.config))
        return value


def test_config_read_retries_until_the_generation_holds():
    with GuestMemory(1 << 20) as memory:
        bus = PciBus(memory)
        dev = Flapping(3)
        bus.add_device(dev)
        h = VirtioPciDriver(bus.access, memory, GuestAllocator(0x10000, memory.size)).probe()[0]
        h.negotiate()
        value = h.read_config(0, 8)
        assert dev.flaps == 0 and dev.config_generation == 3
        assert value == int.from_bytes(dev.config[:8], "little")
        dev.flaps = 100
        with pytest.raises(DriverError, match="keeps changing"):
            h.read_config(0, 4, max_tries=4)


def test_window_access_through_config_space(rig):
    _, driver, _, reverser, _ = rig
    h = driver.probe()[0]
    assert h.window_read(18, 2) == 2                 # num_queues
    h.window_write(20, 1, 1)                         # ACKNOWLEDGE without touching BAR0
    assert reverser.status == 1
    assert h.get_status() == 1


def test_reset_and_bring_up_again(rig):
    _, driver, _, reverser, _ = rig
    h = driver.probe()[0]
    h.negotiate()
    h.setup_queues()
    h.driver_ok()
    h.reset()
    assert reverser.status == 0 and reverser.device.queues == []
    h.negotiate()
    h.setup_queues(sizes=[4, 4])
    h.driver_ok()
    q = h.queue(0)
    q.add_buffer([b"xy"], [2])
    h.kick(0)
    assert q.collect()[0].data == b"yx"


def test_deliberate_misbehaviour_reaches_the_transport(rig):
    _, driver, _, _, _ = rig
    h = driver.probe()[0]
    with pytest.raises(GuestError) as e:
        h.negotiate(features=VERSION_1 | virtio.bit(7), force=True)
    assert e.value.rule == "over-accepted features"
    h.reset()
    h.add_status(virtio.STATUS_ACKNOWLEDGE)
    with pytest.raises(GuestError) as e:
        h.add_status(virtio.STATUS_FEATURES_OK)
    assert e.value.rule == "unexpected status transition"
    with pytest.raises(GuestError) as e:
        h.write_common("device_status", 3, size=4)
    assert e.value.rule == "non-8-bit write to offset"
    with pytest.raises(GuestError) as e:
        h.mmio_write(58, 1, 0)
    assert e.value.rule == "Unexpected write to isr"
    assert h.mmio_read(18, 2) == 2


def test_notify_goes_to_the_shared_notify_register(rig):
    bus, driver, _, reverser, _ = rig
    h = driver.probe()[0]
    h.negotiate()
    h.setup_queues()
    h.driver_ok()
    assert h.notify_addrs == [reverser.notify_address] * 2
    h.notify(1)
    assert bus.access(MMIO, reverser.notify_address, 2, False) == 1


def test_missing_device_or_capability_is_a_driver_error():
    with GuestMemory(1 << 20) as memory:
        bus = PciBus(memory)
        t = bus.add_device(Quiet())
        driver = VirtioPciDriver(bus.access, memory, GuestAllocator(0x10000, memory.size))
        t.pci_config["isr.cfg_type"] = 7               # no ISR capability any more
        with pytest.raises(DriverError, match="missing virtio capability"):
            driver.probe()
        t.pci_config["isr.cfg_type"] = 3
        t.pci_config["status"] = 0
        with pytest.raises(DriverError, match="no capability list"):
            driver.probe()
        t.pci_config["status"] = 0x10
        t.pci_config["isr.offset"] = 200               # outside BAR0
        with pytest.raises(DriverError, match="outside BAR0"):
            driver.probe()


def test_a_device_without_version_1_is_refused(rig):
    bus, _, _, reverser, _ = rig

    def io(space, addr, size, is_write, value=0):
        # A legacy-minded device: its feature window never shows VERSION_1 (bit 32).
        if space == MMIO and addr == reverser.mmio_addr + 4 and not is_write:
            return 0
        return bus.access(space, addr, size, is_write, value)

    h = VirtioPciDriver(io, bus.memory, GuestAllocator(0x10000, bus.memory.size)).probe()[0]
    with pytest.raises(DriverError, match="VERSION_1"):
        h.negotiate()


def test_probe_skips_non_virtio_functions(rig):
    bus, driver, _, _, _ = rig
    bus.configs[2]["vendor_id"] = 0x8086
    assert [h.slot for h in driver.probe()] == [1]
    bus.configs[2]["vendor_id"] = 0x1AF4
    bus.configs[2]["device_id"] = 0x1000                # a legacy (transitional) id
    assert [h.slot for h in driver.probe()] == [1]


def test_io_goes_only_through_the_callable(rig):
    bus, _, _, _, _ = rig
    log = []

    def io(space, addr, size, is_write, value=0):
        log.append((space, is_write))
        return bus.access(space, addr, size, is_write, value)

    driver = VirtioPciDriver(io, bus.memory, GuestAllocator(0x10000, bus.memory.size))
    h = driver.probe()[0]
    h.negotiate()
    assert {s for s, _ in log} == {PIO, MMIO}


def test_probe_walks_past_a_backends_extra_capability(rig):
    bus, driver, _, _, _ = rig
    bus.configs[1].add_capability(0x11, bytes(10))        # an MSI-X capability, say
    bus.configs[1].add_capability(0x09, bytes([0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    h = driver.probe()[0]
    # Linux takes the first capability of each virtio type: the later DEVICE_CFG
    # copy (cfg_type 4) does not replace the real one.
    assert h.caps[4]["pos"] == 116
    h.negotiate()
    assert h.read_config(0, 8) == 0x0123456789ABCDEF


def test_driver_notices_a_device_that_misbehaves(rig):
    """Each io() lie below is something a broken device could do; the driver says so
    with DriverError instead of carrying on."""
    bus, _, _, reverser, quiet = rig

    def lying(overrides):
        def io(space, addr, size, is_write, value=0):
            real = bus.access(space, addr, size, is_write, value)
            for (s, a, w), fake in overrides.items():
                if (s, a, w) == (space, addr, is_write):
                    return fake(real) if callable(fake) else fake
            return real
        return VirtioPciDriver(io, bus.memory, GuestAllocator(0x10000, bus.memory.size))

    base = reverser.mmio_addr
    status, notify_off = base + 20, base + 30
    h = lying({(MMIO, status, False): 1}).probe()[0]
    with pytest.raises(DriverError, match="non-zero after reset"):
        h.reset()
    h = lying({(MMIO, status, False): lambda v: v & ~virtio.STATUS_FEATURES_OK}).probe()[0]
    with pytest.raises(DriverError, match="refuses features"):
        h.negotiate()
    bus.configs[1]["notify.notify_off_multiplier"] = 4
    h = lying({(MMIO, notify_off, False): 1}).probe()[0]
    h.negotiate()
    with pytest.raises(DriverError, match="notify offset"):
        h.setup_queues()
    d = lying({(PIO, 0xCFC, False): lambda v: 0 if v == 0xFFFFFF80 else v})
    with pytest.raises(DriverError, match="BAR0 is not implemented"):
        d.probe()


def test_unavailable_queue_and_suppressed_kick(rig):
    bus, driver, _, reverser, _ = rig
    h = driver.probe()[0]
    h.negotiate(features=VERSION_1)
    reverser._queues[1].set("queue_size", 0)         # queue 1 unavailable
    queues = h.setup_queues()
    assert queues[1] is None and h.notify_addrs[1] is None
    h.driver_ok()
    q = h.queue(0)
    bus.memory.write_u16(q.used_addr, virtio.VRING_USED_F_NO_NOTIFY)
    q.add_buffer([b"ab"], [2])
    assert h.kick(0) is False and reverser.device.seen_readable == []
    bus.memory.write_u16(q.used_addr, 0)
    q.add_buffer([b"cd"], [2])
    assert h.kick(0) is True
    assert [u.data for u in q.collect()] == [b"ba", b"dc"]
    assert "irq 1" in repr(reverser)


def test_config_writes_go_to_the_device_config(rig):
    bus, driver, _, _, quiet = rig
    h = driver.probe()[1]
    with pytest.raises(DriverError, match="no config"):
        h.write_config(0, 4, 1)
    h = driver.probe()[0]
    h.negotiate()
    with pytest.raises(GuestError) as e:
        h.write_config(0, 4, 1)                        # read-only config
    assert e.value.rule == "Unexpected write to offset"
