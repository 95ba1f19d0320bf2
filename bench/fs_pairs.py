"""virtio-fs, both servers in one UML guest: each phase on ours, then on virtiofsd, in turns.

    .venv/bin/python bench/fs_pairs.py [--rounds 4] [--boots 1]

bench/fs.py boots a guest per server and run, a minute apart; on this machine the
hypervisor's steal changes within that minute, and a ratio of two such runs can say
more about the minute than about the servers (bench/RESULTS.md). Here one guest mounts
the same host directory twice: tag `ours` through `lguest vhost-user --fs`, tag `ref`
through Debian's virtiofsd (and fs_relay.py, for UML's GET_CONFIG). Each round runs
every phase of bench/fs.py -- find, stat storm, git status, 64 MiB read, 64 MiB write
with fsync -- on one mount and then at once on the other, ours first in even rounds and
second in odd ones, each after dropping the guest's caches. A phase's two runs are then
seconds apart on the same machine, guest and kernel. The rows give each side's median
over the rounds and, in the note, the median and spread of the per-round ratios.

Each placement gets its boots: the guest and both servers left to the scheduler (on
two free CPUs, each request wakes an idle CPU twice), and all of them on one CPU, as
`lguest run` places a guest and its back-ends by default (lguest/uml/placement.py).
"""

import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fs  # noqa: E402
from common import Row, bench_kit, fmt, say, tree_cpu_seconds  # noqa: E402

from lguest.uml import placement, process  # noqa: E402
from lguest.virtio import ID_FS  # noqa: E402

SIDES = ("ours", "ref")
# (what the rows add to their metric, lguest run's --cpus for it)
PLACEMENTS = (("", placement.ALL), (", one CPU shared (lguest run's placement)", placement.ONE))

GUEST = r"""
for t in ours ref; do mkdir -p /mnt/$t; mount -t virtiofs $t /mnt/$t || exit 1; done
cd /mnt/ours && find tree -type f > /tmp/list
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
phase() {   # phase SIDE NAME: one timed phase on one mount
  cd /mnt/$1; drop; echo M $1 $2-start
  case $2 in
    find) find tree | wc -l > /tmp/n ;;
    stat) xargs stat -c %s < /tmp/list | wc -l > /tmp/n ;;
    git) cd repo && HOME=/tmp git status --porcelain > /tmp/g || exit 3 ;;
    read) dd if=big of=/dev/null bs=1M 2>/dev/null ;;
    write) dd if=/dev/zero of=out-$1 bs=1M count=64 conv=fsync 2>/dev/null ;;
  esac
  echo M $1 $2-end
  rm -f /mnt/$1/out-$1
}
i=0
while [ $i -lt {rounds} ]; do
  if [ $((i % 2)) = 0 ]; then order="ours ref"; else order="ref ours"; fi
  for p in find stat git read write; do
    for s in $order; do phase $s $p || exit 3; done
  done
  i=$((i + 1))
done
"""


class Ours(fs.Ours):
    tag = "ours"


class Ref(fs.Virtiofsd):
    tag = "ref"


def cpu_recorder(marks, cpu, servers):
    """on_stdout: fs.marker_recorder's host times in `marks`, and in `cpu` the CPU
    seconds the marked side's server (its process tree) has used by then."""
    def charge(what):                  # "ours stat-start"
        side = what.split()[0]
        if side in servers:
            cpu.setdefault(what, []).append(tree_cpu_seconds(servers[side].proc.pid))
    return fs.marker_recorder(marks, charge)


def one_boot(kit, top, rounds, cpus=None):
    """({side: {phase: [seconds per round]}}, the same of server CPU seconds);
    cpus: where the guest and both servers run (None: anywhere)."""
    workdir = tempfile.mkdtemp(prefix="lgfsp-", dir="/tmp")
    marks = {}                        # "ours find-start": [host times, one a round]
    cpu = {}                          # "ours find-start": [server CPU seconds, one a round]
    servers = []
    try:
        servers.append(Ours(top, workdir, cpus))
        servers.append(Ref(top, workdir, cpus))
        outcome = process.boot(kit, GUEST.replace("{rounds}", str(rounds)), workdir,
                               timeout=120 + 60 * rounds, mem=256, cpus=cpus,
                               on_stdout=cpu_recorder(marks, cpu, dict(zip(SIDES, servers))),
                               devices=[(s.sock, ID_FS) for s in servers])
    finally:
        for s in servers:
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)
    want = 2 * len(SIDES) * len(fs.PHASES)
    if outcome.status != 0 or len(marks) != want or any(len(v) != rounds for v in marks.values()):
        raise SystemExit(f"bench fs-pairs: the guest failed (status {outcome.status}, marks "
                         f"{len(marks)} of {want}): {outcome.stderr[-500:]!r} {outcome.log[-800:]}")
    def spans(record):
        return {side: {p: [e - s for s, e in zip(record[f"{side} {p}-start"],
                                                 record[f"{side} {p}-end"])]
                       for p in fs.PHASES} for side in SIDES}
    return spans(marks), spans(cpu)


def measure(rounds=4, quick=False, boots=1):
    """Rows for the table (bench/run calls it with its --runs as `rounds`)."""
    if quick:
        rounds, boots = 2, 1
    if not os.access(fs.VIRTIOFSD, os.X_OK):
        raise SystemExit(f"{fs.VIRTIOFSD} is missing (Debian: apt-get install qemu-system-common)")
    kit = bench_kit(fs.git_files())
    out = []
    with tempfile.TemporaryDirectory(prefix="lguest-fsp-", dir="/tmp") as top:
        fs.make_tree(top)
        for label, spec in PLACEMENTS:
            times = {side: {p: [] for p in fs.PHASES} for side in SIDES}
            cpu = {side: {p: [] for p in fs.PHASES} for side in SIDES}
            for b in range(boots):
                cpus = placement.resolve(spec)
                say(f"fs-pairs: boot {b + 1}/{boots} on CPUs "
                    f"{placement.describe(cpus or placement.allowed_cpus())}, "
                    f"{rounds} rounds of every phase on both mounts")
                for into, got in zip((times, cpu), one_boot(kit, top, rounds, cpus)):
                    for side, phases in got.items():
                        for p, ts in phases.items():
                            into[side][p] += ts
            out += rows(times, rounds * boots, label) + cpu_rows(cpu, rounds * boots, label)
    return out


# What each server's process spent on the CPU during its own phases, per unit of the
# phase's work (clock ticks of /proc/PID/stat, summed over the rounds, so a few
# ticks' error at most): at one request in flight the guest waits for all of it.
CPU_ROWS = (("stat", "a path of the stat storm", 5000, 1e6, "us"),
            ("read", "a MiB of the sequential read", 64, 1e6, "us"))


def cpu_rows(cpu, n, label=""):
    out = []
    for phase, what, amount, scale, unit in CPU_ROWS:
        if phase not in cpu["ours"]:
            continue
        per = {side: sum(cpu[side][phase]) / (amount * n) * scale for side in SIDES}
        out.append(Row("fs-pairs", f"server CPU per {what} ({n} rounds){label}", per["ours"],
                       per["ref"], unit, "", higher_is_better=False))
    return out


def rows(times, n, label=""):
    out = []
    for phase, metric, amount, unit, target in fs.SPEC:
        ours, ref = times["ours"][phase], times["ref"][phase]
        # A round's ratio: the reference's time over ours (rates, so higher is better).
        ratios = sorted(r / o for o, r in zip(ours, ref))
        note = (f"{n} rounds, one guest, both mounts; per-round ratios median "
                f"{fmt(statistics.median(ratios))}x, {fmt(ratios[0])}-{fmt(ratios[-1])}x")
        out.append(Row("fs-pairs", f"{metric}, same guest, in turns{label}",
                       amount / statistics.median(ours), amount / statistics.median(ref),
                       unit, target, note))
    return out


if __name__ == "__main__":
    import argparse
    from common import table
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--boots", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print(table(measure(a.rounds, a.quick, a.boots)))
