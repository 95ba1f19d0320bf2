"""Where a real UML guest and our back-ends run (L:887), and what a guest that runs out
of memory tells the user."""

import os
import subprocess
import sys
import threading

import pytest

from lguest.uml.guest import Guest

pytestmark = pytest.mark.hw("uml")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALLOWED = frozenset(os.sched_getaffinity(0))


def uml_processes(booted):
    """UML's own process and the host processes it runs the guest's programs in."""
    pid = booted.uml.proc.pid
    out = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def server_threads():
    return [t for t in threading.enumerate() if t.name.startswith("vhost-user")]


def test_the_guest_and_its_back_ends_share_one_cpu_by_default(uml, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    with Guest(block=[str(disk)], root="initramfs", kit=uml) as g:
        assert g.run("head -c 512 /dev/vda | wc -c").stdout.strip() == "512"
        cpus = g._booted.cpus
        assert len(cpus) == 1 and cpus <= ALLOWED
        processes = uml_processes(g._booted)
        assert len(processes) >= 2                          # the kernel and a guest program
        for pid in processes:
            assert os.sched_getaffinity(pid) == cpus, pid
        threads = server_threads()
        assert any(t.name.startswith("vhost-user-vq") for t in threads)
        for t in threads:
            assert os.sched_getaffinity(t.native_id) == cpus, t.name
    assert os.sched_getaffinity(0) == ALLOWED               # the caller's thread is its own


def test_cpus_all_leaves_them_to_the_scheduler(uml, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    with Guest(block=[str(disk)], root="initramfs", kit=uml, cpus="all") as g:
        assert g.run("true").returncode == 0
        assert g._booted.cpus is None
        for pid in uml_processes(g._booted):
            assert os.sched_getaffinity(pid) == ALLOWED
        for t in server_threads():
            assert os.sched_getaffinity(t.native_id) == ALLOWED, t.name


def test_the_default_memory_is_enough_for_python_and_an_oom_kill_is_named(uml, tmp_path):
    with Guest(root="initramfs", kit=uml) as g:
        kib = int(g.run("sed -n 's/MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo").stdout)
        assert kib > 200 * 1024                             # 256 MiB less the kernel's own
    # A program that keeps touching memory until the guest's kernel kills it.
    hog = ("x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
           "    x[-1][::4096] = b'x' * 256\n")
    done = subprocess.run([sys.executable, "-m", "lguest", "run", "--mem", "128",
                           "--timeout", "120", "--", "python3", "-c", hog],
                          cwd=str(tmp_path), capture_output=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=ROOT, TMPDIR="/tmp"))
    err = done.stderr.decode()
    assert done.returncode == 128 + 9, err                  # as a shell reports SIGKILL
    assert "lguest run: the guest ran out of memory (128 MiB) and its kernel killed " \
           "python3 (pid " in err, err
    assert "--mem gives it more" in err and "Traceback" not in err


def test_two_running_guests_of_one_process_get_different_cpus(uml):
    with Guest(root="initramfs", kit=uml) as a, Guest(root="initramfs", kit=uml) as b:
        a.boot()
        b.boot()
        first, second = a._booted.cpus, b._booted.cpus
        if len(ALLOWED) > 1:
            assert first != second
        for g, cpus in ((a, first), (b, second)):
            for pid in uml_processes(g._booted):
                assert os.sched_getaffinity(pid) == cpus
    with Guest(root="initramfs", kit=uml) as c:               # theirs given back
        c.boot()
        assert len(c._booted.cpus) == 1
