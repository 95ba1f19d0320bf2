"""The lguest-host kit's pieces that need no QEMU: its /init, its layers, run_host's status."""

import gzip
import os
import stat

import pytest

from lguest.errors import LauncherError
from lguest.lguest_host import kit, qemu, runner
from lguest.uml import archive


def test_init_script_runs_pytest_with_the_arguments_quoted_and_reports_its_status():
    script = runner.init_script(["-k", "a b", "tests/hw"], {"LGUEST_KERNEL": "/x y/bz"})
    assert "python3 -m pytest -p no:cacheprovider -p lguest.testing.plugin -k 'a b' tests/hw" in script
    assert "export LGUEST_KERNEL='/x y/bz'" in script
    run_line = script.index("python3 -m pytest")
    # The status line comes right after pytest, so $? is pytest's.
    assert script[run_line:].splitlines()[1] == f'echo "{qemu.EXIT_MARKER} $?"'


def test_files_layer_holds_the_init_and_the_files(tmp_path):
    host_file = tmp_path / "tool"
    host_file.write_bytes(b"\x7fELF...")
    host_file.chmod(0o755)
    data = kit.files_layer("#!/bin/sh\necho hi\n", {"/opt/tool": str(host_file), "etc/x": b"y"})
    entries = {name: (mode, body) for name, mode, body, _ in archive.read_cpio(gzip.decompress(data))}
    assert entries["init"][1] == b"#!/bin/sh\necho hi\n" and entries["init"][0] & 0o111
    assert entries["opt/tool"] == (stat.S_IFREG | 0o755, b"\x7fELF...")
    assert entries["etc/x"][1] == b"y"


def test_host_kernel_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("LGUEST_HOST_KERNEL", str(tmp_path / "none"))
    with pytest.raises(LauncherError, match="no lguest host kernel at .*none"):
        kit.host_kernel()
    (tmp_path / "bz").write_bytes(b"kernel")
    monkeypatch.setenv("LGUEST_HOST_KERNEL", str(tmp_path / "bz"))
    assert kit.host_kernel() == str(tmp_path / "bz")


def fake_qemu(tmp_path, monkeypatch, body):
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setattr(qemu, "QEMU", str(script))


def test_run_host_returns_the_status_the_init_reported(tmp_path, monkeypatch):
    fake_qemu(tmp_path, monkeypatch, 'echo booting; printf "LGUEST-HOST-EX"; echo "IT 3"; echo bye\n')
    seen = []
    assert qemu.run_host("initrd", kernel="bz", output=seen.append, timeout=30) == 3
    assert b"booting" in b"".join(seen) and b"bye" in b"".join(seen)


def test_run_host_without_a_report_is_a_failure(tmp_path, monkeypatch):
    fake_qemu(tmp_path, monkeypatch, "echo crashed early; exit 0\n")
    assert qemu.run_host("initrd", kernel="bz", output=lambda b: None, timeout=30) == 1


def test_run_host_times_out_with_124(tmp_path, monkeypatch):
    fake_qemu(tmp_path, monkeypatch, "echo starting; exec sleep 30\n")
    assert qemu.run_host("initrd", kernel="bz", output=lambda b: None, timeout=1) == 124


def test_the_qemu_command_is_the_documented_one():
    cmd = qemu.qemu_command("i.cpio.gz", "bz", 512)
    joined = " ".join(cmd)
    assert joined.startswith("qemu-system-i386 -accel tcg -cpu coreduo -m 512 -nographic -no-reboot")
    assert "-kernel bz -initrd i.cpio.gz" in joined and "console=ttyS0" in joined


def test_a_hung_apt_command_fails_with_a_message_instead_of_hanging():
    with pytest.raises(LauncherError, match=r"`sleep 5` did not finish in 0.2 s"):
        kit._run(["sleep", "5"], timeout=0.2)
    with pytest.raises(LauncherError, match="no-such-apt-get is missing"):
        kit._run(["no-such-apt-get"])
