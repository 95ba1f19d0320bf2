"""The lguest-host bench, inside the host: the seed's C launcher and ours, alternating.

Runs inside a real lguest host (bench/lguest_host.py boots one under QEMU and puts this
file at /bench/). Both launchers get the same guest kernel, the same initrd, the same
kernel arguments and a fresh disk image of the same size; only the launcher differs.
Each run's console comes back on a pipe and is timestamped here, line by line, with the
host's monotonic clock:

  boot run:  start -> the guest's /init says BENCH-INIT -> it powers off -> the launcher
             has exited;
  io run:    the same boot, then /init writes HVC_BYTES to hvc0, reads 32 MiB from
             /dev/vda and writes 16 MiB with fsync, each between marker lines.

One more run of ours, first and untimed, counts its traps, GETREGs and SETREGs (a
wrapper around its pread/pwrite) and profiles it (cProfile, grouped as
bench/lguest_traps.py does). Results are printed as `BENCH-RESULT <json>` lines.

    python3 /bench/lguest_host_side.py RUNS
"""

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time

PROJECT = "/lguest-py"
SEED = "/bench/lguest-seed"
KERNEL = "/lguest-host/bzImage"
BUSYBOX = "/bin/busybox"
WORK = "/tmp/bench"
GUEST_MEM_MB = "64"
GUEST_ARGS = ("console=hvc0", "rdinit=/init", "quiet")
DISK_MB = 48
READ_MB, WRITE_MB = 32, 16
HVC_BYTES = 64 * 1024
RUN_TIMEOUT = 900

sys.path[:0] = [PROJECT, os.path.dirname(os.path.abspath(__file__))]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo BENCH-INIT
if [ -e /io ]; then
  echo BENCH-HVC-START
  cat /text
  echo BENCH-HVC-END
  echo BENCH-READ-START
  dd if=/dev/vda of=/dev/null bs=1M count={read_mb} 2>/dev/null
  echo BENCH-READ-END
  echo BENCH-WRITE-START
  dd if=/dev/zero of=/dev/vda bs=1M count={write_mb} conv=fsync 2>/dev/null
  echo BENCH-WRITE-END
fi
poweroff -f
"""


def guest_initrd(path, io):
    from lguest.uml import archive
    cpio = archive.busybox_image(BUSYBOX)
    cpio.file("init", INIT.format(read_mb=READ_MB, write_mb=WRITE_MB).encode(), perm=0o755)
    if io:
        line = b"".join(bytes([33 + (i % 90)]) for i in range(79)) + b"\n"
        cpio.file("text", (line * (HVC_BYTES // len(line) + 1))[:HVC_BYTES - 1] + b"\n")
        cpio.file("io", b"")
    with open(path, "wb") as f:
        f.write(archive.gzip_bytes(cpio.finish()))
    return path


def launcher_argv(which, initrd, disk):
    options = [f"--block={disk}", f"--initrd={initrd}"]
    tail = [GUEST_MEM_MB, KERNEL, *GUEST_ARGS]
    if which == "c":
        return [SEED, *options, *tail]
    if which == "ours":
        return [sys.executable, "-m", "lguest", "--backend=lguest", *options, *tail]
    return [sys.executable, os.path.abspath(__file__), "--counted", "--backend=lguest",
            *options, *tail]


def fresh_disk():
    disk = os.path.join(WORK, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(DISK_MB << 20)
    return disk


def one_run(which, initrd):
    """Run a launcher to its exit: {marker: seconds since start}, exit time, stderr."""
    argv = launcher_argv(which, initrd, fresh_disk())
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    marks, received = {}, 0
    for line in proc.stdout:
        now = time.monotonic() - started
        received += len(line)
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("BENCH-") and text not in marks:
            marks[text] = (now, received)
        if now > RUN_TIMEOUT:
            proc.kill()
            break
    err = proc.stderr.read().decode("utf-8", "replace")
    status = proc.wait()
    return {"which": which, "marks": marks, "exit": time.monotonic() - started,
            "status": status, "stderr": err[-1500:]}


def io_figures(run):
    """hvc0 bytes/s, block read and write MB/s from a run's marker times."""
    m = run["marks"]
    try:
        (hs, bs), (he, be) = m["BENCH-HVC-START"], m["BENCH-HVC-END"]
        rs, re_ = m["BENCH-READ-START"][0], m["BENCH-READ-END"][0]
        ws, we = m["BENCH-WRITE-START"][0], m["BENCH-WRITE-END"][0]
    except KeyError:
        return None
    return {"hvc_Bps": (be - bs) / (he - hs), "read_MBps": READ_MB / (re_ - rs),
            "write_MBps": WRITE_MB / (we - ws)}


# -- the counted, profiled run of ours (in its own process) ---------------------------
def counted_main(argv):
    """`lguest ARGV` with its trap, GETREG and SETREG counts and a profile on stderr."""
    from lguest import cli
    from lguest.backends import lguest_dev
    import lguest_traps
    counts = {"traps": 0, "getreg": 0, "setreg": 0}
    real_pread, real_pwrite = os.pread, os.pwrite

    def pread(fd, size, offset):
        data = real_pread(fd, size, offset)
        if size == lguest_dev.PENDING.size and len(data) == size:
            counts["traps"] += 1
        return data

    def pwrite(fd, data, offset):
        request = data[0]
        counts["getreg"] += request == lguest_dev.LHREQ_GETREG
        counts["setreg"] += request == lguest_dev.LHREQ_SETREG
        return real_pwrite(fd, data, offset)

    lguest_dev.LguestBackend.__init__.__kwdefaults__.update(pread=pread, pwrite=pwrite)
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        status = cli.main(argv)
    finally:
        profiler.disable()
        shares = lguest_traps.group_profile(pstats.Stats(profiler))
        print("BENCH-COUNTS " + json.dumps(dict(counts, profile=shares)), file=sys.stderr,
              flush=True)
    return status


def python_floor(n=20000):
    """Under TCG: what Python itself costs per trap-shaped step, without any guest.
    us per os.pread of 4 bytes (/dev/zero), per os.pwrite of 8 (/dev/null), per empty
    Python call, and bench/lguest_traps.py's ours and floor on its trap stream."""
    import lguest_traps
    zero, null = os.open("/dev/zero", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)
    request = bytes(8)

    def nothing():
        pass

    def per_call(step):
        started = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - started) / n * 1e6

    figures = {"pread_us": per_call(lambda: os.pread(zero, 4, 0)),
               "pwrite_us": per_call(lambda: os.pwrite(null, request, 0)),
               "call_us": per_call(nothing)}
    os.close(zero)
    os.close(null)
    ours, floor, _ = lguest_traps.measure(0.05, 3)
    figures.update(stream_ours_us=statistics.median(ours) / 1000,
                   stream_floor_us=statistics.median(floor) / 1000)
    return figures


def main(runs):
    os.makedirs(WORK, exist_ok=True)
    boot_initrd = guest_initrd(os.path.join(WORK, "boot.cpio.gz"), io=False)
    io_initrd = guest_initrd(os.path.join(WORK, "io.cpio.gz"), io=True)
    counted = one_run("counted", boot_initrd)
    for line in counted["stderr"].splitlines():
        if line.startswith("BENCH-COUNTS "):
            print("BENCH-RESULT " + json.dumps({"counts": json.loads(line.split(" ", 1)[1]),
                                                "run": {k: counted[k] for k in ("marks", "exit")}}),
                  flush=True)
            break
    else:
        print("BENCH-RESULT " + json.dumps({"error": "counted run", "stderr": counted["stderr"]}),
              flush=True)
    print("BENCH-RESULT " + json.dumps({"python": python_floor()}), flush=True)
    for i in range(runs):
        order = ("c", "ours") if i % 2 == 0 else ("ours", "c")
        for kind, initrd in (("boot", boot_initrd), ("io", io_initrd)):
            for which in order:
                run = one_run(which, initrd)
                run.update(kind=kind, round=i, io=io_figures(run) if kind == "io" else None)
                print("BENCH-RESULT " + json.dumps(run), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--counted"]:
        sys.exit(counted_main(sys.argv[2:]))
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
