"""--poll-us (L:734): a ring thread busy-polls its kick fd for a while before sleeping."""

import struct
import time

import pytest

from lguest.devices.block import BlockDevice
from lguest.vhost_user import cli, polling, rings
from lguest.vhost_user.backend import VhostUserTransport
from test_vhost_user_backend import SECTOR, Session, disk  # noqa: F401 - fixture


def session(store, poll_us):
    s = Session(VhostUserTransport(BlockDevice(store), poll_us=poll_us), regions=((0, 2 << 20),))
    s.fe.negotiate()
    s.fe.set_mem_table()
    return s


def read_sector(q, sector):
    q.ring.add_buffer([struct.pack("<IIQ", 0, 0, sector)], [SECTOR, 1])
    q.kick()
    (used,) = q.wait_used(timeout=5)
    return used.data[:SECTOR]


@pytest.mark.parametrize("poll_us", [0, 200_000])
def test_kicks_within_the_poll_window_are_caught_without_sleeping(disk, poll_us, monkeypatch):
    # Our front-end is a thread of this process: while it runs, a spinning ring thread
    # waits for the GIL, which the preemption check (tested below) would take as a lost
    # CPU. This test is about the window, so that check is off here.
    monkeypatch.setattr(polling, "POLL_PREEMPTED_NS", 10**12)
    monkeypatch.setattr(polling.CpuPressure, "spare", lambda self, now: True)  # however busy CI is
    _, store, pattern = disk
    s = session(store, poll_us)
    with s:
        q = s.fe.setup_queue(0, 16)
        for sector in range(40):       # each kick follows the last answer at once
            assert read_sector(q, sector % 8) == pattern[sector % 8 * SECTOR:
                                                         (sector % 8 + 1) * SECTOR]
        (watcher,) = s.backend.watchers
        if poll_us:
            # The window starts at zero and doubles from 4 us while kicks come within
            # the maximum, so after the first few requests they are caught spinning.
            # (Some need no wait at all: the interrupt goes out before the ring's last
            # look, L:315, and the next kick can come in before that look.)
            assert watcher.sleeps <= 15, (watcher.polls, watcher.sleeps)
            assert watcher.polls >= 1 and watcher.poll.window_ns > 0
        else:
            assert watcher.polls == 0 and watcher.sleeps >= 20, watcher.sleeps


def test_an_idle_ring_stops_polling_and_sleeps(disk):
    _, store, pattern = disk
    s = session(store, 2_000)                  # 2 ms
    with s:
        q = s.fe.setup_queue(0, 16)
        read_sector(q, 0)
        (watcher,) = s.backend.watchers
        time.sleep(0.2)
        assert watcher.sleeps >= 1             # gave up polling after 2 ms
        before = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - before < 0.1, "a ring thread spins while idle"
        assert read_sector(q, 1) == pattern[SECTOR:2 * SECTOR]   # and still wakes


def test_the_cli_takes_poll_us_and_refuses_nonsense(tmp_path, capsys):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    assert cli.parse_args(["--socket", "/s", f"--block={image}", "--poll-us=50"]).poll_us == 50
    assert cli.parse_args(["--socket", "/s", f"--block={image}"]).poll_us == cli.DEFAULT_POLL_US
    for bad in ("-1", str(cli.MAX_POLL_US + 1)):
        with pytest.raises(SystemExit):
            cli.parse_args(["--socket", "/s", f"--block={image}", f"--poll-us={bad}"])
        assert "--poll-us must be" in capsys.readouterr().err
    with pytest.raises(ValueError):
        VhostUserTransport(BlockDevice(_Store()), poll_us=-1)


class _Store:
    size = 4096


def test_the_window_grows_while_kicks_come_within_the_maximum_and_drops_when_not():
    poll = polling.AdaptivePoll(200_000)
    assert poll.window_ns == 0                 # a new ring sleeps at once
    poll.waited(50_000)                        # a kick 50 us after the wait began
    assert poll.window_ns == polling.POLL_START_NS
    for _ in range(20):
        poll.waited(min(poll.window_ns + 1, 200_000))   # just missed, each time
    assert poll.window_ns == 200_000           # doubled up to the maximum, no further
    poll.waited(150_000)                       # caught within the window: unchanged
    assert poll.window_ns == 200_000
    poll.waited(250_000)                       # longer than the maximum: poll less
    assert poll.window_ns == 100_000
    for _ in range(20):
        poll.waited(10**9)                     # an idle ring: soon no spinning at all
    assert poll.window_ns == 0
    poll.window_ns = 64_000
    poll.preempted()
    assert poll.window_ns == 32_000


class _IdlePoller:
    """A poller with nothing to say to poll(0); poll() (asleep) returns a kick."""

    def __init__(self):
        self.spins = self.sleeps = 0

    def poll(self, timeout=None):
        if timeout == 0:
            self.spins += 1
            return []
        self.sleeps += 1
        return [(7, 1)]


def test_a_spin_that_loses_its_cpu_stops_and_sleeps(monkeypatch):
    # A turn of the loop that took 100 us: another thread had the CPU (or the GIL).
    clock = iter(range(0, 10**9, 100_000))
    monkeypatch.setattr(rings.time, "monotonic_ns", lambda: next(clock))
    monkeypatch.setattr(polling.CpuPressure, "spare", lambda self, now: True)
    watcher = rings.KickWatcher(rings.Vring(0), serve=None, on_error=None, poll_us=100_000)
    watcher.poll.window_ns = 80_000_000                   # an 80 ms window...
    poller = _IdlePoller()
    assert watcher._wait(poller) == {7: 1}
    assert poller.spins == 1 and poller.sleeps == 1       # ...given up after one turn
    assert watcher.poll.window_ns == 40_000_000           # and halved


def test_no_spinning_while_the_host_has_no_cpu_to_spare():
    answers = [False, True]
    poll = polling.AdaptivePoll(200_000, spare_cpu=lambda now: answers.pop(0))
    poll.window_ns = 100_000
    assert poll.usable_window(0) == 0                     # busy host: sleep at once
    assert poll.usable_window(1_000) == 0                 # asked again only later...
    assert poll.usable_window(polling.PRESSURE_WINDOW_NS) == 100_000   # ...and now idle
    assert answers == []


def test_cpu_pressure_is_the_share_of_time_some_task_waited_for_a_cpu(tmp_path):
    psi = tmp_path / "cpu"
    fallback = []
    pressure = polling.CpuPressure(psi, fallback=lambda: fallback.append(1) or True)

    def stalled(total_us):
        psi.write_text(f"some avg10=1.00 avg60=2.00 avg300=3.00 total={total_us}\n"
                       "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")

    stalled(1_000_000)
    assert pressure.spare(0) and fallback == [1]           # a first sample: no rate yet
    stalled(1_000_500)                                      # 0.5 ms waited in 10 ms: 5%
    assert pressure.spare(10_000_000)
    stalled(1_003_500)                                      # 3 ms waited in 10 ms: 30%
    assert not pressure.spare(20_000_000)
    stalled(1_003_600)
    assert pressure.spare(20_000_000 + polling.PRESSURE_STALE_NS + 1)
    assert fallback == [1, 1]                               # too old a sample: asked again
    absent = polling.CpuPressure(tmp_path / "absent", fallback=lambda: False)
    assert not absent.spare(0)                              # no PSI: the fallback decides


def test_the_fallback_counts_runnable_tasks_against_cpus(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.30 0.42 0.67 2/97 7736\n")    # us and the guest: one CPU each
    assert polling.runnable_at_most_cpus(loadavg, cpus=2)
    loadavg.write_text("0.30 0.42 0.67 3/97 7736\n")    # one more waits for a CPU
    assert not polling.runnable_at_most_cpus(loadavg, cpus=2)
    loadavg.write_text("2/97\n")                        # not the format: trust the window
    assert polling.runnable_at_most_cpus(loadavg, cpus=2)
    assert polling.runnable_at_most_cpus(tmp_path / "absent", cpus=2)
