#!/usr/bin/env python3
"""dd on /dev/vda in a UML guest: our vhost-user block back-end next to qemu-storage-daemon's.

    .venv/bin/python bench/uml_dd.py [--size-mb 256] [--rounds 3]

The same guest kernel, the same image file, the same dd, one after the other in one run
(rounds interleaved, so load from elsewhere on the machine hits both alike). Times are
taken on the host from the moments the guest's markers arrive on its stdout stream, so
the guest's own clock (UML's) is not trusted. O_DIRECT in the guest keeps its page cache
out of it; the host's page cache is warm for both (the file is read once first).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lguest.uml import kit  # noqa: E402
from lguest.uml.guest import Guest  # noqa: E402

SCRIPT = ("echo start; dd if=/dev/vda of=/dev/null bs=1M iflag=direct 2>/dev/null; echo read; "
          "dd if=/dev/zero of=/dev/vda bs=1M count={count} oflag=direct conv=fsync 2>/dev/null;"
          " echo written")


def one_run(the_kit, image, backend, size_mb):
    marks = {}

    def stamp(data):
        now = time.monotonic()
        for word in data.decode().split():
            marks.setdefault(word, now)

    r = Guest(block=[image], backend=backend, kit=the_kit, timeout=300, root="initramfs").run(
        SCRIPT.format(count=size_mb // 2), on_stdout=stamp)
    if r.returncode != 0 or set(marks) != {"start", "read", "written"}:
        raise SystemExit(f"{backend}: run failed: {r}")
    read = size_mb / (marks["read"] - marks["start"])
    write = (size_mb // 2) / (marks["written"] - marks["read"])
    return read, write


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    the_kit = kit.ensure_kit()
    results = {"lguest": [], "qsd": []}
    with tempfile.TemporaryDirectory(prefix="lguest-dd-", dir="/tmp") as d:
        image = os.path.join(d, "bench.img")
        with open(image, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(args.size_mb):
                f.write(chunk)
        for _ in range(args.rounds):
            for backend in results:
                results[backend].append(one_run(the_kit, image, backend, args.size_mb))
    print(f"guest dd on /dev/vda, {args.size_mb} MiB read / {args.size_mb // 2} MiB write, "
          f"O_DIRECT, bs=1M, median of {args.rounds} (MB/s):")
    for backend, runs in results.items():
        read = statistics.median(r for r, _ in runs)
        write = statistics.median(w for _, w in runs)
        name = {"lguest": "lguest vhost-user", "qsd": "qemu-storage-daemon"}[backend]
        print(f"  {name:22} read {read:8.1f}   write {write:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
