"""The real /dev/lguest: the protocol, and a guest booted through the launcher.

lguest left Linux in 4.14 and needed a 32-bit x86 host, so on almost every machine
these skip, saying why. On an lguest host they run for real: the first checks the
kernel answers as lguest_user.c does (the same rules the in-process model follows),
the second boots $LGUEST_KERNEL (a 32-bit kernel with CONFIG_LGUEST_GUEST) to its
first console line.
"""

import errno
import os
import subprocess
import sys

import pytest

from lguest.backends.lguest_dev import (DEVICE_PATH, LHREQ_IRQ, LguestBackend, NATIVE_WORD,
                                        pack_words)
from lguest.errors import LauncherError
from lguest.memory import GuestMemory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def need_lguest():
    if not os.path.exists(DEVICE_PATH):
        pytest.skip(f"{DEVICE_PATH} is missing: no lguest module on this host "
                    "(Linux removed lguest in 4.14)")
    if not os.access(DEVICE_PATH, os.R_OK | os.W_OK):
        pytest.skip(f"{DEVICE_PATH} exists but is not readable and writable by us")


def test_the_kernel_speaks_the_protocol_the_model_does():
    need_lguest()
    fd = os.open(DEVICE_PATH, os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            os.pwrite(fd, pack_words([LHREQ_IRQ, 1], NATIVE_WORD), 0)
        assert info.value.errno == errno.EINVAL          # before LHREQ_INITIALIZE
    finally:
        os.close(fd)
    with GuestMemory(16 << 20) as memory, LguestBackend() as backend:
        backend.initialize(memory, 0x100000, mmio_limit=memory.size + (1 << 20))
        assert backend.get_reg("xcs") & 3 == 1
        assert backend.get_reg("eip") == 0x100000
        with pytest.raises(LauncherError, match="Setting register"):
            backend.set_reg("xcs", 0)                     # not settable: ENOENT
        with pytest.raises(LauncherError, match="Triggering irq"):
            backend.interrupt(32)                         # >= LGUEST_IRQS: EINVAL


def test_a_guest_boots_to_its_first_console_line(tmp_path):
    need_lguest()
    kernel = os.environ.get("LGUEST_KERNEL")
    if not kernel or not os.path.exists(kernel):
        pytest.skip("set LGUEST_KERNEL to a 32-bit kernel built with CONFIG_LGUEST_GUEST")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lguest", "--backend=lguest", "--rng", "64", kernel,
         "console=hvc0", "panic=1", "reboot=n"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert b"Linux version" in out, out[-2000:]
