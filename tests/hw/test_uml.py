"""Real Linux (User-Mode Linux) drives our devices through our vhost-user back-end.

Each test boots one or two UML guests (about 1.5-2 s each here) with a timeout, so a
hang fails the test instead of stalling the suite.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from lguest.uml.guest import Guest, GuestFailed, GuestTimeout
from patterns import pattern

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 40


@pytest.fixture
def short_dir():
    """A temp directory with a short path: socket paths must fit in 108 bytes."""
    path = tempfile.mkdtemp(prefix="lgt-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_tmp(short_dir, monkeypatch):
    """Make the library's temp files land in a directory we can inspect afterwards."""
    monkeypatch.setattr("tempfile.tempdir", short_dir)
    return short_dir


def guest(uml, **options):
    return Guest(kit=uml, timeout=TIMEOUT, **options)


def test_command_output_and_exit_status_come_back_separately(uml, private_tmp):
    with guest(uml) as g:
        r = g.run("echo to-stdout; echo to-stderr >&2; uname -r; exit 3")
    assert r.returncode == 3
    assert r.stdout.splitlines()[0] == "to-stdout"
    assert r.stdout.splitlines()[1].startswith("6.")       # the UML kernel's release
    assert r.stderr == "to-stderr\n"
    assert os.listdir(private_tmp) == []                     # boot dirs and sockets gone


def test_the_guests_ram_is_on_tmpfs_not_on_the_workdirs_disk(uml, private_tmp):
    # L:841: UML's memory file (created and unlinked in $TMPDIR) belongs on a tmpfs,
    # where the host never writes the guest's RAM back to a disk.
    from lguest.uml import process
    expected = process.ram_dir(64, private_tmp)
    with guest(uml, mem=64) as g:
        g.run("true")
        with open(f"/proc/{g._booted.uml.proc.pid}/maps") as f:
            maps = f.read().splitlines()
    ram = {line.split(None, 5)[5] for line in maps
           if " rw" in line and "s " in line.split()[1] + " " and line.endswith("(deleted)")}
    assert ram, maps
    assert all(os.path.dirname(path.rsplit(" ", 1)[0]) == expected for path in ram), ram
    if os.path.isdir("/dev/shm") and process.mount_type("/dev/shm") == "tmpfs":
        assert expected == "/dev/shm"


def test_block_guest_reads_host_pattern_and_writes_its_own(uml, tmp_path, private_tmp):
    disk = tmp_path / "disk.img"
    host_bytes = pattern("host", 1 << 20)
    disk.write_bytes(host_bytes)
    # The guest writes 64 KiB of "guest-N\n" lines at 256 KiB, then fsync (a FLUSH request).
    script = ("md5sum /dev/vda | cut -d' ' -f1; "
              "seq 1 20000 | sed 's/^/guest-/' | head -c 65536 > /tmp/p && "
              "dd if=/tmp/p of=/dev/vda bs=4096 seek=64 conv=fsync 2>/dev/null && sync")
    with guest(uml, block=[str(disk)]) as g:
        r = g.run(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == hashlib.md5(host_bytes).hexdigest()
    guest_bytes = "".join(f"guest-{i}\n" for i in range(1, 20001)).encode()[:65536]
    expected = host_bytes[:256 << 10] + guest_bytes + host_bytes[(256 << 10) + 65536:]
    assert disk.read_bytes() == expected


def test_read_only_image_is_untouched(uml, tmp_path, private_tmp):
    disk = tmp_path / "ro.img"
    disk.write_bytes(pattern("ro", 256 << 10))
    before = (disk.read_bytes(), disk.stat().st_mtime_ns)
    with guest(uml, block=[f"{disk},ro"]) as g:
        r = g.run("blockdev --getro /dev/vda; echo x | dd of=/dev/vda conv=fsync 2>/dev/null;"
                  " echo dd=$?; md5sum < /dev/vda")
    lines = r.stdout.split()
    assert lines[0] == "1"                                   # the kernel saw VIRTIO_BLK_F_RO
    assert lines[1] != "dd=0"                                # and refused the write
    assert lines[2] == hashlib.md5(before[0]).hexdigest()
    assert (disk.read_bytes(), disk.stat().st_mtime_ns) == before


def test_file_system_made_in_the_guest_survives_a_second_boot(uml, tmp_path, private_tmp):
    disk = tmp_path / "fs.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    with guest(uml, block=[str(disk)]) as g:
        first = g.run("mke2fs -q /dev/vda >/dev/null && mount -t ext2 /dev/vda /mnt && "
                      "seq 1 5000 > /mnt/numbers && md5sum /mnt/numbers && umount /mnt")
        assert first.returncode == 0, first.stderr
        second = g.run("mount -t ext2 -o ro /dev/vda /mnt && md5sum /mnt/numbers && "
                       "wc -l < /mnt/numbers")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == first.stdout.splitlines()[0]
    assert second.stdout.splitlines()[1].strip() == "5000"
    with open(disk, "rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"                      # ext2 superblock magic 0xEF53


def test_two_block_devices_appear_in_order(uml, tmp_path, private_tmp):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"A" * 4096)
    b.write_bytes(b"B" * 8192)
    with guest(uml, block=[str(a), f"{b},ro"]) as g:
        r = g.run("head -c 3 /dev/vda; echo; head -c 3 /dev/vdb; echo; blockdev --getsize64 /dev/vdb")
    assert r.stdout.split() == ["AAA", "BBB", "8192"]


def test_console_output_arrives_through_our_virtio_console(uml, private_tmp):
    seen = []
    with guest(uml, console=True) as g:
        r = g.run("readlink /sys/class/tty/hvc0/device/driver 2>/dev/null || ls /sys/class/tty/hvc0;"
                  " echo through-hvc0", on_stdout=seen.append)
    assert r.returncode == 0, r.stderr
    assert "through-hvc0" in r.stdout
    assert b"".join(seen).decode() == r.stdout


def test_library_reports_a_panic_and_a_timeout(uml, private_tmp):
    with guest(uml) as g:
        with pytest.raises(GuestFailed, match="Kernel panic") as info:
            g.run("echo c > /proc/sysrq-trigger")
        assert "sysrq" in info.value.log
        start = time.monotonic()
        with pytest.raises(GuestTimeout, match="timed out after 3 s"):
            g.run("sleep 60", timeout=3)
        assert time.monotonic() - start < 10
    assert os.listdir(private_tmp) == []


def lguest_run(args, tmp_dir, **kwargs):
    env = dict(os.environ, TMPDIR=tmp_dir, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "lguest", "run", *args], env=env,
                          capture_output=True, timeout=TIMEOUT + 20, **kwargs)


def test_lguest_run_exit_status_timeout_and_panic(uml, short_dir):
    done = lguest_run(["--", "sh", "-c", "echo 'a b'; exit 7"], short_dir)
    assert (done.returncode, done.stdout) == (7, b"a b\n")
    hung = lguest_run(["--timeout", "3", "--", "sleep", "60"], short_dir)
    assert hung.returncode == 124 and b"timed out" in hung.stderr
    panic = lguest_run(["--", "sh", "-c", "echo c > /proc/sysrq-trigger"], short_dir)
    assert panic.returncode == 125 and b"Kernel panic" in panic.stderr
    bad = lguest_run(["--block", str(os.path.join(short_dir, "absent.img")), "--", "true"], short_dir)
    assert bad.returncode == 1 and b"is not a file" in bad.stderr
    assert [p for p in os.listdir(short_dir) if p.startswith("lguest")] == []


def test_lguest_run_stops_everything_on_interrupt(uml, short_dir):
    env = dict(os.environ, TMPDIR=short_dir, PYTHONPATH=ROOT)
    # As from a terminal: SIGINT not ignored, even if this test runs as a background job.
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", "--", "sh", "-c",
                             "echo started; sleep 60"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and b"interrupted" in proc.stderr.read()
    proc.stdout.close(), proc.stderr.close()
    # No UML left running from our temp dir, and the temp dir is empty.
    leftovers = subprocess.run(["pgrep", "-f", f"uml_dir={short_dir}"], capture_output=True)
    assert leftovers.stdout == b""
    assert [p for p in os.listdir(short_dir) if p.startswith("lguest")] == []


@pytest.mark.skipif(not shutil.which("qemu-storage-daemon"), reason="no qemu-storage-daemon")
def test_same_guest_reads_the_same_bytes_through_qemu_storage_daemon(uml, tmp_path, private_tmp):
    disk = tmp_path / "q.img"
    disk.write_bytes(pattern("qsd", 512 << 10))
    results = {}
    for backend in ("lguest", "qsd"):
        with guest(uml, block=[f"{disk},ro"], backend=backend) as g:
            results[backend] = g.run("md5sum < /dev/vda").stdout.split()[0]
    assert results["lguest"] == results["qsd"] == hashlib.md5(disk.read_bytes()).hexdigest()


def test_the_raid6_benchmark_runs_only_where_a_disk_could_hold_a_raid(uml, tmp_path, private_tmp):
    # Without a block device the guest skips it (a faster boot); with one, RAID6 works.
    with guest(uml, root="initramfs") as g:
        bare = g.run("dmesg | grep -i raid6").stdout
    assert "raid6_select_algo blacklisted" in bare and "using algorithm" not in bare
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    with guest(uml, block=[str(disk)], root="initramfs") as g:
        with_disk = g.run("dmesg | grep -i raid6").stdout
    assert "using algorithm" in with_disk and "blacklisted" not in with_disk
