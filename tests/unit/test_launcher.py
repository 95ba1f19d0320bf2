"""launch(config) end to end on the fake backend, and the run loop's exits."""

import os
import subprocess
import sys

import pytest

from lguest.backends import Backend, GuestDied, IoExit, PIO, RebootRequested, open_backend
from lguest.backends import fake_guest
from lguest.config import DeviceSpec, LaunchConfig
from lguest.errors import GuestError, LauncherError
from lguest.launcher import launch, run_guest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_command_line_runs_the_simulated_guest(tmp_path):
    image = tmp_path / "disk.img"
    content = os.urandom(16 * 512)
    image.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "lguest", "--backend=fake", f"--block={image}", "--rng", "64", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "guest console| " + fake_guest.GREETING.rstrip() in out
    assert "block: capacity 16 sectors" in out
    assert "first bytes " + content[:16].hex(" ") in out
    assert "wrote sector 15 back unchanged: status 0; read again: identical" in out
    assert "rng: asked for 64 bytes, got 64" in out
    assert "3 devices worked" in out
    assert image.read_bytes() == content           # written back unchanged


def test_read_only_disk_refuses_the_write(tmp_path, capsys):
    image = tmp_path / "ro.img"
    image.write_bytes(b"\xAB" * 1024)
    config = LaunchConfig(mem_mb=8, kernel="none", backend="fake",
                          devices=[DeviceSpec("block", path=str(image), read_only=True)])
    assert launch(config) == 0
    out = capsys.readouterr().out
    assert "accepted SEG_MAX, RO, FLUSH" in out
    assert "write to a read-only disk: status 1" in out
    assert "first bytes ab ab" in out


def test_kernel_none_needs_the_fake_backend(monkeypatch):
    class NoGuest(Backend):
        name = "kvm"
        def initialize(self, *a, **k): pass
        def run(self): raise AssertionError("must not run")
        def get_reg(self, name): return 0
        def set_reg(self, name, value): pass
        def interrupt(self, irq): pass
    monkeypatch.setattr("lguest.backends.choose.open_backend", lambda name=None, **k: NoGuest())
    with pytest.raises(LauncherError, match="kernel image is needed"):
        launch(LaunchConfig(mem_mb=4, kernel="none", backend="kvm"))


def test_a_driver_mistake_is_the_transports_guest_error(monkeypatch):
    def rude(guest):
        kernel = fake_guest.GuestKernel(guest)
        handle = kernel.probe()[0]
        handle.write_common("device_feature_select", 0)   # before ACKNOWLEDGE|DRIVER
    monkeypatch.setattr(fake_guest, "default_scenario", rude)
    with pytest.raises(GuestError) as info:
        launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake"))
    assert info.value.rule == "feature write before VIRTIO_CONFIG_S_DRIVER"


def test_reboot_reexecutes_after_cleanup(monkeypatch):
    def reboot(guest):
        fake_guest.GuestKernel(guest).probe()
        guest.reboot()
    monkeypatch.setattr(fake_guest, "default_scenario", reboot)
    calls = []
    status = launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake"),
                    reexec=lambda: calls.append("again") or 7)
    assert (status, calls) == (7, ["again"])


class Scripted(Backend):
    name = "scripted"

    def __init__(self, exits):
        self.exits = list(exits)
        self.completed = []

    def initialize(self, *a, **k): pass
    def get_reg(self, name): return 0
    def set_reg(self, name, value): pass
    def interrupt(self, irq): pass

    def run(self):
        item = self.exits.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_run_loop_retries_eintr_and_answers_reads():
    class Bus:
        def access(self, space, addr, size, is_write, value=0):
            return 0x1234 if not is_write else 0
    answers = []
    read = IoExit(PIO, 0xCFC, 2, False, _complete=answers.append)
    write = IoExit(PIO, 0xCF8, 4, True, 0x80000000, _complete=answers.append)
    backend = Scripted([InterruptedError(), read, write, GuestDied("Power down")])
    exit_ = run_guest(backend, Bus())
    assert exit_ == GuestDied("Power down") and answers == [0x1234, 0]


def test_unclaimed_access_is_handed_back():
    from lguest.memory import GuestMemory
    from lguest.pci.bus import MMIO, PciBus
    rejected = []
    stray = IoExit(MMIO, 0x7000_0000, 4, False, _reject=lambda: rejected.append(True))
    with GuestMemory(1 << 20) as memory:
        exit_ = run_guest(Scripted([stray, RebootRequested()]), PciBus(memory))
    assert isinstance(exit_, RebootRequested) and rejected == [True]


def test_open_backend_names_what_it_looked_for():
    with pytest.raises(LauncherError, match="unknown backend"):
        open_backend("bogus")
    if not os.path.exists("/dev/lguest"):
        with pytest.raises(LauncherError, match="/dev/lguest"):
            open_backend("lguest")


def test_fake_backend_with_a_real_image_loads_and_checks_it(tmp_path, capsys):
    from tests.unit.test_loader import make_elf
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(make_elf([(1, 0x100000, b"\x90" * 64, 4096)], entry=0x100000))   # PT_LOAD
    config = LaunchConfig(mem_mb=8, kernel=str(kernel), backend="fake", args=["console=hvc0"])
    assert launch(config) == 0
    assert "devices worked" in capsys.readouterr().out
    broken = tmp_path / "broken"
    broken.write_bytes(b"not a kernel" * 100)
    with pytest.raises(LauncherError, match="bzImage"):
        launch(LaunchConfig(mem_mb=8, kernel=str(broken), backend="fake"))


def test_a_64_bit_elf_on_the_fake_backend_is_one_clear_error(tmp_path):
    from tests.unit.test_loader import make_elf
    kernel = tmp_path / "vmlinux64"
    kernel.write_bytes(make_elf([(1, 0x1000000, b"\x90" * 64, 4096)], entry=0x1000000, bits=64))
    with pytest.raises(LauncherError, match="64-bit ELF kernel.*32-bit kernels only"):
        launch(LaunchConfig(mem_mb=32, kernel=str(kernel), backend="fake"))


def test_any_run_can_be_recorded_with_lguest_trace(tmp_path, monkeypatch, capsys):
    from lguest.backends import tracefile
    path = tmp_path / "run.trace"
    monkeypatch.setenv("LGUEST_TRACE", str(path))
    assert launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake",
                               devices=[DeviceSpec("rng")])) == 0
    header, records = tracefile.read_trace(path)
    assert header["config"]["devices"][0]["kind"] == "rng"
    assert records[0]["type"] == "initialize" and records[-1]["type"] == "died"
    traps = [r for r in records if r["type"] == "trap"]
    assert len(traps) == len(records) - 2 and any(r["response"]["irqs"] for r in traps)


def test_launch_makes_sigint_raise_even_if_inherited_ignored():
    """The console's ^C^C^C is sent as SIGINT: it must stop a launcher that was started
    with SIGINT ignored (a background job of a script), and the old handler comes back."""
    import signal
    from lguest.launcher import _make_sigint_raise
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        previous = _make_sigint_raise()
        assert previous is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert _make_sigint_raise() is None        # already raising: nothing to restore
    finally:
        signal.signal(signal.SIGINT, old)
