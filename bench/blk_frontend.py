"""vhost-user-blk without a guest: our Python front-end against ours and qemu-storage-daemon.

    .venv/bin/python bench/blk_frontend.py [--runs 5] [--seconds 2] [--poll-us 0,50]

UML is a one-CPU kernel, so its virtio_blk takes one queue whatever the back-end offers
(bench/blk.py's QD16 row is 16 requests on one queue). Here lguest/vhost_user/frontend.py
is the front-end, and it does use two: both back-ends are separate processes offering
2 queues (ours `--queues=2`, qsd `num-queues=2`) on the same 64 MiB image, warm in the
host page cache; the front-end reads 4 KiB at random offsets, QD1 on one queue, then QD16
as 8 requests in flight on each of 2 queues, a thread per queue, each request answered
before its slot is reused. The front-end is Python and costs more than either back-end,
so the IOPS are a floor and the same for both sides; what differs is the back-end, whose
CPU per request is read from /proc (its whole process tree) around each phase. Runs
rotate over the sides (ours, ours with each --poll-us value, qsd) and reverse every
other run.
"""

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ensure_command, fmt, median, say, table, tree_cpu_seconds, Row, ROOT  # noqa: E402

from lguest.uml import servers  # noqa: E402
from lguest.vhost_user.bench import UncopiedQueue  # noqa: E402
from lguest.vhost_user.frontend import Frontend  # noqa: E402

IMAGE_MB, REQUEST = 64, 4096


def start(which, image, sock, poll_us):
    if which == "qsd":
        argv = [ensure_command("qemu-storage-daemon", ["qemu-system-common"]), "--blockdev",
                f"driver=file,node-name=f0,filename={image},cache.direct=off", "--export",
                "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
                f"addr.path={sock},writable=on,num-queues=2"]
    else:
        argv = [sys.executable, "-m", "lguest", "vhost-user", f"--socket={sock}",
                f"--block={image}", "--queues=2", f"--poll-us={poll_us}"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.wait_for_socket(sock, proc, what=which)
    return proc


class Reader(threading.Thread):
    """Keeps `depth` 4 KiB reads in flight on one queue until the deadline."""

    def __init__(self, fe, queue, depth, deadline, seed):
        super().__init__(daemon=True)
        self.fe, self.queue, self.deadline, self.x = fe, queue, deadline, seed
        self.slots = [fe.allocator.alloc(16 + REQUEST + 1, 4096) for _ in range(depth)]
        self.done, self.error = 0, None

    def submit(self, slot):
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) & (2 ** 64 - 1)
        sector = (self.x >> 24) % (IMAGE_MB << 11) & ~7
        self.fe.memory.write(slot, struct.pack("<IIQ", 0, 0, sector))
        self.queue.ring.add_chain([(slot, 16)], [(slot + 16, REQUEST), (slot + 16 + REQUEST, 1)],
                                  token=slot, indirect=False)

    def run(self):
        ring = self.queue.ring
        try:
            for slot in self.slots:
                self.submit(slot)
            while time.perf_counter() < self.deadline:
                if ring.kick_prepare():
                    self.queue.kick()
                got = ring.collect()
                if not got and ring.enable_cb():
                    if not self.queue.wait_call(10):
                        raise RuntimeError(f"vq {self.queue.index}: no answer in 10 s")
                    got = ring.collect()
                ring.disable_cb()
                for used in got:
                    self.done += 1
                    self.submit(used.token)
            # Let the last requests finish before the session closes.
            if ring.kick_prepare():
                self.queue.kick()
            while ring.outstanding:
                if not ring.collect() and ring.enable_cb() and not self.queue.wait_call(10):
                    raise RuntimeError("requests left unanswered")
        except Exception as e:          # reported by the main thread
            self.error = e


def phase(fe, queues, depth, seconds, pid):
    deadline = time.perf_counter() + seconds
    readers = [Reader(fe, q, depth, deadline, 0x9E3779B97F4A7C15 * (i + 1)) for i, q in enumerate(queues)]
    cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    elapsed, cpu = time.perf_counter() - t0, tree_cpu_seconds(pid) - cpu0
    for r in readers:
        if r.error:
            raise SystemExit(f"bench blk_frontend: {r.error}")
    done = sum(r.done for r in readers)
    return done / elapsed, cpu / done * 1e6


def connect(sock, tries=100):
    """The socket file appears at bind(), a moment before listen(): try again briefly."""
    for attempt in range(tries):
        try:
            return Frontend.connect(sock, regions=((0, 16 << 20),))
        except ConnectionRefusedError:
            if attempt + 1 == tries:
                raise
            time.sleep(0.02)


def one_run(image, which, poll_us, seconds):
    with tempfile.TemporaryDirectory(prefix="lgbf-", dir="/tmp") as d:
        sock = os.path.join(d, "blk.sock")
        proc = start(which, image, sock, poll_us)
        try:
            fe = connect(sock)
            try:
                fe.negotiate()
                fe.set_mem_table()
                queues = [fe.setup_queue(i, 128, ring_class=UncopiedQueue) for i in range(2)]
                qd1 = phase(fe, queues[:1], 1, seconds, proc.pid)
                qd16 = phase(fe, queues, 8, seconds, proc.pid)
            finally:
                fe.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return {"qd1": qd1, "qd16": qd16}


def measure(runs=5, quick=False, seconds=None, variants=()):
    seconds = seconds or (1.0 if quick else 2.0)
    sides = [("ours", 0)] + [(f"ours@{v}", v) for v in variants] + [("qsd", 0)]
    results = {name: [] for name, _ in sides}
    with tempfile.TemporaryDirectory(prefix="lguest-bench-blkfe-", dir="/var/tmp") as d:
        image = os.path.join(d, "bench.img")
        with open(image, "wb") as f:
            for _ in range(IMAGE_MB):
                f.write(os.urandom(1 << 20))
        for i in range(runs):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for which, poll in (order if i % 2 == 0 else order[::-1]):
                say(f"blk_frontend: run {i + 1}/{runs}, {which}")
                results[which].append(one_run(image, which, poll, seconds))
    rows = []
    for name, _ in sides[:-1]:
        label = "ours" if name == "ours" else f"ours --poll-us={name[5:]}"
        for key, what in (("qd1", "QD1, 1 queue"), ("qd16", "QD16, 2 queues x 8")):
            for k, unit, metric in ((0, "IOPS", "rand read 4 KiB"), (1, "us", "back-end CPU per request")):
                vals = {w: [r[key][k] for r in results[w]] for w in (name, "qsd")}
                note = (f"median of {runs}; ours {fmt(min(vals[name]))}-{fmt(max(vals[name]))}, "
                        f"ref {fmt(min(vals['qsd']))}-{fmt(max(vals['qsd']))}")
                rows.append(Row("blk-fe", f"{metric}, {what}, {label}, Python front-end",
                                median(vals[name]), median(vals["qsd"]), unit,
                                ">= 1.0x" if k == 0 and name == "ours" else "", note,
                                higher_is_better=k == 0))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--poll-us", default="", metavar="N,N", help="also ours with --poll-us=N")
    a = p.parse_args()
    print(table(measure(a.runs, seconds=a.seconds,
                        variants=[int(v) for v in a.poll_us.split(",") if v])))
