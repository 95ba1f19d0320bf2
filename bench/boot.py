"""Boot: `lguest run -- true` end to end next to plain linux.uml boots.

ours: `python -m lguest run --root=initramfs -- true` as a new process (Python start-up,
kit lookup, console pipes, the exit status). Its first row: the default, the host's root
over virtio-fs with the cwd writable (L:885), next to that, in the same rounds. The reference (the target's): linux.uml itself with the
same kernel, the same initramfs and the same command line (so the same /init running
`true`), no devices, its console lines to a file, timed from fork to exit; the status
line is checked so a boot that failed cannot pass as a fast one. Also shown: a minimal
boot with uml_boot.py's two-entry initramfs whose /init is `poweroff -f` (what our /init
itself costs: module loading, mounts). Rounds alternate. Also one boot, many commands: the second and later
`Guest.run("true")` in one booted Guest (the agent of L:821) next to a fresh
`lguest run -- true`, measured in the same rounds. Also the launcher's RSS (peak, sampled) for the memory section: that of
`lguest run --block IMG -- sleep 1`, guest RAM left out.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

from common import ROOT, busybox_path, median, say, Row
from blk import Sampler
from uml_boot import plain_initramfs

from lguest.uml import kit as kit_module, process
from lguest.uml.guest import Guest

WARM_PER_ROUND = 5


def timed(argv, **kw):
    start = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, timeout=60, **kw)
    return time.monotonic() - start


def timed_plain(argv, **kw):
    """A plain linux.uml boot whose /init powers off: seconds. UML sometimes leaves by
    abort() after the poweroff (seen under load), which is still a finished boot."""
    start = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=60, **kw)
    if done.returncode not in (0, -signal.SIGABRT):
        raise subprocess.CalledProcessError(done.returncode, argv)
    return time.monotonic() - start


def ram_env(argv, d):
    """The environment of a plain linux.uml: its RAM where lguest run puts a guest's
    (process.ram_dir, L:841), so the reference is not slowed by RAM on a disk."""
    return dict(os.environ, TMPDIR=process.ram_dir(process.memory_of(argv), d))


def plain_same(the_kit, d):
    """linux.uml with the kit's initramfs running `true`: seconds, checked."""
    # One file per console line: UML refuses to open one fd for two lines
    # ("can't create /dev/tty2"), and /init then dies.
    names = ("log", "out", "err", "status")
    fds = [os.open(os.path.join(d, n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for n in names]
    try:
        argv = process.kernel_arguments(the_kit, "true", d, tuple(fds))
        start = time.monotonic()
        # UML may leave by abort() after poweroff here; the status line is what counts.
        subprocess.run(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=fds[0],
                       stderr=fds[0], env=ram_env(argv, d), timeout=60)
        elapsed = time.monotonic() - start
    finally:
        for fd in fds:
            os.close(fd)
    with open(os.path.join(d, "status"), "rb") as f:
        if process.parse_status(f.read()) == 0:
            return elapsed
    with open(os.path.join(d, "log"), "rb") as f:
        tail = f.read()[-800:].decode(errors="replace")
    say(f"boot: plain linux.uml with the kit's initramfs did not report `true`'s exit "
        f"status; its console ended:\n{tail}")
    return None


def plain_same_checked(the_kit, d, failures):
    """plain_same, rerun (at most twice) when a boot fails; failures are counted."""
    for _ in range(3):
        elapsed = plain_same(the_kit, d)
        if elapsed is not None:
            return elapsed
        failures.append(1)
    raise SystemExit("bench boot: the reference boot failed three times in a row")


def warm_runs(guest, n):
    """Seconds per run("true") in an already booted Guest; each status checked."""
    out = []
    for _ in range(n):
        start = time.monotonic()
        result = guest.run("true")
        out.append(time.monotonic() - start)
        if result.returncode != 0:
            raise SystemExit(f"bench boot: `true` in the warm guest gave {result.returncode}")
    return out


def launcher_rss(image):
    """Peak KiB of `lguest run --block IMG -- sleep 1`, without the guest's RAM."""
    with tempfile.TemporaryDirectory(prefix="lgr-", dir="/tmp") as d:
        env = dict(os.environ, TMPDIR=d)
        proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", f"--block={image}",
                                 "--timeout=60", "--root=initramfs", "--", "sh", "-c", "dd if=/dev/vda of=/dev/null bs=1M "
                                 "2>/dev/null; sleep 1"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL)
        # The guest's RAM: UML's file is in the workdir, or on /dev/shm (process.ram_dir)
        # where it is an unnamed O_TMPFILE ("/dev/shm/#<inode> (deleted)").
        sampler = Sampler(proc.pid, exclude=(d, "vm_file", process.RAM_DIR + "/"))
        sampler.start()
        proc.wait(timeout=90)
        return sampler.stop()


def measure(runs=5, quick=False):
    the_kit = kit_module.ensure_kit()
    with tempfile.TemporaryDirectory(prefix="lguest-boot-", dir="/tmp") as d:
        initrd = os.path.join(d, "plain.cpio.gz")
        plain_initramfs(initrd, busybox_path())
        plain = [the_kit.kernel, "mem=64M", f"initrd={initrd}", "rdinit=/init", "con=null",
                 "con0=null,fd:1", "quiet", f"uml_dir={d}", "umid=plain",
                 # the boot-time benchmarks ours skips too (process.skipped_benchmarks)
                 "initcall_blacklist=" + ",".join(process.skipped_benchmarks(()))]
        ours = [sys.executable, "-m", "lguest", "run", "--timeout=60", "--root=initramfs",
                "--", "true"]
        host = [sys.executable, "-m", "lguest", "run", "--timeout=60", "--", "true"]
        times = {"plain": [], "same": [], "ours": [], "warm": [], "host": []}
        failures = []
        timed(ours, cwd=ROOT)                       # warm the page cache and the kit
        timed(host, cwd=ROOT)
        with Guest(kit=the_kit, timeout=60, root="initramfs") as warm:
            warm.run("true")                        # the one boot
            for i in range(runs):
                say(f"boot: run {i + 1}/{runs}")
                times["plain"].append(timed_plain(plain, env=ram_env(plain, d)))
                times["same"].append(plain_same_checked(the_kit, d, failures))
                times["ours"].append(timed(ours, cwd=ROOT))
                times["host"].append(timed(host, cwd=ROOT))
                times["warm"] += warm_runs(warm, WARM_PER_ROUND)
            if warm.boots != 1:
                raise SystemExit(f"bench boot: the warm guest booted {warm.boots} times")
        image = os.path.join(d, "small.img")
        with open(image, "wb") as f:
            f.truncate(16 << 20)
        rss = launcher_rss(image)
    note = f"median of {runs}"
    same_note = note + (f"; {len(failures)} reference boots failed and were rerun"
                        if failures else "")
    host_note = (f"median of {runs}; host root {median(times['host']):.2f} s absolute "
                 f"(target <= 2.0 s; range {min(times['host']):.2f}-{max(times['host']):.2f})")
    rows = [Row("boot", "`lguest run -- true` on the host's root (virtio-fs, the default) vs "
                "`--root=initramfs`", median(times["host"]), median(times["ours"]), "s",
                "<= 2.0 s", host_note, higher_is_better=False),
            Row("boot", "`lguest run -- true` vs linux.uml, same initramfs and command, no devices",
                median(times["ours"]), median(times["same"]), "s", "<= 1.3x", same_note,
                higher_is_better=False),
            Row("boot", "`lguest run -- true` vs minimal linux.uml (/init = poweroff -f)",
                median(times["ours"]), median(times["plain"]), "s", "", note,
                higher_is_better=False),
            Row("boot", "a later `Guest.run('true')` in one booted Guest vs a fresh "
                "`lguest run -- true`", median(times["warm"]), median(times["ours"]), "s",
                "<= 0.1 s", f"median of {len(times['warm'])} "
                f"(range {min(times['warm']):.3f}-{max(times['warm']):.3f} s), one boot",
                higher_is_better=False)]
    return rows, rss
