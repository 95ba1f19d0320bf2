#!/usr/bin/env python3
"""What `lguest run -- true` costs over a plain UML boot, measured in one run.

    .venv/bin/python bench/uml_boot.py [--rounds 5]

plain:   linux.uml with a two-entry initramfs whose /init is `poweroff -f`
library: lguest.Guest().run("true") in this process (kit cached)
cli:     `python -m lguest run -- true` as a new process (Python start-up included)
Rounds are interleaved so load from elsewhere on the machine hits all three alike.
"""

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lguest.uml import archive, kit  # noqa: E402
from lguest.uml.guest import Guest  # noqa: E402


def plain_initramfs(path, busybox):
    w = archive.CpioWriter()
    w.char_device("dev/console", 5, 1)
    with open(busybox, "rb") as f:
        w.file("bin/busybox", f.read(), perm=0o755)
    w.file("init", b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n", perm=0o755)
    with open(path, "wb") as f:
        f.write(archive.gzip_bytes(w.finish()))


def timed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    the_kit = kit.ensure_kit()
    busybox = glob.glob(os.path.join(kit.cache_dir(), "unpacked", "busybox-static_*",
                                     "bin", "busybox"))[0]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="lguest-boot-", dir="/tmp") as d:
        initrd = os.path.join(d, "plain.cpio.gz")
        plain_initramfs(initrd, busybox)
        plain_argv = [the_kit.kernel, "mem=64M", f"initrd={initrd}", "rdinit=/init",
                      "con=null", "con0=null,fd:1", "quiet", f"uml_dir={d}", "umid=plain"]
        runs = {
            "plain UML boot": lambda: subprocess.run(plain_argv, stdout=subprocess.DEVNULL,
                                                     check=True),
            "Guest().run('true')": lambda: Guest(kit=the_kit, root="initramfs").run("true"),
            "lguest run --root=initramfs -- true": lambda: subprocess.run(
                [sys.executable, "-m", "lguest", "run", "--root=initramfs", "--", "true"],
                check=True, cwd=root),
            "lguest run -- true (host root)": lambda: subprocess.run(
                [sys.executable, "-m", "lguest", "run", "--", "true"], check=True, cwd=root),
        }
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                times[name].append(timed(fn))
    print(f"median of {args.rounds} (seconds):")
    for name, values in times.items():
        print(f"  {name:36} {statistics.median(values):6.2f}   "
              f"(min {min(values):.2f}, max {max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
