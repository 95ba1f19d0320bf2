"""--poll-us (L:734): a ring thread busy-polls its kick fd for a while before sleeping."""

import struct
import time

import pytest

from lguest.devices.block import BlockDevice
from lguest.vhost_user import cli
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
def test_kicks_within_the_poll_window_are_caught_without_sleeping(disk, poll_us):
    _, store, pattern = disk
    s = session(store, poll_us)
    try:
        q = s.fe.setup_queue(0, 16)
        for sector in range(5):        # each kick follows the last answer at once
            assert read_sector(q, sector) == pattern[sector * SECTOR:(sector + 1) * SECTOR]
        (watcher,) = s.backend.watchers
        if poll_us:
            assert watcher.polls >= 4          # a kick may land before the first wait
        else:
            assert watcher.polls == 0 and watcher.sleeps >= 5
    finally:
        s.close()


def test_an_idle_ring_stops_polling_and_sleeps(disk):
    _, store, pattern = disk
    s = session(store, 2_000)                  # 2 ms
    try:
        q = s.fe.setup_queue(0, 16)
        read_sector(q, 0)
        (watcher,) = s.backend.watchers
        time.sleep(0.2)
        assert watcher.sleeps >= 1             # gave up polling after 2 ms
        before = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - before < 0.1, "a ring thread spins while idle"
        assert read_sector(q, 1) == pattern[SECTOR:2 * SECTOR]   # and still wakes
    finally:
        s.close()


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
