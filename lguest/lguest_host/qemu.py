"""Boot the lguest host under qemu-system-i386 and stream its serial console.

TCG (no KVM needed: the KVM here is PVM, and an lguest host is a 32-bit kernel),
`-cpu coreduo` (with `qemu32` the guests calibrate their delay loop, 1.5 s more each),
`-no-reboot` so the /init's final `reboot -f` ends QEMU, `-nic none` (no network card:
no PXE ROM to wait for). The /init prints `LGUEST-HOST-EXIT <n>` just before, and that
number is what run_host() returns: the host's own exit status does not cross QEMU.
124 (as timeout(1)) when the host took too long and was killed; 1 when QEMU ended
without a report (a host kernel panic: panic=-1 makes it reboot at once, so QEMU exits).
"""

import os
import re
import select
import shutil
import subprocess
import sys
import time

from ..errors import LauncherError

EXIT_MARKER = "LGUEST-HOST-EXIT"
_EXIT_LINE = re.compile(rb"LGUEST-HOST-EXIT (\d+)")
TIMEOUT_STATUS = 124
APPEND = "console=ttyS0 quiet panic=-1"
QEMU = "qemu-system-i386"
AFTER_MARKER_GRACE = 10.0      # seconds QEMU gets to exit on its own after the marker


def qemu_command(initramfs, kernel, mem_mb, extra_qemu_args=(), append=APPEND):
    return [QEMU, "-accel", "tcg", "-cpu", "coreduo", "-m", str(mem_mb), "-nographic",
            "-no-reboot", "-nic", "none", "-kernel", kernel, "-initrd", initramfs, "-append", append,
            *extra_qemu_args]


def _writer(output):
    if callable(output) and not hasattr(output, "write"):
        return output
    buffer = getattr(output, "buffer", None)

    def write(data):
        if buffer is not None:
            buffer.write(data)
        else:
            output.write(data.decode("utf-8", "replace"))
        output.flush()
    return write


def run_host(initramfs, *, kernel=None, mem_mb=512, timeout=1800, output=sys.stdout,
             extra_qemu_args=(), append=APPEND):
    """Boot the host with `initramfs`; return the status its /init reported (124 on
    timeout). `output` is a file-like object or a callable taking bytes."""
    if kernel is None:
        from .kit import host_kernel
        kernel = host_kernel()
    if not shutil.which(QEMU):
        raise LauncherError(f"{QEMU} is missing: install Debian's qemu-system-x86")
    write = _writer(output)
    proc = subprocess.Popen(qemu_command(initramfs, kernel, mem_mb, extra_qemu_args, append),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    status, tail = None, b""
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                write(f"\n{QEMU}: no exit after {timeout:.0f} s; stopping it\n".encode())
                return TIMEOUT_STATUS if status is None else status
            ready, _, _ = select.select([proc.stdout], [], [], min(1.0, deadline - now))
            if not ready:
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            write(data)
            if status is None:
                # The marker may arrive split across reads: look at the tail too.
                found = _EXIT_LINE.search(tail + data)
                if found and (tail + data)[found.end():found.end() + 1] in (b"\r", b"\n"):
                    status = int(found.group(1))
                    deadline = min(deadline, time.monotonic() + AFTER_MARKER_GRACE)
                tail = (tail + data)[-64:]
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if status is None:
        write(f"\n{QEMU} exited ({proc.returncode}) without reporting a status\n".encode())
        return TIMEOUT_STATUS if proc.returncode is None else 1
    return status
