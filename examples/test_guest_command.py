"""Example (c): a third-party test file that runs commands in real Linux.

With lguest-py installed, its pytest plugin is on: the `lguest_guest` fixture is a
booted User-Mode Linux guest whose virtio devices are served by lguest-py, powered off
after the test. Options come from the `lguest_guest` marker (or from a
`lguest_guest_options` fixture, as here for a disk image made in tmp_path). The `hw`
marker with "uml" makes the test skip, saying why, where no UML kernel can be had
(the plugin fetches Debian's user-mode-linux and busybox-static on first use).

Run it:  pytest examples/test_guest_command.py
"""

import hashlib

import pytest

pytestmark = pytest.mark.hw("uml")


def test_uname_in_real_linux(lguest_guest):
    r = lguest_guest.run("uname -s; ls /sys/bus/virtio/drivers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "Linux"                          # a real kernel (User-Mode Linux)
    assert "virtio_blk" in lines                        # with Linux's own virtio drivers


@pytest.mark.lguest_guest(mem=96)
def test_marker_options_reach_the_guest(lguest_guest):
    r = lguest_guest.run("grep MemTotal /proc/meminfo")
    total_kib = int(r.stdout.split()[1])
    assert 64 * 1024 < total_kib <= 96 * 1024


@pytest.fixture
def lguest_guest_options(tmp_path):
    disk = tmp_path / "data.img"
    disk.write_bytes(b"third-party data\n" * 4096)
    return {"block": [f"{disk},ro"]}


def test_a_disk_image_read_in_the_guest(lguest_guest, tmp_path):
    expected = hashlib.sha256((tmp_path / "data.img").read_bytes()).hexdigest()
    first = lguest_guest.run("sha256sum /dev/vda")
    second = lguest_guest.run("head -c 17 /dev/vda")   # the same booted guest, ~ms
    assert first.stdout.split()[0] == expected
    assert second.stdout == "third-party data\n"
    assert lguest_guest.boots == 1
