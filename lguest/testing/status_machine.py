"""The device-status and feature machine of the virtio-PCI transport, around a device
you supply, against a small model of the seed's rules (emulate_mmio_write and
emulate_mmio_read): every step the model calls illegal must raise GuestError with the
seed's rule and leave the state alone; every legal step must succeed."""

from typing import Callable

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ..devices.base import InlineRunner, VirtioDevice
from ..errors import GuestError
from ..memory import GuestMemory
from ..pci import transport as tp

__all__ = ["StatusMachine", "Model", "RecordingRunner"]

ACK, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
NEXT_BIT_NEEDS = {ACK: 0, DRIVER: ACK, FEATURES_OK: ACK | DRIVER, DRIVER_OK: ACK | DRIVER | FEATURES_OK}
VERSION_1 = 1 << 32


class RecordingRunner(InlineRunner):
    def __init__(self):
        super().__init__()
        self.events = []

    def start(self, device, interrupt):
        self.events.append("start")
        super().start(device, interrupt)

    def stop(self):
        self.events.append("stop")
        super().stop()


class Model:
    """The seed's rules, written out plainly."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.status = 0
        self.wrote_features_ok = False
        self.accepted = 0
        self.driver_select = 0
        self.enabled = set()

    def feature_write_rule(self, size):
        if not self.status & DRIVER:
            return "feature write before VIRTIO_CONFIG_S_DRIVER"
        if self.status & FEATURES_OK:
            return "feature write after VIRTIO_CONFIG_S_FEATURES_OK"
        if size != 4:
            return "non-32-bit write to offset"
        return None

    def status_write_rule(self, value, size):
        if value == 0:
            return None if size == 1 else "non-8-bit write to offset"
        if self.status & ~value:
            return "unset of device status bit"
        new = value & ~self.status
        if new not in NEXT_BIT_NEEDS:
            return "unknown device status bit"
        if self.status != NEXT_BIT_NEEDS[new]:
            return "unexpected status transition"
        if new == DRIVER_OK and self.wrote_features_ok:
            return "did not re-read FEATURES_OK"
        if size != 1:
            return "non-8-bit write to offset"
        return None


sizes = st.sampled_from([1, 2, 4, 4, 4, 1, 1])
# Mostly real queues, sometimes one past the end, rarely a wild number.
queue_numbers = st.one_of(st.integers(0, 2), st.integers(0, 2), st.integers(0, 0xFFFF))


class StatusMachine(RuleBasedStateMachine):
    """The virtio-PCI status and feature machine around a device you supply.

    Subclass it, define make_device() (a fresh VirtioDevice each call), and take
    `.TestCase`. The machine writes and reads the common configuration as a driver
    would, and as a broken one would; every step a model of the seed's rules calls
    illegal must raise GuestError with the seed's rule and change nothing, and every
    legal one must succeed; when the device goes live, its activate() must have been
    given the features the driver accepted and the queues it enabled."""

    def make_device(self) -> VirtioDevice:
        """Override: a fresh device for each run of the machine."""
        raise NotImplementedError("a StatusMachine needs make_device()")

    @initialize()
    def setup(self) -> None:
        """Start a run: make_device()'s device behind a transport, and the model."""
        self.memory = GuestMemory(64 * 1024)
        self.device = self.make_device()
        self.activations = []
        real_activate = self.device.activate

        def activate(queues, negotiated):
            self.activations.append(negotiated)
            return real_activate(queues, negotiated)

        self.device.activate = activate
        self.runner = RecordingRunner()
        self.t = tp.VirtioPciTransport(self.device, self.memory, runner=self.runner)
        self.offered = self.device.features | VERSION_1
        self.nq = len(self.device.queue_names)
        self.max_size = self.device.queue_max_size
        self.model = Model()

    def teardown(self) -> None:
        if hasattr(self, "memory"):
            self.memory.close()

    def expect(self, rule_or_none: str | None, action: Callable[[], object]) -> object:
        """Do action(); if a rule is named, it must raise GuestError for that rule."""
        if rule_or_none is None:
            return action()
        try:
            action()
        except GuestError as e:
            assert e.rule == rule_or_none, (e.rule, rule_or_none)
            return None
        raise AssertionError(f"expected GuestError {rule_or_none!r}")

    @rule(value=st.one_of(st.sampled_from([0, 1, 3, 11, 15, 7, 2, 8, 4, 0x80, 0x40, 9]),
                          st.integers(0, 255)),
          size=st.sampled_from([1, 1, 1, 1, 2, 4]))
    def write_status(self, value, size):
        m = self.model
        expected = m.status_write_rule(value, size)
        became_live = expected is None and value & ~m.status == DRIVER_OK
        self.expect(expected, lambda: self.t.emulate_mmio_write(20, size, value))
        if expected is not None:
            return
        if value == 0:
            m.reset()
            assert self.runner.events[-1] == "stop"
            return
        new = value & ~m.status
        m.status = value
        if new == FEATURES_OK:
            m.wrote_features_ok = True
        if became_live:
            assert self.activations[-1] == m.accepted
            assert self.runner.events[-1] == "start"
            assert [q is not None for q in self.device.queues] == [
                qi in m.enabled for qi in range(self.nq)]

    @rule(step=st.integers(0, 3))
    def advance(self, step):
        """Mostly Linux's add_status() (read, then write one more bit) so the machine
        gets deep into the sequence; sometimes a jump over a bit, or a write without
        the read, which the model must call correctly."""
        m = self.model
        wanted = [b for b in (ACK, DRIVER, FEATURES_OK, DRIVER_OK) if not m.status & b]
        if not wanted:
            return
        if step < 2:
            self.read_status(1)
        new_bit = wanted[-1] if step == 2 else wanted[0]
        self.write_status(m.status | new_bit, 1)

    @rule(size=st.sampled_from([1, 1, 1, 2]))
    def read_status(self, size):
        if size != 1:
            self.expect("non-8-bit read to offset", lambda: self.t.emulate_mmio_read(20, size))
            return
        assert self.t.emulate_mmio_read(20, 1) == self.model.status
        self.model.wrote_features_ok = False

    @rule(select=st.integers(0, 3), size=sizes)
    def write_driver_select(self, select, size):
        m = self.model
        expected = "Unexpected driver select" if select > 1 else m.feature_write_rule(size)
        self.expect(expected, lambda: self.t.emulate_mmio_write(8, size, select))
        if expected is None:
            m.driver_select = select

    @rule(value=st.one_of(st.sampled_from([0, 1 << 28, 1 << 5, 1, 0x10000020, 0xFFFFFFFF, 3]),
                          st.integers(0, 0xFFFFFFFF)), size=sizes)
    def write_driver_features(self, value, size):
        m = self.model
        shift = 32 * m.driver_select
        masked = value & ((1 << (8 * size)) - 1)
        accepted = (m.accepted & ~(0xFFFFFFFF << shift)) | (masked << shift)
        offered = self.offered
        expected = "over-accepted features" if accepted & ~offered else m.feature_write_rule(size)
        self.expect(expected, lambda: self.t.emulate_mmio_write(12, size, value))
        if expected is None:
            m.accepted = accepted

    @rule(select=st.integers(0, 2), size=sizes)
    def read_device_features(self, select, size):
        m = self.model
        expected = m.feature_write_rule(size)
        self.expect(expected, lambda: self.t.emulate_mmio_write(0, size, select))
        if expected is not None:
            return
        offered = self.offered
        window = (offered >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0
        assert self.t.emulate_mmio_read(4, 4) == window

    @rule(qi=queue_numbers, part=st.sampled_from(tp.ADDRESS_REGS), size=sizes)
    def write_queue_address(self, qi, part, size):
        m = self.model
        self.t.emulate_mmio_write(22, 2, qi)
        if qi >= self.nq:
            expected = "setup of unavailable queue"
        elif qi in m.enabled:
            expected = "changing queue on live device"
        elif not m.status & FEATURES_OK:
            expected = "setting up vq before FEATURES_OK"
        elif m.wrote_features_ok:
            expected = "didn't re-read FEATURES_OK before setup"
        elif size != 4:
            expected = "non-32-bit write to offset"
        else:
            expected = None
        # Address 0 (all our rings live there): zeroed memory is a valid empty ring.
        self.expect(expected, lambda: self.t.emulate_mmio_write(tp.OFFSET[part], size, 0))

    @rule(qi=queue_numbers, value=st.sampled_from([1, 1, 1, 0, 2]),
          size=st.sampled_from([2, 2, 4]))
    def enable_queue(self, qi, value, size):
        m = self.model
        self.t.emulate_mmio_write(22, 2, qi)
        if qi >= self.nq:
            expected = "setup of unavailable queue"
        elif value != 1:
            expected = "setting queue_enable to"
        elif m.status & DRIVER_OK:
            expected = "enabling vq after DRIVER_OK"
        elif size != 2:
            expected = "non-16-bit write to offset"
        else:
            expected = None
            # The parts apart, as a driver lays them out: a used ring over the avail
            # ring is refused at enable; the address rule writes zeros.
            regs = self.t._queues[qi]
            regs.set("queue_avail_lo", 0x1000)
            regs.set("queue_used_lo", 0x2000)
        self.expect(expected, lambda: self.t.emulate_mmio_write(28, size, value))
        if expected is None:
            m.enabled.add(qi)

    @rule(qi=queue_numbers, value=st.sampled_from([1, 2, 4, 8, 16, 3, 0, 6, 256, 512]))
    def write_queue_size(self, qi, value):
        if qi >= self.nq:
            return
        self.t.emulate_mmio_write(22, 2, qi)
        if value & (value - 1) or not 0 < value <= self.max_size:
            expected = "invalid queue size"
        elif qi in self.model.enabled:
            expected = "changing queue size on live device"
        else:
            expected = None
        self.expect(expected, lambda: self.t.emulate_mmio_write(24, 2, value))

    @rule(qi=queue_numbers)
    def notify(self, qi):
        expected = "Invalid vq notification on" if qi >= self.nq else None
        self.expect(expected, lambda: self.t.emulate_mmio_write(56, 2, qi))

    @invariant()
    def registers_match_the_model(self):
        if not hasattr(self, "t"):
            return
        m = self.model
        assert self.t.status == m.status
        assert self.t.features_accepted == m.accepted
        assert self.t.wrote_features_ok == m.wrote_features_ok
        enabled = {qi for qi in range(self.nq) if self.t._queues[qi].get("queue_enable")}
        assert enabled == m.enabled
