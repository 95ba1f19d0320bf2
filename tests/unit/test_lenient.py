"""Lenient mode (L:425): a misused device sets DEVICE_NEEDS_RESET, raises a config
interrupt, stops serving, logs the rule once, and works again after a reset; the other
devices and the guest go on. Strict (the default) raises the GuestError as before."""

import logging
import struct
import threading
import time

import pytest

from lguest.config import LaunchConfig
from lguest.backends import fake_guest
from lguest.devices.base import InlineRunner
from lguest.devices.rng import RngDevice
from lguest.driver.pci import VirtioPciDriver
from lguest.driver.vring import GuestAllocator
from lguest.errors import GuestError
from lguest.host.runner import ThreadedRunner
from lguest.devices.inmemory import CountingEntropy
from lguest.launcher import launch
from lguest.memory import GuestMemory
from lguest.pci.bus import PciBus
from lguest.pci.transport import OFFSET, ISR_OFFSET, PADDING_OFFSET
from lguest.virtio import (ISR_CONFIG, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK,
                           VRING_DESC_F_NEXT)
from test_pci_config import cfg_read, window

MEM = 8 << 20


class Machine:
    def __init__(self, runners=None, lenient=True):
        self.memory = GuestMemory(MEM)
        self.bus = PciBus(self.memory)
        self.irqs = []
        self.bus.irq_sink = self.irqs.append
        runners = runners or [InlineRunner(), InlineRunner()]
        self.transports = [self.bus.add_device(RngDevice(CountingEntropy()), runner=r)
                           for r in runners]
        for t in self.transports:
            t.set_lenient(lenient)
        self.driver = VirtioPciDriver(self.bus.access, self.memory, GuestAllocator(0x100000, MEM))
        self.handles = self.driver.probe()
        for h in self.handles:
            self.bring_up(h)

    @staticmethod
    def bring_up(handle):
        handle.negotiate()
        handle.setup_queues()
        handle.driver_ok()

    def entropy(self, handle, size=16):
        queue = handle.queue(0)
        queue.add_buffer((), [size])
        handle.kick(0)
        return queue.collect()

    def loop(self, handle):
        """Add a chain whose descriptor points at itself, and kick."""
        queue = handle.queue(0)
        queue.add_buffer((), [16, 16])          # two descriptors: 0 -> 1
        head = 0
        self.memory.write_u16(queue.desc_addr + 16 * 1 + 12, 2 | VRING_DESC_F_NEXT)  # WRITE|NEXT
        self.memory.write_u16(queue.desc_addr + 16 * 1 + 14, head)                     # 1 -> 0
        handle.notify(0)

    def close(self):
        self.bus.reset_all()
        self.memory.close()


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.close()


def test_strict_is_the_default_and_raises():
    m = Machine(lenient=False)
    try:
        assert not m.transports[0].lenient
        with pytest.raises(GuestError) as info:
            m.loop(m.handles[0])
        assert info.value.rule == "Looped descriptor"
        assert not m.transports[0].status & STATUS_DEVICE_NEEDS_RESET
    finally:
        m.close()


def test_looped_chain_needs_reset_then_works_again(machine, caplog):
    bad, good = machine.handles
    t = machine.transports[0]
    assert machine.entropy(bad)[0].len == 16
    machine.irqs.clear()
    with caplog.at_level(logging.DEBUG, logger="lguest.pci.transport"):
        machine.loop(bad)
        status = bad.get_status()
        assert status & STATUS_DEVICE_NEEDS_RESET and status & STATUS_DRIVER_OK
        # 2.1.2: a configuration change notification once DRIVER_OK is set.
        assert machine.irqs == [t.irq_line]
        assert bad.ack_interrupt() & ISR_CONFIG
        # It stops serving: a second kick of a good chain is ignored, nothing used.
        bad.queue(0).add_buffer((), [8])
        bad.notify(0)
        assert bad.queue(0).collect() == []
        # Writes other than a reset are ignored while broken (they are misuse too).
        bad.write_common("queue_select", 0)
        bad.mmio_write(ISR_OFFSET, 1, 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Looped descriptor" in errors[0].getMessage()
    assert t.broken.rule == "Looped descriptor"
    # The other device never noticed.
    assert machine.entropy(good)[0].len == 16
    assert not good.get_status() & STATUS_DEVICE_NEEDS_RESET
    # A reset brings it back.
    machine.bring_up(bad)
    assert bad.get_status() == 15 and t.broken is None
    assert machine.entropy(bad, 32)[0].len == 32


def test_register_misuse_needs_reset_and_refused_read_is_all_ones(machine):
    bad, good = machine.handles
    t = machine.transports[0]
    assert bad.mmio_read(PADDING_OFFSET, 1) == 0xFF
    assert bad.get_status() & STATUS_DEVICE_NEEDS_RESET
    assert t.broken.rule == "read from padding"
    # A reset written at the wrong width is not a reset: still broken.
    bad.mmio_write(OFFSET["device_status"], 2, 0)
    assert t.broken is not None
    bad.mmio_write(OFFSET["device_status"], 1, 0)
    assert bad.get_status() == 0 and t.broken is None
    machine.bring_up(bad)
    assert machine.entropy(bad)[0].len == 16
    assert machine.entropy(good)[0].len == 16


def test_before_driver_ok_no_interrupt_but_isr_config_bit(machine):
    bad = machine.handles[0]
    bad.reset()
    machine.irqs.clear()
    bad.write_common("device_feature_select", 0)      # before ACKNOWLEDGE|DRIVER
    assert bad.get_status() == STATUS_DEVICE_NEEDS_RESET
    assert machine.irqs == []                          # not live: no interrupt
    assert bad.ack_interrupt() == ISR_CONFIG


def test_threaded_runner_error_reaches_the_transport_not_the_launcher():
    heard = []
    runner = ThreadedRunner(on_error=heard.append)
    m = Machine(runners=[runner, InlineRunner()])
    try:
        bad, good = m.handles
        t = m.transports[0]
        m.loop(bad)
        deadline = time.monotonic() + 10
        # The queue thread sets `broken` first (it guards against a second error), then
        # the status bit, then stops the runner: wait for all of it, not the first step.
        while (t.broken is None or runner.running) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.broken is not None and t.broken.rule == "Looped descriptor"
        assert bad.get_status() & STATUS_DEVICE_NEEDS_RESET
        assert heard == []                              # a guest error is not the host's
        assert not runner.running
        assert m.entropy(good)[0].len == 16
        m.bring_up(bad)
        assert runner.running
        queue = bad.queue(0)
        queue.add_buffer((), [16])
        bad.kick(0)
        got = []
        while not got and time.monotonic() < deadline:
            got = queue.collect()
            time.sleep(0.005)
        assert got and got[0].len == 16
    finally:
        m.close()
    assert not any(th.name.startswith("rng") for th in threading.enumerate())


def test_threaded_runner_host_errors_still_go_to_on_error():
    heard = []
    runner = ThreadedRunner(on_error=heard.append)
    m = Machine(runners=[runner, InlineRunner()])
    try:
        m.transports[0]._queue_failed(OSError(5, "EIO"))
        assert [type(e) for e in heard] == [OSError]
        assert m.transports[0].broken is None
    finally:
        m.close()


def _rude(guest):
    kernel = fake_guest.GuestKernel(guest)
    handles = kernel.probe()
    handles[0].write_common("device_feature_select", 0)   # before ACKNOWLEDGE|DRIVER
    status = handles[0].get_status()
    guest.log(f"after the mistake: status {status:#x}")
    kernel.bring_up(handles[0])
    fake_guest.exercise_console(kernel, handles[0])
    return "rude guest went on"


def test_launcher_lenient_keeps_the_guest_running(monkeypatch, capsys, caplog):
    monkeypatch.setattr(fake_guest, "default_scenario", _rude)
    with caplog.at_level(logging.ERROR):
        status = launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake", lenient=True))
    out = capsys.readouterr().out
    assert status == 0
    assert "after the mistake: status 0x40" in out and "rude guest went on" in out
    assert any("feature write before VIRTIO_CONFIG_S_DRIVER" in r.getMessage()
               for r in caplog.records)


def test_launcher_strict_without_the_flag(monkeypatch):
    monkeypatch.setattr(fake_guest, "default_scenario", _rude)
    with pytest.raises(GuestError):
        launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake"))


# -- the PCI_CFG window (L:434) is a way to misuse a device like any other ----------------
def test_lenient_bad_window_read_needs_a_reset_and_does_not_end_us(machine):
    first, second = machine.transports
    window(machine.bus, first.slot, 1, 0, 4)            # BAR 1: we have only BAR 0
    assert cfg_read(machine.bus, first.slot, 148, 4) == 0xFFFFFFFF
    assert first.broken.rule == "Invalid cfg_access to bar"
    assert first.status & STATUS_DEVICE_NEEDS_RESET
    assert second.broken is None and machine.entropy(machine.handles[1])   # the other goes on


def test_strict_bad_window_read_still_raises():
    m = Machine(lenient=False)
    try:
        window(m.bus, 1, 1, 0, 4)
        with pytest.raises(GuestError) as e:
            cfg_read(m.bus, 1, 148, 4)
        assert e.value.rule == "Invalid cfg_access to bar"
    finally:
        m.close()


def test_lenient_bad_window_read_on_the_host_bridge_reads_all_ones(machine):
    window(machine.bus, 0, 0, 0, 4)
    assert cfg_read(machine.bus, 0, 148, 4) == 0xFFFFFFFF
    assert all(t.broken is None for t in machine.transports)
