"""Resource hygiene: many device resets, vhost-user reconnects and launcher reboots
leak no threads, no fds and no memory, as /proc/self counts them.

Each test warms up first (allocators, caches, lazily imported modules), then takes
the baseline, then runs its cycles. CI runs 300 resets, 1,000 reconnects and 100
reboots (a reboot rebuilds the whole machine: ~36 ms); HYGIENE_CYCLES=1000 runs 1,000
of each (about 50 s), as docs/reliability.md says."""

import gc
import os
import struct
import sys
import threading
import time

import pytest

from lguest.backends import fake_guest
from lguest.config import DeviceSpec, LaunchConfig
from lguest.driver.pci import VirtioPciDriver
from lguest.driver.vring import GuestAllocator
from lguest.host import build_device
from lguest.launcher import launch
from lguest.memory import GuestMemory
from lguest.pci.bus import PciBus
from lguest.vhost_user.backend import VhostUserTransport
from lguest.devices.block import BlockDevice
from lguest.host.block import FileStore
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import VhostUserServer

_ALL = os.environ.get("HYGIENE_CYCLES")
RESETS, RECONNECTS, REBOOTS = (int(_ALL),) * 3 if _ALL else (300, 1000, 100)
WARM_UP = 30
RSS_SLACK_KB = 6 * 1024      # allocator noise; a leak of a ring or a mapping per cycle is far more
SECTOR = 512


def snapshot():
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open("/proc/self/status") as f:
        tasks = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return {"fds": fds, "threads": threading.active_count(), "tasks": tasks, "rss_kb": rss}


def check(before, after, cycles):
    assert after["fds"] == before["fds"], (before, after)
    assert after["threads"] == before["threads"], (before, after)
    assert after["tasks"] == before["tasks"], (before, after)
    assert after["rss_kb"] - before["rss_kb"] < RSS_SLACK_KB, \
        f"RSS grew {after['rss_kb'] - before['rss_kb']} KiB over {cycles} cycles"


def settled_snapshot(timeout=3.0):
    """A snapshot once the counts stop moving: a vhost-user server finishes forgetting a
    front-end on its own thread just after the front-end hangs up. A leak never settles
    back, so waiting (boundedly) for quiet hides nothing."""
    last = snapshot()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = snapshot()
        if (now["fds"], now["threads"], now["tasks"]) == (last["fds"], last["threads"], last["tasks"]):
            return now
        last = now
    return last


def cycles(n, body):
    for i in range(WARM_UP):
        body(i)
    before = settled_snapshot()
    for i in range(n):
        body(i)
    return before, settled_snapshot()


def test_device_resets_with_threaded_runners(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    host = build_device(DeviceSpec("block", path=str(image)))
    memory = GuestMemory(8 << 20)
    bus = PciBus(memory)
    transport = bus.add_device(host.device, host.runner)
    driver = VirtioPciDriver(bus.access, memory, GuestAllocator(0x100000, 8 << 20))
    (h,) = driver.probe()

    def body(i):
        h.negotiate()
        h.setup_queues([16])
        h.driver_ok()
        assert host.runner.running
        q = h.queue(0)
        q.add_buffer([struct.pack("<IIQ", 1, 0, i % 64), bytes([i & 0xFF]) * SECTOR], [1])
        h.kick(0)
        while not q.collect():
            pass
        h.reset()                            # joins the queue's thread
        driver.allocator.free(q.desc_addr)   # the ring's memory goes back to the guest

    try:
        before, after = cycles(RESETS, body)
    finally:
        bus.reset_all()
        host.close()
        memory.close()
    check(before, after, RESETS)
    assert image.read_bytes()[(RESETS - 1) % 64 * SECTOR] == (RESETS - 1) & 0xFF
    assert transport.status == 0 and not host.runner.running


def test_vhost_user_reconnects(tmp_path):
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    store = FileStore(str(image))
    path = f"/tmp/lguest-hygiene-{os.getpid()}.sock"
    server = VhostUserServer(VhostUserTransport(BlockDevice(store)), path)
    server.serve_in_thread()

    def body(i):
        with Frontend.connect(path, regions=((0, 1 << 20),)) as fe:
            fe.negotiate()
            fe.set_mem_table()
            q = fe.setup_queue(0, 16)
            q.ring.add_buffer([struct.pack("<IIQ", 1, 0, i % 64), bytes([i & 0xFF]) * SECTOR], [1])
            q.kick()
            (used,) = q.wait_used()
            assert used.data == b"\0"

    try:
        before, after = cycles(RECONNECTS, body)
    finally:
        server.close()
        store.close()
    check(before, after, RECONNECTS)
    assert server.connections == RECONNECTS + WARM_UP
    assert image.read_bytes()[((RECONNECTS - 1) % 64) * SECTOR] == (RECONNECTS - 1) & 0xFF


def _probe_and_reboot(guest):
    kernel = fake_guest.GuestKernel(guest)
    for handle in kernel.probe():
        kernel.bring_up(handle)
    guest.reboot()


def test_launcher_reboots(tmp_path, monkeypatch):
    """The fake backend's reboot request: launch() cleans everything up, then calls
    reexec (here a counter instead of execv, so 1,000 fit in a test)."""
    image = tmp_path / "img"
    image.write_bytes(bytes(64 * SECTOR))
    monkeypatch.setattr(fake_guest, "default_scenario", _probe_and_reboot)
    config = LaunchConfig(mem_mb=4, kernel="none", backend="fake",
                          devices=[DeviceSpec("block", path=str(image)), DeviceSpec("rng")])
    reboots = []
    out = open(os.devnull, "w")

    def body(i):
        assert launch(config, out=out, reexec=lambda: reboots.append(i) or 0) == 0

    try:
        before, after = cycles(REBOOTS, body)
    finally:
        out.close()
    check(before, after, REBOOTS)
    assert len(reboots) == REBOOTS + WARM_UP


def test_check_sees_a_leak():
    """check() is what could fail: one fd kept per cycle is caught."""
    kept = []
    before, after = cycles(3, lambda i: kept.append(os.open("/dev/null", os.O_RDONLY)))
    try:
        with pytest.raises(AssertionError):
            check(before, after, 3)
    finally:
        for fd in kept:
            os.close(fd)


class _IdleQueue:
    def set_notifications(self, enabled):
        pass

    def should_interrupt(self):
        return False


class _IdleDevice:
    name = "idle"
    queue_names = tuple(f"q{i}" for i in range(8))

    def __init__(self):
        self.queues = [_IdleQueue() for _ in self.queue_names]

    def process(self, qi):
        return False


def test_runner_stopped_at_once_after_start_crashes_no_thread(monkeypatch, runner_class=None):
    """The soak found it: a stop() right after start() cleared the runner's stop fd
    before a new queue thread had read it (TypeError in the thread; worse, a start()
    after the stop() could hand the late reader the next generation's fds). Each thread
    now gets its fds and device as arguments. The window is made wide on purpose: the
    threads here take 10 ms to reach their first line."""
    from lguest.host.runner import ThreadedRunner

    class SlowToStart(runner_class or ThreadedRunner):
        def _serve(self, *args):
            time.sleep(0.01)
            return super()._serve(*args)

    crashed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    runner = SlowToStart()
    before = settled_snapshot()
    for _ in range(20):
        runner.start(_IdleDevice(), lambda qi: None)
        runner.stop()
    assert crashed == []
    check(before, settled_snapshot(), 20)
