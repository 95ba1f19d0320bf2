"""Device back-ends for a UML guest: what listens on the sockets virtio_uml connects to.

#L:860 Each virtio device a UML guest sees is one vhost-user socket, and something must
# be listening on it before UML boots (virtio_uml connects once, at boot, and a device
# whose socket is not there simply does not appear). A server here is a context manager
# with `.devices`: the (socket path, virtio device id) pairs for UML's command line (ids
# from the virtio spec, 5 "Device Types": 1 network card, 2 block device, 3 console).
# Ours is in L:861; qemu-storage-daemon's vhost-user-blk export is the reference we
# measure our block device against (bench/uml_dd.py).
"""

import os
import shutil
import subprocess
import time

from ..config import parse_block
from ..errors import LauncherError
from ..virtio import ID_BLOCK


def wait_for_socket(path, proc=None, timeout=10.0, what="back-end"):
    """Wait until a unix socket exists at path (or the process serving it died)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise LauncherError(f"{what} exited with status {proc.returncode} before "
                                f"listening on {path}")
        if time.monotonic() > deadline:
            raise LauncherError(f"{what} did not create {path} within {timeout:.0f} s")
        time.sleep(0.005)


def parse_block_spec(spec):
    """'disk.img' or 'disk.img,ro' -> (path, read_only): L:952's syntax, and the file
    must be there now (virtio_uml connects once, at boot)."""
    path, read_only = parse_block(spec)
    if not os.path.isfile(path):
        raise LauncherError(f"--block {spec}: {path} is not a file")
    return path, read_only


class QsdBlockServer:
    """qemu-storage-daemon exporting block files as vhost-user-blk sockets; `cpus`:
    where it runs (None: anywhere; L:887)."""

    def __init__(self, blocks, workdir, cpus=None):
        self.blocks = [parse_block_spec(b) if isinstance(b, str) else b for b in blocks]
        self.workdir = workdir
        self.cpus = cpus
        self.devices = []
        self.proc = None

    def _argv(self):
        exe = shutil.which("qemu-storage-daemon")
        if not exe:
            raise LauncherError("qemu-storage-daemon is missing (Debian: apt-get install "
                                "qemu-system-common)")
        argv = [exe]
        for i, (path, ro) in enumerate(self.blocks):
            sock = os.path.join(self.workdir, f"qsd-blk{i}.sock")
            argv += ["--blockdev", f"driver=file,node-name=f{i},filename={path},"
                     f"cache.direct=off,read-only={'on' if ro else 'off'}",
                     "--export", f"type=vhost-user-blk,id=e{i},node-name=f{i},"
                     f"addr.type=unix,addr.path={sock},writable={'off' if ro else 'on'}"]
            self.devices.append((sock, ID_BLOCK))
        return argv

    def __enter__(self):
        cpus = self.cpus
        self.proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
        try:
            for sock, _ in self.devices:
                wait_for_socket(sock, self.proc, what="qemu-storage-daemon")
        except LauncherError:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.stderr.close()
        for sock, _ in self.devices:
            if os.path.exists(sock):
                os.unlink(sock)
