"""Crash consistency: a front-end writes numbered blocks, flushing after each batch,
while the vhost-user block back-end (a real process of its own) is killed with SIGKILL
at a random moment. Afterwards every block whose flush was acknowledged is on disk,
intact (that version or a later one submitted after it), nothing on disk is garbage,
and the image has not grown.

The back-end processes are forked from one "zygote" interpreter that imported lguest
once, so a run costs a fork rather than an interpreter start. `campaign()` is shared
with scripts/crash-campaign, which runs many more."""

import hashlib
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from lguest.vhost_user.frontend import Frontend, FrontendError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 4096                  # one numbered block: 8 sectors
BLOCKS = 64                   # a 256 KiB image
SECTOR = 512
T_OUT, T_FLUSH = 1, 4
CI_RUNS = 50

ZYGOTE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from lguest.vhost_user import served as devices
from lguest.vhost_user.server import VhostUserServer
for line in sys.stdin:
    while True:                       # reap the children the parent has finished with
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    sock, img = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            VhostUserServer(devices.block(img).backend(), sock).serve_forever()
        finally:
            os._exit(0)
    print(pid, flush=True)
"""


class Zygote:
    """A Python process that forks vhost-user block back-ends on request."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, ROOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def spawn(self, sock_path, image):
        self.proc.stdin.write(f"{sock_path} {image}\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        # A pidfd pins the process: the zygote reaps it only after our next request.
        return os.pidfd_open(pid)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


def block_bytes(run, block, version):
    """A block that names itself: run, block number, version, and a digest of those."""
    head = struct.pack("<QQQ", run, block, version)
    body = hashlib.sha256(head).digest() * ((BLOCK - len(head)) // 32 + 1)
    return (head + body)[:BLOCK]


def parse_block(data):
    run, block, version = struct.unpack_from("<QQQ", data)
    return run, block, version


class BackendDied(Exception):
    pass


def _wait(fe, queue, count, deadline):
    """Collect `count` used buffers; BackendDied as soon as the back-end's socket closes."""
    got = []
    while len(got) < count:
        got += queue.ring.collect()
        if len(got) >= count:
            break
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise AssertionError("back-end alive but silent: a hang")
        ready, _, _ = select.select([queue.call_fd, fe.sock], [], [], min(timeout, 0.5))
        if fe.sock in ready:
            got += queue.ring.collect()
            if len(got) >= count:
                break
            raise BackendDied()
        if queue.call_fd in ready:
            queue.drain_calls()
    return got


def one_run(zygote, workdir, run, rng, kill_within=0.12):
    """One crash: returns (acknowledged blocks checked, losses, submitted writes)."""
    image = os.path.join(workdir, f"crash{run % 4}.img")
    with open(image, "wb") as f:
        f.write(bytes(BLOCK * BLOCKS))
    sock_path = os.path.join(workdir, f"crash{run % 4}.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    pidfd = zygote.spawn(sock_path, image)
    acked = {}          # block -> last version whose flush was acknowledged
    submitted = {}      # block -> every version ever submitted
    killer = threading.Timer(rng.uniform(0, kill_within),
                             lambda: signal.pidfd_send_signal(pidfd, signal.SIGKILL))
    fe = None
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock_path):
            if time.monotonic() > deadline:
                raise AssertionError("back-end never listened")
            time.sleep(0.002)
        killer.start()
        try:
            fe = Frontend.connect(sock_path, regions=((0, 1 << 20),))
            fe.negotiate()
            fe.set_mem_table()
            queue = fe.setup_queue(0, 64)
            version = 0
            for _ in range(10_000):
                batch = []
                for _ in range(rng.randint(1, 6)):
                    block = rng.randrange(BLOCKS)
                    version += 1
                    submitted.setdefault(block, set()).add(version)
                    header = struct.pack("<IIQ", T_OUT, 0, block * BLOCK // SECTOR)
                    queue.ring.add_buffer([header, block_bytes(run, block, version)], [1])
                    batch.append((block, version))
                queue.kick()
                used = _wait(fe, queue, len(batch), time.monotonic() + 10)
                assert all(u.data == b"\0" for u in used), [u.data for u in used]
                queue.ring.add_buffer([struct.pack("<IIQ", T_FLUSH, 0, 0)], [1])
                queue.kick()
                (flushed,) = _wait(fe, queue, 1, time.monotonic() + 10)
                assert flushed.data == b"\0"
                for block, v in batch:        # acknowledged: written, then flushed
                    acked[block] = max(v, acked.get(block, 0))
        except (BackendDied, FrontendError, ConnectionError, BrokenPipeError):
            pass
    finally:
        killer.cancel()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL) if _alive(pidfd) else None
        select.select([pidfd], [], [], 5)          # readable once it has died
        os.close(pidfd)
        if fe is not None:
            fe.close()
    return check_image(image, run, acked, submitted)


def _alive(pidfd):
    return not select.select([pidfd], [], [], 0)[0]


def check_image(image, run, acked, submitted):
    with open(image, "rb") as f:
        data = f.read()
    assert len(data) == BLOCK * BLOCKS, "the image changed size"
    losses = []
    for block in range(BLOCKS):
        got = data[block * BLOCK:(block + 1) * BLOCK]
        if got == bytes(BLOCK):
            version = 0
        else:
            r, b, version = parse_block(got)
            # Never garbage: a whole block we submitted for this very place.
            assert (r, b) == (run, block) and got == block_bytes(run, block, version), \
                f"block {block} holds bytes nobody wrote there"
            assert version in submitted.get(block, ()), f"block {block}: unknown version"
        if block in acked and version < acked[block]:
            losses.append((block, acked[block], version))
    return len(acked), losses, sum(len(v) for v in submitted.values())


def campaign(runs, workdir, seed=0, report=None):
    rng = random.Random(seed)
    zygote = Zygote()
    totals = {"runs": 0, "acknowledged_blocks_checked": 0, "losses": 0, "writes": 0}
    try:
        for run in range(runs):
            checked, losses, writes = one_run(zygote, workdir, run, rng)
            totals["runs"] += 1
            totals["acknowledged_blocks_checked"] += checked
            totals["losses"] += len(losses)
            totals["writes"] += writes
            if losses and report:
                report(f"run {run} (seed {seed}): lost {losses}")
    finally:
        zygote.close()
    return totals


def test_acknowledged_flushes_survive_sigkill_of_the_backend(tmp_path):
    short = f"/tmp/crash-{os.getpid()}"          # unix socket paths must stay short
    os.makedirs(short, exist_ok=True)
    try:
        totals = campaign(CI_RUNS, short, seed=int(os.environ.get("CRASH_SEED", "1")))
    finally:
        for name in os.listdir(short):
            os.unlink(os.path.join(short, name))
        os.rmdir(short)
    print(totals)
    assert totals["runs"] == CI_RUNS
    # The campaign must have had something to lose, or it proves nothing.
    assert totals["acknowledged_blocks_checked"] > CI_RUNS
    assert totals["losses"] == 0


def test_the_check_itself_sees_a_lost_block(tmp_path):
    """check_image() is what could fail: an acknowledged version missing is a loss,
    and a block of someone else's bytes is refused."""
    image = tmp_path / "img"
    data = bytearray(BLOCK * BLOCKS)
    data[BLOCK:2 * BLOCK] = block_bytes(7, 1, 3)
    image.write_bytes(data)
    checked, losses, _ = check_image(str(image), 7, {1: 5, 2: 1}, {1: {3, 5}, 2: {1}})
    assert checked == 2 and losses == [(1, 5, 3), (2, 1, 0)]
    data[2 * BLOCK:3 * BLOCK] = block_bytes(7, 1, 3)          # block 1's bytes at block 2
    image.write_bytes(data)
    try:
        check_image(str(image), 7, {}, {1: {3}})
    except AssertionError as e:
        assert "nobody wrote" in str(e)
    else:
        raise AssertionError("misplaced block accepted")
