"""virtio-fs: our back-end (`lguest vhost-user --fs`) next to Debian's C virtiofsd.

The same UML guest mounts the same host directory through one or the other and runs
the same phases, each after `echo 3 > drop_caches` so the guest asks the server again:
`find` over 5,000 files in 50 directories, a stat storm (stat of each of those files by
path, from a list made before the caches were dropped), a 64 MiB sequential read and
write (dd bs=1M, the write with fsync), and `git status` in a clone of this repository
(the host's git and its libraries are added to the bench's initramfs). Times come from
the host clock, as the guest's markers arrive on its stdout. Boots alternate between
the two servers. virtiofsd runs with its defaults (cache=auto, readdirplus), whose
one-second timeouts are also ours. UML needs the relay in fs_relay.py to use it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import ROOT, Row, bench_kit, median, say
from fs_relay import ConfigRelay

from lguest.uml import process
from lguest.virtio import ID_FS

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
TAG = "bench"
PHASES = ("find", "stat", "read", "write", "git")
# Each phase's row: what it measures, how much a run does, in what unit, the target.
SPEC = [("find", "find over 5,000 files in 50 dirs", 5050, "entries/s", ">= 0.5x"),
        ("stat", "stat storm, 5,000 paths, cold", 5000, "stats/s", ">= 0.5x"),
        ("git", "git status in a clone of this repository", 1, "runs/s", ">= 0.5x"),
        ("read", "64 MiB sequential read, dd bs=1M", 64 * 1.048576, "MB/s", ">= 0.8x"),
        ("write", "64 MiB sequential write, dd bs=1M conv=fsync", 64 * 1.048576, "MB/s",
         ">= 0.8x")]

GUEST = r"""
mount -t virtiofs bench /mnt || exit 1
cd /mnt
find tree -type f > /tmp/list
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
for i in 1 2 3; do
  drop; echo M find-start; find tree | wc -l > /tmp/n; echo M find-end
  drop; echo M stat-start; xargs stat -c %s < /tmp/list | wc -l > /tmp/n; echo M stat-end
  drop; cd /mnt/repo; echo M git-start; HOME=/tmp git status --porcelain > /tmp/g || exit 3
  echo M git-end; cd /mnt
done
drop; echo M read-start; dd if=big of=/dev/null bs=1M 2>/dev/null; echo M read-end
drop; echo M write-start; dd if=/dev/zero of=out bs=1M count=64 conv=fsync 2>/dev/null; echo M write-end
rm -f out
"""


def git_files():
    """{guest path: host path} for the host's git and the libraries it links."""
    git = shutil.which("git")
    if not git:
        raise SystemExit("bench fs: git is missing on the host")
    extra = {"usr/bin/git": git}
    out = subprocess.run(["ldd", git], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            extra[path.lstrip("/")] = os.path.realpath(path)
    return extra


def make_tree(top):
    """tree/ (5,000 files in 50 dirs), big (64 MiB), repo/ (a clone of this repository)."""
    for d in range(50):
        os.makedirs(os.path.join(top, "tree", f"d{d:02d}"))
        for f in range(100):
            with open(os.path.join(top, "tree", f"d{d:02d}", f"f{f:03d}"), "w") as fh:
                fh.write("x" * (f % 7))
    with open(os.path.join(top, "big"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(64):
            f.write(chunk)
    subprocess.run(["git", "clone", "-q", ROOT, os.path.join(top, "repo")], check=True)


def on_cpus(cpus):
    """Popen's preexec_fn that keeps the child on `cpus` (None: anywhere), as lguest
    run places a guest's back-ends (lguest/uml/placement.py)."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


class Ours:
    name = "lguest"
    tag = TAG
    options = ()

    def __init__(self, top, workdir, cpus=None):
        self.sock = os.path.join(workdir, "ours.sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lguest", "vhost-user", "--socket", self.sock,
             "--fs", top, "--tag", self.tag, *self.options], cwd=ROOT, stdin=subprocess.DEVNULL,
            preexec_fn=on_cpus(cpus))
        wait_for(self.sock, self.proc)

    @classmethod
    def polling(cls, poll_us):
        """Ours with --poll-us=N, as a side of its own (--variants)."""
        return type(f"Ours{poll_us}", (cls,), {"name": f"lguest@{poll_us}",
                                               "options": (f"--poll-us={poll_us}",)})

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


class Virtiofsd:
    name = "virtiofsd"
    tag = TAG

    def __init__(self, top, workdir, cpus=None):
        back = os.path.join(workdir, "vfsd.sock")
        self.sock = os.path.join(workdir, "relay.sock")
        self.proc = subprocess.Popen(
            [VIRTIOFSD, f"--socket-path={back}", "-o", f"source={top}", "-o", "cache=auto",
             "-o", "log_level=err"], stdin=subprocess.DEVNULL, preexec_fn=on_cpus(cpus))
        wait_for(back, self.proc)
        self.relay = ConfigRelay(self.sock, back, self.tag)

    def close(self):
        self.relay.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def wait_for(path, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench fs: server for {path} did not start")
        time.sleep(0.01)


def marker_recorder(marks, on_mark=None):
    """on_stdout for process.boot: the host time of each guest line "M <what>", appended
    to marks[<what>]; on_mark(<what>), if given, is called for each as well."""
    def stamp(data):
        now = time.monotonic()
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("M "):
                what = line[2:].strip()
                marks.setdefault(what, []).append(now)
                if on_mark is not None:
                    on_mark(what)
    return stamp


def one_boot(kit, server_class, top):
    workdir = tempfile.mkdtemp(prefix="lgfsb-", dir="/tmp")
    marks = {}
    stamp = marker_recorder(marks)
    server = server_class(top, workdir)
    try:
        outcome = process.boot(kit, GUEST, workdir, timeout=300, mem=256,
                               devices=[(server.sock, ID_FS)], on_stdout=stamp)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if outcome.status != 0 or len(marks) != 2 * len(PHASES):
        raise SystemExit(f"bench fs: {server_class.name} boot failed (status {outcome.status}, "
                         f"marks {sorted(marks)}): {outcome.stderr[-500:]!r} {outcome.log[-800:]}")
    # A phase run several times in a boot counts as the total of its runs, per run.
    return {p: sum(e - s for s, e in zip(marks[f"{p}-start"], marks[f"{p}-end"]))
            / len(marks[f"{p}-end"]) for p in PHASES}


def measure(runs=5, quick=False, variants=()):
    """variants: --poll-us values for more sides of ours, in the same alternation."""
    if not os.access(VIRTIOFSD, os.X_OK):
        raise SystemExit(f"{VIRTIOFSD} is missing (Debian: apt-get install qemu-system-common)")
    kit = bench_kit(git_files())
    sides = [Ours, Virtiofsd] + [Ours.polling(n) for n in variants]
    times = {side.name: {p: [] for p in PHASES} for side in sides}
    with tempfile.TemporaryDirectory(prefix="lguest-fsb-", dir="/tmp") as top:
        make_tree(top)
        for i in range(runs):
            order = sides if i % 2 == 0 else sides[::-1]
            for server in order:
                say(f"fs: run {i + 1}/{runs}, {server.name}")
                for phase, t in one_boot(kit, server, top).items():
                    times[server.name][phase].append(t)
    return [row for side in sides if side is not Virtiofsd
            for row in rows(times, runs, side.name)]


def rows(times, runs, ours_name="lguest"):
    def rate(name, phase, amount):
        ts = times[name][phase]
        return amount / median(ts), f"{min(ts):.3f}-{max(ts):.3f} s"

    out = []
    for phase, metric, amount, unit, target in SPEC:
        if ours_name != "lguest":
            metric, target = f"{metric}, ours as {ours_name}", ""
        ours, our_range = rate(ours_name, phase, amount)
        ref, ref_range = rate("virtiofsd", phase, amount)
        out.append(Row("fs", metric, ours, ref, unit, target,
                       f"median of {runs}; ours {our_range}, virtiofsd {ref_range}"))
    return out


if __name__ == "__main__":
    import argparse
    from common import table
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default="", metavar="N,N",
                   help="also run ours with each --poll-us=N, in the same alternation")
    args = p.parse_args()
    print(table(measure(args.runs, variants=[int(n) for n in args.variants.split(",") if n])))
