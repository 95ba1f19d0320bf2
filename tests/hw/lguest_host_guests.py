"""Guests for the lguest-host suite: a busybox initrd per case, and a launcher run to watch.

These tests run inside a real lguest host (scripts/lguest-host boots one under QEMU):
/dev/lguest is the kernel's, the guest kernel is $LGUEST_KERNEL (the host's own bzImage,
which has CONFIG_LGUEST_GUEST) and $LGUEST_VMLINUX its ELF twin. Each guest's userspace
is the host's static busybox and a small /init written here, packed at run time into a
cpio initrd for --initrd. A guest boot costs about 45 s under TCG, so each boot does many
checks and prints one `KEY:value` line per result; several tests then read them.
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from lguest.backends.lguest_dev import DEVICE_PATH
from lguest.uml import archive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUSYBOX = os.environ.get("LGUEST_BUSYBOX", "/bin/busybox")
# 32 MiB was too little: in about 1 boot in 3 of test_lguest_host_devices' guest (7 of 22
# here, with our launcher; 0 of 6 with the seed's C launcher) its new processes died of
# SIGSEGV or could not fork ("Cannot allocate memory") by the rule-break step, after the
# block, rng and net phases. With 64 MiB, 0 of 6 (docs/lguest-host.md).
GUEST_MEM_MB = "64"
# hvc0 is the virtio console; quiet keeps the kernel's boot lines off it.
GUEST_ARGS = ("console=hvc0", "rdinit=/init", "quiet")
BOOT_TIMEOUT = 300           # seconds for one guest to get where a test waits for it

PRELUDE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""


def need_real_lguest(*env):
    """Skip, saying why, unless this is a real lguest host with the guest kernels."""
    if not os.path.exists(DEVICE_PATH):
        pytest.skip(f"{DEVICE_PATH} is missing: not a real lguest host "
                    "(scripts/lguest-host runs these inside one)")
    for name in ("LGUEST_KERNEL",) + env:
        path = os.environ.get(name)
        if not path or not os.path.isfile(path):
            pytest.skip(f"${name} does not name a kernel built with CONFIG_LGUEST_GUEST")
    if not os.path.isfile(BUSYBOX):
        pytest.skip(f"no static busybox at {BUSYBOX} for the guests' userspace")


def guest_initrd(path, script):
    """Write a gzip'd cpio initrd: busybox and an /init running `script` after mounts."""
    cpio = archive.busybox_image(BUSYBOX, archive.BUSYBOX_DIRS + ("mnt",))
    cpio.file("init", (PRELUDE + script).encode(), perm=0o755)
    with open(path, "wb") as f:
        f.write(archive.gzip_bytes(cpio.finish()))
    return str(path)


def launcher_args(*options, kernel=None, mem=GUEST_MEM_MB, extra=()):
    return ["--backend=lguest", *options, mem, kernel or os.environ["LGUEST_KERNEL"],
            *GUEST_ARGS, *extra]


class Launcher:
    """`python -m lguest ARGS` with its console on pipes; lines are kept as they come."""

    def __init__(self, args, cwd=ROOT):
        self.args = list(args)
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "lguest", *self.args], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines = []                  # (seconds since start, text) of stdout
        self.err = b""
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._readers:
            t.start()

    @property
    def pid(self):
        return self.proc.pid

    def _read_out(self):
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._changed:
                self.lines.append((time.monotonic() - self.started, text))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_err(self):
        self.err = self.proc.stderr.read()

    @property
    def out(self):
        with self._changed:
            return "\n".join(text for _, text in self.lines)

    def count(self, text):
        with self._changed:
            return sum(text in line for _, line in self.lines)

    def wait_for(self, text, times=1, timeout=BOOT_TIMEOUT):
        """Wait until `text` has appeared on `times` lines; False if it did not in time
        or the launcher exited first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for _, line in self.lines) < times:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers[0].is_alive()):
                    return False
                self._changed.wait(min(left, 1.0))
            return True

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def finish(self, timeout=BOOT_TIMEOUT):
        """Wait for the launcher to exit (killing it after `timeout`); its status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        self.ended = time.monotonic() - self.started
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        return self.proc.returncode

    def value(self, key):
        """The value of the guest's last `KEY:value` line, or None."""
        found = None
        for _, line in list(self.lines):
            m = re.search(re.escape(key) + r":(.*)$", line)
            if m:
                found = m.group(1).strip()
        return found

    def report(self):
        return (f"launcher {self.args} exit {self.proc.returncode}\n--- stdout\n{self.out[-3000:]}"
                f"\n--- stderr\n{self.err.decode('utf-8', 'replace')[-2000:]}")
