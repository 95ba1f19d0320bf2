"""cProfile of our vhost-user-blk back-end's ring thread while a UML guest runs blkbench.

    .venv/bin/python bench/profile_blk.py [READ_MB WRITE_MB RAND_S FLUSH_S]

The back-end runs in this process (as `lguest run` has it); each ring thread's kick
loop runs under its own cProfile.Profile, and the stats of all of them are printed,
sorted by internal time. Used to find what to optimise (see RESULTS.md).
"""

import cProfile
import os
import pstats
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_kit, compile_c  # noqa: E402

from lguest import virtio  # noqa: E402
from lguest.uml import process  # noqa: E402
from lguest.vhost_user import rings, served as devices  # noqa: E402
from lguest.vhost_user.server import VhostUserServer  # noqa: E402

profiles = []
_run = rings.KickWatcher._run


def profiled_run(self):
    prof = cProfile.Profile()
    profiles.append(prof)
    prof.runcall(_run, self)


def main(argv):
    sizes = argv or ["512", "256", "2", "0.5"]
    rings.KickWatcher._run = profiled_run
    kit = bench_kit({"bin/blkbench": compile_c("blkbench.c", static=True)})
    with tempfile.TemporaryDirectory(prefix="lgp-", dir="/var/tmp") as d:
        image = os.path.join(d, "p.img")
        with open(image, "wb") as f:
            for _ in range(128):
                f.write(os.urandom(1 << 20))
        served = devices.block(image)
        sock = os.path.join(d, "b.sock")
        server = VhostUserServer(served.backend(), sock)
        server.serve_in_thread()
        try:
            out = process.boot(kit, "/bin/blkbench /dev/vda " + " ".join(sizes), d, timeout=120,
                               on_stdout=lambda b: sys.stdout.write(b.decode()),
                               devices=[(sock, virtio.ID_BLOCK)], wait=["vda"])
        finally:
            server.close()
            server.backend.close()
            served.close()
        print("status", out.status)
    stats = None
    for prof in profiles:
        if stats is None:
            stats = pstats.Stats(prof)
        else:
            stats.add(prof)
    stats.sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main(sys.argv[1:])
