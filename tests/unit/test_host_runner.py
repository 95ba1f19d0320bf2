"""The threaded runner: one thread per queue, eventfd kicks, interrupts, clean resets."""

import os
import struct
import threading
import time

from lguest.config import DeviceSpec
from lguest.devices import block as blk
from lguest.devices.console import INPUT, OUTPUT, ConsoleDevice
from lguest.devices.rng import RngDevice
from lguest.host import build_device
from lguest.host.block import FileStore
from lguest.host.console import FdSource
from lguest.host.runner import ThreadedRunner
from lguest.memory import GuestMemory
from lguest.virtio import VRING_AVAIL_F_NO_INTERRUPT
from test_dev_rings import GuestRing
from test_dev_transport import Guest


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


class Counter:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, qi):
        with self.lock:
            self.calls.append(qi)


class ZeroSource:
    def readv(self, views):
        for v in views:
            v[:] = bytes(v.nbytes)
        return sum(v.nbytes for v in views)


def rng_setup():
    ring = GuestRing(GuestMemory(1 << 20), 16)
    dev = RngDevice(ZeroSource())
    dev.activate([ring.queue], 0)
    return dev, ring


def test_kick_wakes_the_queue_thread_and_interrupts_once_per_batch():
    dev, ring = rng_setup()
    irq = Counter()
    runner = ThreadedRunner()
    runner.start(dev, irq)
    try:
        for _ in range(3):
            ring.add([], [32])
        runner.kick(0)
        assert wait_for(lambda: ring.memory.read_u16(ring.used + 2) == 3)
        assert wait_for(lambda: irq.calls == [0])
        head, _ = ring.add([], [8])
        runner.kick(0)
        assert wait_for(lambda: len(irq.calls) == 2)
        assert ring.used_entries()[-1] == (head, 8)
    finally:
        runner.stop()
    assert not runner.running


def test_buffers_added_before_start_are_served_without_a_kick():
    dev, ring = rng_setup()
    ring.add([], [16])
    irq = Counter()
    runner = ThreadedRunner()
    runner.start(dev, irq)
    try:
        assert wait_for(lambda: irq.calls == [0])
    finally:
        runner.stop()


def test_no_interrupt_when_the_guest_asks_for_none():
    dev, ring = rng_setup()
    ring.memory.write_u16(ring.avail, VRING_AVAIL_F_NO_INTERRUPT)
    irq = Counter()
    runner = ThreadedRunner()
    runner.start(dev, irq)
    try:
        ring.add([], [16])
        runner.kick(0)
        assert wait_for(lambda: ring.memory.read_u16(ring.used + 2) == 1)
        time.sleep(0.05)
        assert irq.calls == []
    finally:
        runner.stop()


def test_guest_error_on_a_queue_thread_is_reported():
    dev, ring = rng_setup()
    errors = []
    runner = ThreadedRunner(on_error=errors.append)
    runner.start(dev, Counter())
    try:
        ring.add([b"bad"], [16])
        runner.kick(0)
        assert wait_for(lambda: errors)
        assert errors[0].rule == "Output buffers in rng?"
    finally:
        runner.stop()


def test_kicks_after_stop_are_ignored():
    dev, ring = rng_setup()
    runner = ThreadedRunner()
    runner.start(dev, Counter())
    runner.stop()
    runner.kick(0)          # must not raise or write to a closed fd
    runner.stop()           # twice is fine


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_many_resets_leak_no_threads_and_no_fds():
    memory = GuestMemory(1 << 20)
    rx = GuestRing(memory, 8, base=0x1000, heap=0x10000)
    tx = GuestRing(memory, 8, base=0x3000, heap=0x40000)
    r, w = os.pipe()
    try:
        dev = ConsoleDevice(type("S", (), {"write": lambda self, v: None})(), FdSource(r))
        runner = ThreadedRunner(wake_fds={INPUT: r})
        fds, threads = open_fds(), threading.active_count()
        for _ in range(50):
            dev.activate([rx.queue, tx.queue], 0)
            runner.start(dev, Counter())
            assert threading.active_count() == threads + 2
            assert open_fds() == fds + 3        # two kick eventfds and the stop eventfd
            runner.kick(OUTPUT)
            runner.stop()
            dev.reset()
        assert threading.active_count() == threads
        assert open_fds() == fds
    finally:
        os.close(r)
        os.close(w)


def test_console_input_arrives_through_the_wake_fd_without_kicks():
    memory = GuestMemory(1 << 20)
    rx = GuestRing(memory, 8, base=0x1000, heap=0x10000)
    tx = GuestRing(memory, 8, base=0x3000, heap=0x40000)
    r, w = os.pipe()
    dev = ConsoleDevice(None, FdSource(r))
    dev.activate([rx.queue, tx.queue], 0)
    irq = Counter()
    runner = ThreadedRunner(wake_fds={INPUT: r})
    try:
        head, outs = rx.add([], [64])
        runner.start(dev, irq)
        time.sleep(0.02)
        assert irq.calls == []                  # nothing typed yet
        os.write(w, b"hello")
        assert wait_for(lambda: irq.calls == [INPUT])
        assert rx.used_entries() == [(head, 5)]
        assert memory.read(outs[0], 5) == b"hello"
        os.close(w)
        w = None
        rx.add([], [64])
        runner.kick(INPUT)
        assert wait_for(lambda: dev.input_ended)  # end of input: stop reading, no spin
        assert runner.running and rx.queue.has_available() and rx.used_entries() == []
    finally:
        runner.stop()
        os.close(r)
        if w is not None:
            os.close(w)


def test_reset_mid_transfer_loses_nothing_acknowledged(tmp_path):
    """Fill the ring with writes, reset while the thread works through them: every
    request in the used ring when stop() returns is in the file, and nothing is
    acknowledged after stop() returned."""
    path = tmp_path / "disk.img"
    sectors = 128
    path.write_bytes(bytes(sectors * 512))
    store = FileStore(str(path))
    memory = GuestMemory(8 << 20)
    ring = GuestRing(memory, 256, heap=0x100000)
    dev = blk.BlockDevice(store)
    dev.activate([ring.queue], 0)
    requests = {}
    for sector in range(sectors):
        data = struct.pack("<I", sector + 1) * 128
        head, _ = ring.add([struct.pack("<IIQ", blk.T_OUT, 0, sector), data], [1], indirect=True)
        requests[head] = (sector, data)
    runner = ThreadedRunner()
    runner.start(dev, Counter())
    wait_for(lambda: ring.memory.read_u16(ring.used + 2) > 0, timeout=2)
    runner.stop()
    acknowledged = ring.used_entries()
    time.sleep(0.02)
    assert ring.used_entries() == []            # nothing more after stop() returned
    assert acknowledged, "the runner served nothing before the reset"
    contents = path.read_bytes()
    for head, written in acknowledged:
        sector, data = requests[head]
        assert written == 1
        assert contents[sector * 512:(sector + 1) * 512] == data
    store.close()


# -- a block device on a file, served by the runner through the PCI transport -----------
def served_block(tmp_path, sectors):
    path = tmp_path / "img"
    path.write_bytes(bytes(sectors * 512))
    host = build_device(DeviceSpec("block", path=str(path)))
    guest = Guest(host.device, runners=[host.runner])
    return path, host, guest, guest.handles[0]


def write_request(sector, data):
    return [struct.pack("<IIQ", blk.T_OUT, 0, sector), data], [1]


def test_threaded_block_serves_a_full_ring(tmp_path):
    path, host, guest, h = served_block(tmp_path, 256)
    queue = h.queue(0)
    for sector in range(200):
        queue.add_buffer(*write_request(sector, struct.pack("<I", sector) * 128))
    h.kick(0)
    used = []
    assert wait_for(lambda: used.extend(queue.collect()) or len(used) == 200, timeout=10)
    assert all(u.data == bytes([blk.S_OK]) for u in used)
    contents = path.read_bytes()
    assert all(contents[s * 512:s * 512 + 4] == struct.pack("<I", s) for s in range(200))
    guest.close()
    host.close()


def test_many_resets_through_the_transport_leak_nothing(tmp_path):
    _, host, guest, h = served_block(tmp_path, 16)
    fds, threads = open_fds(), threading.active_count()
    for i in range(40):
        h.negotiate()                       # resets first
        h.setup_queues()
        h.driver_ok()
        assert threading.active_count() == threads
        queue = h.queue(0)
        queue.add_buffer(*write_request(i % 16, bytes([i]) * 512))
        h.kick(0)
        assert wait_for(lambda: queue.poll(queue.last_used_idx), timeout=10)
    h.reset()
    assert threading.active_count() == threads - 1      # the thread of the first DRIVER_OK
    assert open_fds() == fds - 2                        # ... and its kick and stop eventfds
    guest.close()
    host.close()
