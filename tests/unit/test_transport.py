"""The virtio-PCI register file, rule by rule, plus hostile writes that may only ever
raise GuestError."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from lguest import virtio
from lguest.devices.base import InlineRunner, VirtioDevice
from lguest.errors import GuestError
from lguest.memory import GuestMemory
from lguest.pci import transport as tp
from lguest.pci.bus import MMIO, PIO, PciBus

ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8


class Dev(VirtioDevice):
    device_id = 3
    queue_names = ("rx", "tx")
    queue_max_size = 16

    def __init__(self, config=b"\x11\x22\x33\x44\x55\x66\x77\x88"):
        super().__init__("dev")
        self.features = virtio.bit(virtio.F_RING_INDIRECT_DESC)
        self.config = bytearray(config)
        self.kicks = []
        self.resets = 0

    def process(self, qi):
        self.kicks.append(qi)
        return False

    def reset(self):
        super().reset()
        self.resets += 1


class Console(Dev):
    def __init__(self):
        super().__init__(bytes(12))
        self.written = []

    def emergency_write(self, value):
        self.written.append(value & 0xFF)


@pytest.fixture
def memory():
    with GuestMemory(1 << 20) as m:
        yield m


@pytest.fixture
def t(memory):
    return tp.VirtioPciTransport(Dev(), memory)


def rule_of(fn, *args):
    with pytest.raises(GuestError) as e:
        fn(*args)
    return e.value.rule


def to_features_ok(t, accept=0):
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    t.emulate_mmio_write(8, 4, 0)
    t.emulate_mmio_write(12, 4, accept & 0xFFFFFFFF)
    t.emulate_mmio_write(8, 4, 1)
    t.emulate_mmio_write(12, 4, accept >> 32)
    t.emulate_mmio_write(20, 1, ACK | DRIVER | FEATURES_OK)
    assert t.emulate_mmio_read(20, 1) & FEATURES_OK


def setup_queue(t, qi, base, size=16):
    t.emulate_mmio_write(22, 2, qi)
    t.emulate_mmio_write(24, 2, size)
    for name, addr in (("desc", base), ("avail", base + 0x400), ("used", base + 0x800)):
        t.emulate_mmio_write(tp.OFFSET[f"queue_{name}_lo"], 4, addr)
        t.emulate_mmio_write(tp.OFFSET[f"queue_{name}_hi"], 4, 0)
    t.emulate_mmio_write(28, 2, 1)


def test_version_1_is_always_offered_and_both_windows_read(t):
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    t.emulate_mmio_write(0, 4, 0)
    assert t.emulate_mmio_read(4, 4) == 1 << virtio.F_RING_INDIRECT_DESC
    t.emulate_mmio_write(0, 4, 1)
    assert t.emulate_mmio_read(4, 4) == 1            # VERSION_1 is bit 32
    t.emulate_mmio_write(0, 4, 7)
    assert t.emulate_mmio_read(4, 4) == 0
    assert t.emulate_mmio_read(0, 4) == 7


def test_accepted_features_read_back_per_window(t):
    to_features_ok(t, virtio.bit(32) | virtio.bit(28))
    assert t.negotiated == virtio.bit(32) | virtio.bit(28)
    assert t.emulate_mmio_read(8, 4) == 1
    assert t.emulate_mmio_read(12, 4) == 1


@pytest.mark.parametrize("off,size,rule", [
    (0, 4, "feature read before VIRTIO_CONFIG_S_DRIVER"),
    (4, 4, "feature read before VIRTIO_CONFIG_S_DRIVER"),
    (16, 2, "read of msix_config"),
    (18, 4, "non-16-bit read to offset"),
    (20, 2, "non-8-bit read to offset"),
    (21, 2, "non-8-bit read to offset"),
    (56, 2, "notify before VIRTIO_CONFIG_S_DRIVER_OK"),
    (58, 2, "non-8-bit read from offset"),
    (59, 1, "read from padding"),
    (60, 4, "config read before VIRTIO_CONFIG_S_DRIVER"),
    (24, 2, "config read before VIRTIO_CONFIG_S_DRIVER"),
    (68, 1, "read past end"),
    (66, 4, "read past end"),
    (200, 1, "read past end"),
])
def test_read_rules(t, off, size, rule):
    assert rule_of(t.emulate_mmio_read, off, size) == rule


@pytest.mark.parametrize("off,size,value,rule", [
    (4, 4, 0, "Unexpected write to offset"),          # device_feature is read-only
    (18, 2, 1, "Unexpected write to offset"),         # num_queues
    (21, 1, 1, "Unexpected write to offset"),         # config_generation
    (16, 2, 1, "Unexpected write to offset"),         # msix_config without MSI-X
    (26, 2, 1, "attempt to set MSIX vector"),
    (30, 2, 0, "attempt to write to queue_notify_off"),
    (58, 1, 0, "Unexpected write to isr"),
    (59, 1, 0, "Unexpected write to offset"),
    (60, 4, 0, "Unexpected write to offset"),         # device config is read-only
    (1, 1, 0, "Unexpected write to offset"),
    (0, 4, 0, "feature write before VIRTIO_CONFIG_S_DRIVER"),
    (8, 4, 2, "Unexpected driver select"),
    (22, 4, 0, "non-16-bit write to offset"),
    (56, 1, 0, "non-16-bit write to offset"),
    (56, 2, 2, "Invalid vq notification on"),
    (24, 2, 3, "invalid queue size"),
    (24, 2, 32, "invalid queue size"),
    (24, 2, 0, "invalid queue size"),
    (28, 2, 0, "setting queue_enable to"),
    (32, 4, 0, "setting up vq before FEATURES_OK"),
    (20, 1, 2, "unexpected status transition"),
    (20, 1, 0x10, "unknown device status bit"),
    (20, 2, 1, "non-8-bit write to offset"),
])
def test_write_rules_from_reset(t, off, size, value, rule):
    assert rule_of(t.emulate_mmio_write, off, size, value) == rule
    assert t.status == 0


def test_refused_writes_change_nothing(t):
    to_features_ok(t, virtio.bit(32))
    before = t._register_bytes()
    for off, size, value in ((12, 4, 1), (20, 1, 0x0B | 0x10), (20, 1, 1), (8, 4, 0), (24, 2, 5)):
        with pytest.raises(GuestError):
            t.emulate_mmio_write(off, size, value)
    assert t._register_bytes() == before


def test_queue_setup_needs_features_ok_re_read(memory):
    t = tp.VirtioPciTransport(Dev(), memory)
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    t.emulate_mmio_write(20, 1, ACK | DRIVER | FEATURES_OK)
    assert rule_of(t.emulate_mmio_write, 32, 4, 0) == "didn't re-read FEATURES_OK before setup"
    assert rule_of(t.emulate_mmio_write, 20, 1, 15) == "did not re-read FEATURES_OK"
    t.emulate_mmio_read(20, 1)
    t.emulate_mmio_write(32, 4, 0x1000)
    assert rule_of(t.emulate_mmio_write, 12, 4, 0) == "feature write after VIRTIO_CONFIG_S_FEATURES_OK"


def test_over_acceptance_is_refused_in_either_window(t):
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    assert rule_of(t.emulate_mmio_write, 12, 4, 1 << 5) == "over-accepted features"
    t.emulate_mmio_write(8, 4, 1)
    assert rule_of(t.emulate_mmio_write, 12, 4, 2) == "over-accepted features"
    t.emulate_mmio_write(12, 4, 1)
    assert t.features_accepted == virtio.bit(32)


def test_queue_select_keeps_each_queues_registers(memory, t):
    to_features_ok(t)
    t.emulate_mmio_write(22, 2, 0)
    t.emulate_mmio_write(24, 2, 4)
    t.emulate_mmio_write(32, 4, 0x1000)
    t.emulate_mmio_write(22, 2, 1)
    assert t.emulate_mmio_read(24, 2) == 16
    assert t.emulate_mmio_read(32, 4) == 0
    t.emulate_mmio_write(32, 4, 0x2000)
    t.emulate_mmio_write(22, 2, 5)                 # no such queue: all zeros
    assert t.emulate_mmio_read(24, 2) == 0
    assert t.emulate_mmio_read(32, 4) == 0
    assert rule_of(t.emulate_mmio_write, 24, 2, 4) == "setup of unavailable queue"
    t.emulate_mmio_write(22, 2, 0)
    assert (t.emulate_mmio_read(24, 2), t.emulate_mmio_read(32, 4)) == (4, 0x1000)
    t.emulate_mmio_write(22, 2, 1)
    assert t.emulate_mmio_read(32, 4) == 0x2000
    assert t.emulate_mmio_read(30, 2) == 0         # queue_notify_off
    assert t.emulate_mmio_read(22, 2) == 1


def test_enable_checks_the_ring_and_refuses_late_or_live_changes(memory, t):
    to_features_ok(t)
    t.emulate_mmio_write(22, 2, 0)
    t.emulate_mmio_write(32, 4, 0x1008)            # desc not 16-aligned
    assert rule_of(t.emulate_mmio_write, 28, 2, 1) == "invalid alignment in queue addresses"
    t.emulate_mmio_write(32, 4, memory.size - 16)  # desc runs off the end of memory
    assert rule_of(t.emulate_mmio_write, 28, 2, 1) == "Invalid address"
    t.emulate_mmio_write(32, 4, 0x1000)
    t.emulate_mmio_write(36, 4, 1)                 # a high half: far outside memory
    assert rule_of(t.emulate_mmio_write, 28, 2, 1) == "Invalid address"
    t.emulate_mmio_write(36, 4, 0)
    t.emulate_mmio_write(40, 4, 0x800)             # avail apart from used: overlap is refused
    memory.write_u16(0, 1)                         # used.flags (used ring at 0) must be 0
    assert rule_of(t.emulate_mmio_write, 28, 2, 1) == "invalid initial used.flags"
    memory.write_u16(0, 0)
    t.emulate_mmio_write(28, 2, 1)
    assert t.emulate_mmio_read(28, 2) == 1
    assert rule_of(t.emulate_mmio_write, 32, 4, 0x2000) == "changing queue on live device"
    assert rule_of(t.emulate_mmio_write, 24, 2, 8) == "changing queue size on live device"
    t.emulate_mmio_write(20, 1, 15)
    assert rule_of(t.emulate_mmio_write, 28, 2, 1) == "enabling vq after DRIVER_OK"


def test_driver_ok_activates_the_device_and_kicks_reach_the_runner(memory, t):
    to_features_ok(t, virtio.bit(32))
    setup_queue(t, 0, 0x1000)
    t.emulate_mmio_write(56, 2, 0)                 # before DRIVER_OK: ignored
    assert t.device.kicks == []
    t.emulate_mmio_write(20, 1, 15)
    assert t.device.negotiated == virtio.bit(32)
    assert t.device.queues[0].size == 16 and t.device.queues[1] is None
    assert t.device.queues[0].name == "rx" and t.device.queues[0].device == "dev"
    t.emulate_mmio_write(56, 2, 1)                 # queue 1 never enabled: ignored
    t.emulate_mmio_write(56, 2, 0)
    assert t.device.kicks == [0]
    assert t.emulate_mmio_read(56, 2) == 0


def test_reset_forgets_everything(memory):
    runner = InlineRunner()
    t = tp.VirtioPciTransport(Dev(), memory, runner=runner)
    to_features_ok(t, virtio.bit(32))
    setup_queue(t, 1, 0x3000, size=8)
    t.emulate_mmio_write(20, 1, 15)
    t.interrupt(0)
    assert runner.device is t.device
    assert rule_of(t.emulate_mmio_write, 20, 1, 0x0B) == "unset of device status bit"
    t.emulate_mmio_write(20, 1, 0)
    assert runner.device is None and t.device.resets == 1
    assert (t.status, t.negotiated, t.device.queues) == (0, 0, [])
    assert t.read_isr() == 0
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    t.emulate_mmio_write(22, 2, 1)
    assert t.emulate_mmio_read(24, 2) == 16
    assert t.emulate_mmio_read(28, 2) == 0
    assert t.emulate_mmio_read(32, 4) == 0
    assert t.emulate_mmio_read(12, 4) == 0


def test_isr_is_set_by_interrupts_and_cleared_on_read(memory):
    raised = []
    t = tp.VirtioPciTransport(Dev(), memory, raise_irq=lambda: raised.append(1))
    t.interrupt(0)
    assert raised == [1]
    assert t.emulate_mmio_read(58, 1) == virtio.ISR_QUEUE
    assert t.emulate_mmio_read(58, 1) == 0


def test_config_change_bumps_generation_and_interrupts_when_live(memory):
    raised = []
    dev = Dev()
    t = tp.VirtioPciTransport(dev, memory, raise_irq=lambda: raised.append(1))
    dev.update_config(b"\x99" * 8)                 # not live yet: ISR bit, no interrupt
    assert raised == []
    to_features_ok(t)
    assert t.emulate_mmio_read(21, 1) == 1
    assert t.emulate_mmio_read(60, 4) == 0x99999999
    t.emulate_mmio_write(20, 1, 15)
    dev.update_config(b"\x01" * 8)
    assert raised == [1]
    assert t.emulate_mmio_read(58, 1) == virtio.ISR_CONFIG
    assert t.emulate_mmio_read(21, 1) == 2


def test_device_config_reads_any_width_and_raw_bytes(t):
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    assert t.emulate_mmio_read(60, 1) == 0x11
    assert t.emulate_mmio_read(62, 2) == 0x4433
    assert t.emulate_mmio_read(64, 4) == 0x88776655
    # A read that straddles the end of the common area sees the raw registers.
    assert t.emulate_mmio_read(57, 4) == 0x1100_0000
    assert t.emulate_mmio_read(22, 4) == 16 << 16      # queue_select 0, queue_size 16
    assert t.emulate_mmio_read(19, 2) == (ACK | DRIVER) << 8   # num_queues hi, status
    assert rule_of(t.emulate_mmio_read, 60, 8) == "non-8-bit read to offset"


def test_console_emergency_write(memory):
    dev = Console()
    t = tp.VirtioPciTransport(dev, memory)
    t.emulate_mmio_write(68, 4, 0x41)              # before any negotiation, as early printk
    t.emulate_mmio_write(68, 4, 0x142)
    assert dev.written == [0x41, 0x42]
    assert rule_of(t.emulate_mmio_write, 68, 1, 0x41) == "non-32-bit write to offset"
    assert rule_of(t.emulate_mmio_write, 64, 4, 0x41) == "Unexpected write to offset"


class WritableConfig(Dev):
    def write_config(self, offset, size, value):
        self.config[offset:offset + size] = value.to_bytes(size, "little")


def test_a_device_may_make_its_config_writable(memory):
    t = tp.VirtioPciTransport(WritableConfig(), memory)
    t.emulate_mmio_write(64, 2, 0xBEEF)
    assert t.device.config[4:6] == b"\xef\xbe"
    assert rule_of(t.emulate_mmio_write, 66, 4, 0) == "Unexpected write to offset"  # past end


class Msix(tp.MsixHook):
    def __init__(self):
        self.on = True
        self.sent = []

    def enabled(self):
        return self.on

    def accept_vector(self, vector):
        return vector if vector < 4 else tp.VIRTIO_MSI_NO_VECTOR

    def signal(self, vector):
        self.sent.append(vector)


def test_msix_hook_takes_vectors_and_signals_messages(memory):
    raised = []
    dev = Dev()
    t = tp.VirtioPciTransport(dev, memory, raise_irq=lambda: raised.append(1))
    hook = Msix()
    t.attach_msix(hook)
    assert t.emulate_mmio_read(16, 2) == tp.VIRTIO_MSI_NO_VECTOR
    t.emulate_mmio_write(20, 1, ACK)
    t.emulate_mmio_write(20, 1, ACK | DRIVER)
    assert t.emulate_mmio_read(26, 2) == tp.VIRTIO_MSI_NO_VECTOR
    t.emulate_mmio_write(16, 2, 0)
    t.emulate_mmio_write(22, 2, 1)
    t.emulate_mmio_write(26, 2, 2)
    t.emulate_mmio_write(22, 2, 0)
    t.emulate_mmio_write(26, 2, 9)                 # cannot be mapped
    assert t.emulate_mmio_read(26, 2) == tp.VIRTIO_MSI_NO_VECTOR
    t.interrupt(1)
    t.interrupt(0)                                 # no vector: nothing sent
    dev.update_config(bytes(8))
    assert hook.sent == [2, 0] and raised == []
    hook.on = False                                # MSI-X switched off: back to INTx
    t.interrupt(1)
    assert raised == [1] and t.read_isr() == virtio.ISR_QUEUE
    hook.on = True
    t.msix_config_vector = tp.VIRTIO_MSI_NO_VECTOR
    dev.update_config(bytes(8))
    assert hook.sent == [2, 0]


def test_hook_protocol_is_abstract():
    hook = tp.MsixHook()
    for call in (hook.enabled, lambda: hook.accept_vector(0), lambda: hook.signal(0)):
        with pytest.raises(NotImplementedError):
            call()


def test_transport_needs_a_device(memory):
    with pytest.raises(TypeError):
        tp.VirtioPciTransport(object(), memory)


# -- hostile register writes --------------------------------------------------------

accesses = st.lists(st.tuples(st.integers(0, 80), st.sampled_from([1, 2, 4, 8, 3]),
                              st.integers(0, 0xFFFFFFFFFFFFFFFF), st.booleans()),
                    min_size=1, max_size=60)


@settings(max_examples=examples(150))
@given(accesses, st.integers(0, 3))
def test_hostile_register_accesses_only_raise_guest_error(ops, start):
    with GuestMemory(64 * 1024) as memory:
        bus = PciBus(memory)
        t = bus.add_device(Console())
        # Start some runs part-way through a proper setup, so deeper states get hit.
        if start:
            to_features_ok(t)
        if start > 1:
            setup_queue(t, 0, 0x1000)
        if start > 2:
            t.emulate_mmio_write(20, 1, 15)
        for off, size, value, is_write in ops:
            try:
                if is_write:
                    bus.access(MMIO, t.mmio_addr + off, size, True, value)
                else:
                    got = bus.access(MMIO, t.mmio_addr + off, size, False)
                    assert 0 <= got < (1 << (8 * size))
            except GuestError:
                pass


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(st.integers(0xCF8, 0xCFF), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFFFFFF), st.booleans()), min_size=1, max_size=60))
def test_hostile_config_port_accesses_only_raise_guest_error(ops):
    with GuestMemory(64 * 1024) as memory:
        bus = PciBus(memory)
        bus.add_device(Console())
        for port, size, value, is_write in ops:
            if port == 0xCF8 and is_write and value & 0x80000000:
                value &= 0x8000_18FC        # keep the latch near our devices most of the time
            try:
                got = bus.access(PIO, port, size, is_write, value)
                assert 0 <= got < (1 << (8 * size))
            except GuestError:
                pass


class Picky(Dev):
    """Refuses to go live unless both queues were enabled."""

    def activate(self, queues, negotiated):
        if any(q is None for q in queues):
            raise GuestError("needs both queues", device=self.name)
        super().activate(queues, negotiated)


def test_a_device_refusing_to_go_live_leaves_status_and_runner_alone(memory):
    runner = InlineRunner()
    t = tp.VirtioPciTransport(Picky(), memory, runner=runner)
    to_features_ok(t)
    setup_queue(t, 0, 0x1000)
    assert rule_of(t.emulate_mmio_write, 20, 1, 15) == "needs both queues"
    assert t.status == 0x0B and runner.device is None
    setup_queue(t, 1, 0x4000)
    t.emulate_mmio_write(20, 1, 15)
    assert t.status == 15 and runner.device is t.device


def test_queue_registers_read_and_write_by_name():
    regs = tp.QueueRegs(64)
    assert regs.get("queue_size") == 64 and regs.get("queue_enable") == 0
    regs.set("queue_desc_lo", 0x1000)
    regs.set("queue_desc_hi", 0x2)
    assert regs.address("desc") == 0x2_0000_1000
    regs.set("queue_size", 0x12345)               # wider than the field: truncated
    assert regs.get("queue_size") == 0x2345
    assert tp.width_bits(4) == 32 and tp.width_bits(3) == 8
