"""In-process block throughput of the vhost-user back-end, driven by our front-end.

    python -m lguest.vhost_user.bench [--size-mb 64] [--seconds 2] [--depth 8]

#L:780 What a request costs us, without a guest: the Python front-end (L:750) keeps
# `depth` requests in flight on one ring, the back-end serves them on its kick thread
# straight into os.preadv/os.pwritev on the shared memfd, and we count bytes and
# requests per second for 1 MiB and 4 KiB requests. Both sides are Python on the same
# 2 cores, so this is a floor for the back-end, not a ceiling; the guest-side dd through
# UML next to qemu-storage-daemon is the comparison that matters (bench/uml_dd.py).
"""

import argparse
import os
import socket
import struct
import tempfile
import threading
import time

from ..devices.block import BlockDevice
from ..driver.vring import DriverQueue
from ..host.block import FileStore
from .backend import VhostUserTransport
from .frontend import Frontend
from .server import serve_connection

T_IN, T_OUT = 0, 1


class UncopiedQueue(DriverQueue):
    """The driver's ring without the copy of each answer into bytes: a real driver
    reads its buffers in place, and we measure the back-end, not that copy."""

    def _gather(self, writable, length):
        return b""


def run(path, request_size, seconds, depth, write=False):
    """Requests per second and MB/s for `request_size` reads (or writes) of `path`."""
    store = FileStore(path)
    ours, theirs = socket.socketpair()
    backend = VhostUserTransport(BlockDevice(store))
    server = threading.Thread(target=serve_connection, args=(backend, theirs), daemon=True)
    server.start()
    fe = Frontend(ours, regions=((0, 64 << 20),))
    try:
        fe.negotiate()
        fe.set_mem_table()
        queue = fe.setup_queue(0, 256, ring_class=UncopiedQueue)
        slots = _prepare(fe, depth, request_size, write)
        sectors = store.size // 512 - request_size // 512
        done, deadline = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        for n, slot in enumerate(slots):
            _submit(fe, queue, slot, (n * request_size // 512) % sectors)
        while time.perf_counter() < deadline:
            for used in queue.ring_wait():
                done += 1
                _submit(fe, queue, used.token, (done * request_size // 512) % sectors)
        elapsed = time.perf_counter() - start
    finally:
        fe.close()
        server.join(5)
        store.close()
    return done / elapsed, done * request_size / elapsed / 1e6


def _prepare(fe, depth, size, write):
    slots = []
    for _ in range(depth):
        header = fe.allocator.alloc(16, 16)
        data = fe.allocator.alloc(size, 4096)
        status = fe.allocator.alloc(1, 1)
        slots.append((header, data, status, size, T_OUT if write else T_IN))
    return slots


def _submit(fe, queue, slot, sector):
    header, data, status, size, kind = slot
    fe.memory.write(header, struct.pack("<IIQ", kind, 0, sector))
    if kind == T_OUT:
        queue.ring.add_chain([(header, 16), (data, size)], [(status, 1)], token=slot)
    else:
        queue.ring.add_chain([(header, 16)], [(data, size), (status, 1)], token=slot)
    if queue.ring.kick_prepare():
        queue.kick()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lguest.vhost_user.bench")
    p.add_argument("--size-mb", type=int, default=64)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--depth", type=int, default=8)
    args = p.parse_args(argv)
    with tempfile.NamedTemporaryFile(prefix="vhu-bench-") as image:
        image.truncate(args.size_mb << 20)
        os.posix_fadvise(image.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
        for label, size, write in (("1 MiB read", 1 << 20, False), ("1 MiB write", 1 << 20, True),
                                   ("4 KiB read", 4096, False), ("4 KiB write", 4096, True)):
            iops, mbs = run(image.name, size, args.seconds, args.depth, write)
            print(f"{label:12s} {mbs:9.1f} MB/s {iops:10.0f} requests/s (depth {args.depth})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
