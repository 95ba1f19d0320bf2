"""The classic command line: getopt semantics, devices in order, one-line errors."""

import logging
import os
import subprocess
import sys
import types

import pytest

from lguest import __version__, cmdline
from lguest.cli import SUBCOMMANDS
from lguest.errors import GuestError, LauncherError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READ_ONLY_FILE = "/sys/devices/system/cpu/online"


@pytest.fixture
def launched(monkeypatch):
    """Replace lguest.launcher with a stub that records the config (and can fail)."""
    calls = []
    stub = types.ModuleType("lguest.launcher")
    stub.result = 7
    stub.error = None

    def launch(config):
        calls.append(config)
        if stub.error:
            raise stub.error
        return stub.result
    stub.launch = launch
    stub.calls = calls
    monkeypatch.setitem(sys.modules, "lguest.launcher", stub)
    yield stub
    logger = logging.getLogger("lguest")
    for h in [h for h in logger.handlers if getattr(h, "_lguest_verbose", False)]:
        logger.removeHandler(h)
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def files(tmp_path):
    for name, size in (("vmlinux", 4096), ("disk.img", 1 << 20), ("ro.img", 512), ("initrd", 100)):
        (tmp_path / name).write_bytes(b"\0" * size)
    return tmp_path


def run(argv, capsys):
    status = cmdline.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_devices_in_command_line_order_console_first(launched, files, capsys):
    status, _, err = run(["--block", files / "disk.img", "--tunnet=10.0.0.1", "--rng",
                          f"--block={files / 'ro.img'},ro", "--tunnet=bridge:br0:52:54:00:AB:cd:ef",
                          f"--initrd={files / 'initrd'}", "--backend=fake", "--lenient",
                          "64", files / "vmlinux", "root=/dev/vda", "-rw", "--block=kernel's"], capsys)
    assert (status, err) == (7, "")
    config, = launched.calls
    assert [d.kind for d in config.devices] == ["console", "block", "net", "rng", "block", "net"]
    assert config.devices[1].path == str(files / "disk.img") and not config.devices[1].read_only
    assert config.devices[4].path == str(files / "ro.img") and config.devices[4].read_only
    assert (config.devices[2].ip, config.devices[2].bridge, config.devices[2].mac) == ("10.0.0.1", None, None)
    assert (config.devices[5].bridge, config.devices[5].mac) == ("br0", "52:54:00:ab:cd:ef")
    assert (config.mem_mb, config.kernel, config.initrd) == (64, str(files / "vmlinux"), str(files / "initrd"))
    # Options stop at the memory size: everything after the image is the kernel's.
    assert config.cmdline == "root=/dev/vda -rw --block=kernel's"
    assert (config.backend, config.lenient, config.verbose) == ("fake", True, False)


def test_none_kernel_needs_no_file(launched, capsys):
    status, _, _ = run(["32", "none"], capsys)
    config, = launched.calls
    assert status == 7 and config.kernel == "none" and [d.kind for d in config.devices] == ["console"]


@pytest.mark.parametrize("argv,words", [
    (["--bogus", "64", "none"], "not recognized (try lguest --help)"),
    (["64"], "expected <mem-in-mb> and a kernel image"),
    (["0", "none"], "positive number of megabytes"),
    (["64M", "none"], "positive number of megabytes"),
    (["-5", "none"], "not recognized"),
    (["99999999", "none"], "more than this host's"),
    (["--tunnet=300.1.1.1", "64", "none"], "Failed to parse IP address '300.1.1.1'"),
    (["--tunnet=10.0.0", "64", "none"], "Failed to parse IP address"),
    (["--tunnet=10.0.0.1:52:54:00", "64", "none"], "Failed to parse mac address '52:54:00'"),
    (["--tunnet=bridge:", "64", "none"], "must specify bridge name"),
    (["--tunnet=bridge:averyveryverylongname", "64", "none"], "bad bridge name"),
    (["--block=/no/such/disk", "64", "none"], "Failed to open /no/such/disk: No such file"),
    (["--block=,ro", "64", "none"], "needs a file name"),
    (["--initrd=/no/such/initrd", "64", "none"], "Failed to open /no/such/initrd"),
    (["64", "/no/such/vmlinux"], "Failed to open /no/such/vmlinux"),
    (["64", "/"], "Is a directory"),
    (["--backend=qemu", "64", "none"], "unknown backend 'qemu'"),
    (["--username=no-such-user-here", "64", "none"], "getpwnam failed, incorrect username?"),
    (["--chroot=/no/such/dir", "64", "none"], 'chroot("/no/such/dir") failed'),
])
def test_user_errors_are_one_line_and_status_1(launched, capsys, argv, words):
    status, out, err = run(argv, capsys)
    assert status == 1 and out == "" and not launched.calls
    assert err.count("\n") == 1 and err.startswith("lguest: ") and words in err, err


def test_kernel_bigger_than_memory_is_refused(launched, files, capsys):
    (files / "big").write_bytes(b"\0" * (2 << 20))
    status, _, err = run(["2", files / "big"], capsys)
    assert status == 1 and "2 MiB of memory is too small for kernel" in err


def test_read_only_block_opens_read_only(launched, capsys):
    # A read-only sysfs attribute: anyone may read it, no one (not even root) open it to write.
    if not os.path.exists(READ_ONLY_FILE):
        pytest.skip(f"{READ_ONLY_FILE} is not here")
    status, _, _ = run([f"--block={READ_ONLY_FILE},ro", "64", "none"], capsys)
    assert status == 7 and launched.calls[0].devices[1].read_only
    status, _, err = run([f"--block={READ_ONLY_FILE}", "64", "none"], capsys)
    assert status == 1 and f"Failed to open {READ_ONLY_FILE}" in err


def test_help_lists_every_option_and_subcommand(launched, capsys):
    status, out, err = run(["--help"], capsys)
    assert status == 0 and err == "" and not launched.calls
    for option in ("--verbose", "--tunnet", "--block", "--rng", "--initrd", "--username",
                   "--chroot", "--backend", "--lenient", "--help", "--version", "<mem-in-mb>"):
        assert option in out
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in out


def test_version(launched, capsys):
    status, out, _ = run(["--version"], capsys)
    assert status == 0 and out == f"lguest-py {__version__}\n"


@pytest.mark.parametrize("error,words", [
    (LauncherError("cannot open /dev/kvm:\n  no such device"), "cannot open /dev/kvm: no such device"),
    (GuestError("Looped descriptor", device="block", queue="request"), "block vq request: bad driver: Looped descriptor"),
    (FileNotFoundError(2, "No such file or directory", "/dev/lguest"), "/dev/lguest: No such file or directory"),
])
def test_errors_from_the_launcher_are_one_line_without_traceback(launched, capsys, error, words):
    launched.error = error
    status, _, err = run(["64", "none"], capsys)
    assert status == 1 and err == f"lguest: {words}\n"


def test_verbose_shows_the_traceback_and_the_tracing(launched, capsys):
    launched.error = LauncherError("it broke")
    status, _, err = run(["-v", "64", "none"], capsys)
    assert status == 1 and "Traceback" in err and err.endswith("lguest: it broke\n")
    assert launched.calls[0].verbose
    logging.getLogger("lguest.pci.bus").debug("config read %#x", 0xCF8)
    assert "lguest.pci.bus: config read 0xcf8" in capsys.readouterr().err


def test_quiet_without_verbose(launched, capsys):
    run(["64", "none"], capsys)
    logging.getLogger("lguest.pci.bus").debug("should not appear")
    assert "should not appear" not in capsys.readouterr().err


def test_python_dash_m_lguest_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "lguest", "64", "/no/such/vmlinux"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == "lguest: Failed to open /no/such/vmlinux: No such file or directory\n"
