"""The pytest plugin (lguest.testing.plugin, a pytest11 entry point), seen from a
project of its own: a test file in a temp directory, run by a fresh pytest."""

import subprocess
import sys
import textwrap

import pytest

from lguest.testing import serve_hostile
from lguest.testing.plugin import missing_hw
from lguest.testing.rings import HostileRing
from lguest.devices.base import VirtioDevice


def run_pytest(tmp_path, source, *args):
    (tmp_path / "test_theirs.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *args, "test_theirs.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_plugin_is_on_by_default_with_markers_fixtures_and_option(tmp_path):
    done = run_pytest(tmp_path, """
        import os, pytest
        from lguest.devices.rng import RngDevice
        from lguest.devices.inmemory import CountingEntropy

        @pytest.mark.hw("kvm", "lguest")
        def test_needs_both():
            assert os.access("/dev/kvm", os.W_OK) and os.path.exists("/dev/lguest")

        def test_driver(virtio_driver):
            rig = virtio_driver(RngDevice(CountingEntropy()))
            (used,) = rig.request(rig.handles[0], 0, [], [4])
            assert used.data == bytes([0, 1, 2, 3])

        def test_fake(fake_backend):
            records = fake_backend.record()
            exit_, bus = fake_backend.replay(records)
            assert len(bus.devices) == 3

        def test_kernel(lguest_kernel):
            assert os.path.basename(lguest_kernel) == "vmlinux"
    """, "--strict-markers", f"--lguest-kernel={tmp_path}/vmlinux")
    (tmp_path / "vmlinux").write_bytes(b"")
    assert done.returncode == 0, done.stdout + done.stderr
    reasons = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    expected = missing_hw("kvm") or missing_hw("lguest")
    if expected:                       # this host lacks one: the test says which
        assert any(expected in line for line in reasons), done.stdout
    assert any("no such file" in line for line in reasons)   # vmlinux made after the run
    assert "3 passed" in done.stdout or "2 passed" in done.stdout


def test_an_unknown_hw_need_is_a_usage_error(tmp_path):
    done = run_pytest(tmp_path, """
        import pytest
        @pytest.mark.hw("quantum")
        def test_x():
            pass
    """)
    assert done.returncode != 0 and "known needs are" in done.stdout + done.stderr


def test_plugin_can_be_turned_off(tmp_path):
    done = run_pytest(tmp_path, """
        def test_x(virtio_driver):
            pass
    """, "-p", "no:lguest")
    assert done.returncode != 0 and "fixture 'virtio_driver' not found" in done.stdout


class Crashing(VirtioDevice):
    device_id = 4
    queue_names = ("q",)

    def process(self, queue_index):
        raise IndexError("a device bug, not a driver error")


def test_serve_hostile_does_not_hide_a_device_bug():
    with pytest.raises(IndexError):
        serve_hostile(Crashing(), HostileRing("empty", 4, 0))
