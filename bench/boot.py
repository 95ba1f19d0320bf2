"""Boot: `lguest run -- true` end to end next to a plain linux.uml boot (bench/uml_boot.py).

plain: linux.uml with uml_boot.py's two-entry initramfs whose /init is `poweroff -f`, no
devices; ours: `python -m lguest run -- true` as a new process, Python start-up, kit
lookup, the full /init (module loading) and exit-status reporting included. Rounds
alternate. Also the launcher's RSS (peak, sampled) for the memory section: that of
`lguest run --block IMG -- sleep 1`, guest RAM left out.
"""

import os
import subprocess
import sys
import tempfile
import time

from common import ROOT, busybox_path, median, say, Row
from blk import Sampler
from uml_boot import plain_initramfs

from lguest.uml import kit as kit_module


def timed(argv, **kw):
    start = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, timeout=60, **kw)
    return time.monotonic() - start


def launcher_rss(image):
    """Peak KiB of `lguest run --block IMG -- sleep 1`, without the guest's RAM."""
    with tempfile.TemporaryDirectory(prefix="lgr-", dir="/tmp") as d:
        env = dict(os.environ, TMPDIR=d)
        proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", f"--block={image}",
                                 "--timeout=60", "--", "sh", "-c", "dd if=/dev/vda of=/dev/null bs=1M "
                                 "2>/dev/null; sleep 1"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL)
        sampler = Sampler(proc.pid, exclude=(d, "vm_file"))
        sampler.start()
        proc.wait(timeout=90)
        return sampler.stop()


def measure(runs=5, quick=False):
    the_kit = kit_module.ensure_kit()
    with tempfile.TemporaryDirectory(prefix="lguest-boot-", dir="/tmp") as d:
        initrd = os.path.join(d, "plain.cpio.gz")
        plain_initramfs(initrd, busybox_path())
        plain = [the_kit.kernel, "mem=64M", f"initrd={initrd}", "rdinit=/init", "con=null",
                 "con0=null,fd:1", "quiet", f"uml_dir={d}", "umid=plain"]
        ours = [sys.executable, "-m", "lguest", "run", "--timeout=60", "--", "true"]
        times = {"plain": [], "ours": []}
        timed(ours, cwd=ROOT)                       # warm the page cache and the kit
        for i in range(runs):
            say(f"boot: run {i + 1}/{runs}")
            times["plain"].append(timed(plain, env=dict(os.environ, TMPDIR=d)))
            times["ours"].append(timed(ours, cwd=ROOT))
        image = os.path.join(d, "small.img")
        with open(image, "wb") as f:
            f.truncate(16 << 20)
        rss = launcher_rss(image)
    note = f"median of {runs}"
    rows = [Row("boot", "`lguest run -- true` vs plain linux.uml boot+poweroff",
                median(times["ours"]), median(times["plain"]), "s", "<= 1.3x", note,
                higher_is_better=False)]
    return rows, rss
