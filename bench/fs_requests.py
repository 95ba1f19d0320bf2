"""The virtio-fs server's own cost per FUSE request, without a guest or a ring.

Calls FsDevice.serve() -- the parse, the host file operation, the reply packing --
with buffers shaped as Linux's virtiofs driver makes them (the request in one readable
buffer; the out header in a writable buffer of its own, the reply in the next), over a
SharedDirectory of a scratch tree. Prints microseconds per request (the median of
--repeat passes). What it leaves out: the ring (pop/push), the kick and the interrupt;
bench/fs.py measures the whole round trip from a UML guest.

    python bench/fs_requests.py [--files 5000] [--repeat 5] [--profile lookup_cold]
"""

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lguest.devices import fuse_wire as W           # noqa: E402
from lguest.devices.fs import FsDevice              # noqa: E402
from lguest.host.fs import SharedDirectory          # noqa: E402


class Driver:
    """Packs requests as the guest's driver does and hands them to serve()."""

    def __init__(self, path):
        self.fs = SharedDirectory(path, read_only=False)
        self.dev = FsDevice(self.fs, "bench")
        self.counts = self.dev._counts[1]
        self.out_header = memoryview(bytearray(W.OUT_HEADER.size))
        self.out_body = memoryview(bytearray(1 << 17))
        self.writable = [self.out_header, self.out_body]
        self.unique = 0
        self.call(W.INIT, 0, W.INIT_IN.pack(7, 36, 1 << 17, 0xFFFFFFFF) + bytes(48))

    def request(self, opcode, nodeid, args):
        """The readable buffer of one request (built outside the timed loop)."""
        self.unique += 2
        return [memoryview(W.IN_HEADER.pack(W.IN_HEADER.size + len(args), opcode, self.unique,
                                            nodeid, 0, 0, 4242, 0, 0) + args)]

    def send(self, readable, out=True):
        """Serve one prepared request; return (error, reply body)."""
        written = self.dev.serve(readable, self.writable if out else [], self.counts)
        if not written:
            return None, b""
        _, error, _ = W.OUT_HEADER.unpack_from(self.out_header)
        return error, self.out_body[:written - W.OUT_HEADER.size]

    def call(self, opcode, nodeid, args=b"", out=True):
        return self.send(self.request(opcode, nodeid, args), out)


def make_tree(root, files):
    os.mkdir(os.path.join(root, "tree"))
    for i in range(files):
        with open(os.path.join(root, "tree", f"f{i:05}"), "wb") as f:
            f.write(b"x" * 4096)
    os.mkdir(os.path.join(root, "small"))
    for i in range(100):
        open(os.path.join(root, "small", f"entry-{i:03}"), "wb").close()


def node_of(drv, parent, name):
    error, body = drv.call(W.LOOKUP, parent, name + b"\0")
    assert error == 0, (name, error)
    return W.ENTRY_OUT_HEAD.unpack_from(body)[0]


def timed(requests, send):
    """Microseconds per request over the prepared list."""
    t = time.perf_counter()
    for r in requests:
        send(r)
    return (time.perf_counter() - t) / len(requests) * 1e6


def phases(drv, files):
    """{phase: a function of no arguments returning microseconds per request}. Each
    phase leaves the inode table as it found it, so passes repeat."""
    tree = node_of(drv, 1, b"tree")
    small = node_of(drv, 1, b"small")
    names = [f"f{i:05}".encode() for i in range(files)]
    send = drv.send

    def lookups():
        return [drv.request(W.LOOKUP, tree, n + b"\0") for n in names]

    def forget_all(nodes):
        for n in nodes:
            drv.call(W.FORGET, n, W.FORGET_IN.pack(1), out=False)

    def lookup_cold():
        # Every name new to the inode table: a descriptor kept, a node made.
        reqs = lookups()
        us = timed(reqs, send)
        nodes = [node_of(drv, tree, n) for n in names]        # their ids: a second count
        for n in nodes:
            drv.call(W.FORGET, n, W.FORGET_IN.pack(2), out=False)
        return us

    def lookup_warm():
        # Every name already known: the new descriptor closed, the count raised.
        nodes = [node_of(drv, tree, n) for n in names]
        reqs = lookups()
        us = timed(reqs, send)
        for n in nodes:
            drv.call(W.FORGET, n, W.FORGET_IN.pack(2), out=False)
        return us

    def lookup_missing():
        reqs = [drv.request(W.LOOKUP, tree, b"no-" + n + b"\0") for n in names]
        return timed(reqs, send)

    def getattr_():
        nodes = [node_of(drv, tree, n) for n in names]
        reqs = [drv.request(W.GETATTR, n, W.GETATTR_IN.pack(0, 0, 0)) for n in nodes]
        us = timed(reqs, send)
        forget_all(nodes)
        return us

    def forget():
        nodes = [node_of(drv, tree, n) for n in names]
        reqs = [drv.request(W.FORGET, n, W.FORGET_IN.pack(1)) for n in nodes]
        t = time.perf_counter()
        for r in reqs:
            drv.dev.serve(r, [], drv.counts)
        return (time.perf_counter() - t) / len(reqs) * 1e6

    def readdirplus_100():
        # One OPENDIR, READDIRPLUS calls of 4 KiB until the listing ends (each entry
        # a lookup), FORGET of every entry, RELEASEDIR; per READDIRPLUS call.
        rounds, calls, total = 20, 0, 0.0
        for _ in range(rounds):
            _, body = drv.call(W.OPENDIR, small, W.OPEN_IN.pack(0, 0))
            fh = W.OPEN_OUT.unpack_from(body)[0]
            offset, seen = 0, []
            while True:
                req = drv.request(W.READDIRPLUS, small,
                                  W.READ_IN.pack(fh, offset, 4096, 0, 0, 0, 0))
                t = time.perf_counter()
                error, body = send(req)
                total += time.perf_counter() - t
                calls += 1
                assert error == 0, error
                if not body:
                    break
                pos = 0
                while pos < len(body):
                    seen.append(W.ENTRY_OUT_HEAD.unpack_from(body, pos)[0])
                    pos += W.ENTRY_OUT_SIZE
                    ino, offset, namelen, kind = W.DIRENT_HEAD.unpack_from(body, pos)
                    pos += (W.DIRENT_HEAD.size + namelen + 7) & ~7
            forget_all(n for n in seen if n)
            drv.call(W.RELEASEDIR, small, W.RELEASE_IN.pack(fh, 0, 0, 0))
        return total / calls * 1e6

    def open_read_release():
        # OPEN, READ 4 KiB, RELEASE of each file: per request (3 a file).
        nodes = [node_of(drv, tree, n) for n in names[:1000]]
        t = time.perf_counter()
        for n in nodes:
            _, body = drv.call(W.OPEN, n, W.OPEN_IN.pack(os.O_RDONLY, 0))
            fh = W.OPEN_OUT.unpack_from(body)[0]
            error, body = drv.call(W.READ, n, W.READ_IN.pack(fh, 0, 4096, 0, 0, 0, 0))
            assert error == 0 and len(body) == 4096, error
            drv.call(W.RELEASE, n, W.RELEASE_IN.pack(fh, 0, 0, 0))
        us = (time.perf_counter() - t) / (3 * len(nodes)) * 1e6
        forget_all(nodes)
        return us

    return {"lookup_cold": lookup_cold, "lookup_warm": lookup_warm,
            "lookup_missing": lookup_missing, "getattr": getattr_, "forget": forget,
            "readdirplus_100": readdirplus_100, "open_read_release": open_read_release}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--only", nargs="*", help="phases to run")
    p.add_argument("--profile", metavar="PHASE", help="cProfile one pass of PHASE")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fs-requests-") as root:
        make_tree(root, a.files)
        drv = Driver(root)
        table = phases(drv, a.files)
        if a.profile:
            prof = cProfile.Profile()
            prof.runcall(table[a.profile])
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
            return
        print(f"{'request':<20} {'us/request':>10}   (median of {a.repeat}; min)")
        for name, run in table.items():
            if a.only and name not in a.only:
                continue
            runs = [run() for _ in range(a.repeat)]
            print(f"{name:<20} {statistics.median(runs):10.1f}   ({min(runs):.1f})")
        held = len(drv.fs._inodes)
        assert held == 3, f"inode table holds {held} nodes after the passes, want 3"
        drv.dev.close()


if __name__ == "__main__":
    main()
