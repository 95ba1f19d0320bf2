"""vhost-user-blk, both back-ends in one UML guest: random reads in alternating slices.

    .venv/bin/python bench/blk_pairs.py [--boots 2] [--pairs 8] [--slice-s 1.0] [--quick]

bench/blk.py boots a fresh guest per back-end and run; on this machine the hypervisor's
steal changes from one minute to the next (bench/RESULTS.md), so two runs a minute apart
can differ 5x for either side, and a QD1 ratio from them says more about the minute than
about the back-ends. Here one guest has two virtio disks, one served by ours (`python -m
lguest vhost-user --block`) and one by qemu-storage-daemon, each its own host process
with 2 queues offered, on two copies of one image warm in the host's page cache.
`blkbench pairs` (bench/blkbench.c) reads 4 KiB at random offsets from one disk at a time, in slices of a
second, A B B A ..., at QD1 and then at QD16: each pair of slices is a second or two of
the same machine, guest and kernel. Which back-end is vda alternates per boot (the disks
differ in size by 1 MiB so the guest's report says which is which). `--cpus one` puts
the guest and both back-ends on one CPU, as `lguest run` places a guest and its own
back-ends (lguest/uml/placement.py); by default they are the scheduler's. The IOPS are the
ops over the time of all a side's slices; the note gives the median and spread of the
per-pair ratios; CPU per request is each back-end process tree's, around its slices.
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_kit, compile_c, fmt, say, tree_cpu_seconds, Row  # noqa: E402

import blk  # noqa: E402

from lguest import virtio  # noqa: E402
from lguest.uml import placement, process  # noqa: E402

QD = blk.QD
IMAGE_MB = 128


class Slices:
    """The guest's slice lines, and each back-end's CPU seconds around them."""

    def __init__(self, pids_by_dev):
        self.pids_by_dev = pids_by_dev     # {"A": pid, "B": pid} once the guest says
        self.pending = bytearray()
        self.sizes = None                  # the guest's sizes line, in 512-byte sectors
        self.done = []                     # (dev, depth, ops, ns, cpu seconds)
        self._cpu_at_start = None

    def feed(self, data):
        self.pending.extend(data)
        while b"\n" in self.pending:
            line, _, rest = bytes(self.pending).partition(b"\n")
            self.pending[:] = rest
            self.line(line.decode(errors="replace").split())

    def line(self, words):
        if words[:1] == ["sizes"] and len(words) == 3:
            self.sizes = [int(w) for w in words[1:]]
        elif words[:1] == ["s"] and len(words) == 3:
            self._cpu_at_start = self.cpu(words[1])
        elif words[:1] == ["e"] and len(words) == 5 and self._cpu_at_start is not None:
            dev, depth, ops, ns = words[1], int(words[2]), int(words[3]), int(words[4])
            self.done.append((dev, depth, ops, ns, self.cpu(dev) - self._cpu_at_start))
            self._cpu_at_start = None

    def cpu(self, dev):
        pid = self.pids_by_dev(self.sizes).get(dev) if self.sizes else None
        return tree_cpu_seconds(pid) if pid else 0.0


def one_boot(kit, images, ours_first, pairs, slice_s, timeout, poll_us=None, cpus=None):
    """[(side, depth, ops, ns, cpu)] for one guest, side 'ours' or 'qsd'; cpus: where
    the guest and both back-ends run (None: anywhere)."""
    with tempfile.TemporaryDirectory(prefix="lgb-", dir="/tmp") as workdir:
        socks = {side: os.path.join(workdir, f"{side}.sock") for side in ("ours", "qsd")}
        procs = {}
        try:
            for side in ("ours", "qsd"):
                procs[side] = blk.start_backend(side, images[side], socks[side],
                                                 poll_us if side == "ours" else None, cpus)
            order = ["ours", "qsd"] if ours_first else ["qsd", "ours"]
            # ours' image is 1 MiB larger: the guest's sizes say which disk is whose.
            def pids_by_dev(sizes):
                a_is_ours = sizes[0] > sizes[1]
                return {"A": procs["ours" if a_is_ours else "qsd"].pid,
                        "B": procs["qsd" if a_is_ours else "ours"].pid}

            slices = Slices(pids_by_dev)
            command = ("echo sizes $(cat /sys/block/vda/size) $(cat /sys/block/vdb/size); "
                       f"/bin/blkbench pairs /dev/vda /dev/vdb {slice_s} {pairs} {QD}")
            outcome = process.boot(kit, command, workdir, timeout=timeout, cpus=cpus,
                                   on_stdout=slices.feed, wait=["vda", "vdb"],
                                   devices=[(socks[s], virtio.ID_BLOCK) for s in order])
        finally:
            errs = {side: blk.stop_backend(p) for side, p in procs.items()}
    expected = pairs * 2 * 2
    if outcome.status != 0 or len(slices.done) != expected or not slices.sizes:
        raise SystemExit(f"bench blk-pairs: the guest failed (status {outcome.status}, "
                         f"{len(slices.done)} of {expected} slices):\n"
                         f"{bytes(outcome.stderr).decode()}\n{outcome.log[-1500:]}\n{errs}")
    a_is_ours = slices.sizes[0] > slices.sizes[1]
    side_of = {"A": "ours" if a_is_ours else "qsd", "B": "qsd" if a_is_ours else "ours"}
    return [(side_of[dev], depth, ops, ns, cpu) for dev, depth, ops, ns, cpu in slices.done]


def measure(pairs=8, quick=False, boots=2, slice_s=1.0, timeout=300, poll_us=None,
            cpus=placement.ALL):
    """Rows for the table (bench/run calls it with its --runs as `pairs`)."""
    if quick:
        boots, pairs, slice_s = 1, 4, 0.5
    kit = bench_kit({"bin/blkbench": compile_c("blkbench.c", static=True)})
    results = []
    with tempfile.TemporaryDirectory(prefix="lguest-bench-blkab-", dir="/var/tmp") as d:
        images = {"ours": os.path.join(d, "ours.img"), "qsd": os.path.join(d, "qsd.img")}
        chunk = os.urandom(1 << 20)
        for side, mb in (("ours", IMAGE_MB + 1), ("qsd", IMAGE_MB)):
            with open(images[side], "wb") as f:
                for _ in range(mb):
                    f.write(chunk)
        for i in range(boots):
            say(f"blk-pairs: boot {i + 1}/{boots}, {pairs} pairs of {slice_s} s slices, "
                f"{'ours' if i % 2 == 0 else 'qsd'} as vda")
            started = time.monotonic()
            results += one_boot(kit, images, i % 2 == 0, pairs, slice_s, timeout, poll_us,
                                placement.resolve(cpus))
            say(f"blk-pairs: boot {i + 1} took {time.monotonic() - started:.1f} s")
    return rows_of(results, boots, pairs, slice_s,
                   ", one CPU shared (lguest run's placement)" if cpus == placement.ONE else "")


def rows_of(results, boots, pairs, slice_s, where=""):
    """where: what the rows add to their metric for a placement other than the default."""
    rows = []
    for depth in (1, QD):
        mine = [r for r in results if r[1] == depth]
        ours = [r for r in mine if r[0] == "ours"]
        qsd = [r for r in mine if r[0] == "qsd"]
        iops = lambda rs: sum(r[2] for r in rs) / (sum(r[3] for r in rs) / 1e9)   # noqa: E731
        cpu_us = lambda rs: sum(r[4] for r in rs) / sum(r[2] for r in rs) * 1e6   # noqa: E731
        # The k-th slice of ours and of qsd are the two halves of the k-th pair.
        ratios = sorted((o[2] / o[3]) / (q[2] / q[3]) for o, q in zip(ours, qsd))
        note = (f"{boots} boot(s) x {pairs} ABBA pairs of {slice_s} s slices, one guest; "
                f"per-pair ratios median {fmt(statistics.median(ratios))}x, "
                f"{fmt(ratios[0])}-{fmt(ratios[-1])}x")
        label = "1 thread" if depth == 1 else f"{depth} threads, 2 queues offered"
        rows.append(Row("blk-pairs", f"rand read 4 KiB O_DIRECT, QD{depth} ({label}), same "
                        f"guest, alternating slices{where}", iops(ours), iops(qsd), "IOPS",
                        ">= 1.0x", note))
        rows.append(Row("blk-pairs", f"back-end CPU per request, QD{depth}, same slices{where}",
                        cpu_us(ours), cpu_us(qsd), "us", "", higher_is_better=False))
    return rows


if __name__ == "__main__":
    import argparse
    from common import table
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boots", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--slice-s", type=float, default=1.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--poll-us", type=int, help="pass --poll-us=N to our back-end")
    p.add_argument("--cpus", choices=(placement.ALL, placement.ONE), default=placement.ALL,
                   help="one: the guest and both back-ends on one CPU, as lguest run places them")
    a = p.parse_args()
    print(table(measure(a.pairs, a.quick, a.boots, a.slice_s, poll_us=a.poll_us, cpus=a.cpus)))
