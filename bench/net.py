"""Net: guest-to-host TCP throughput through our vhost-user virtio-net (over a tap),
next to UML's own tap transport (`eth0=tuntap,NAME`, UML's built-in network driver).

The guest pipes dd from /dev/zero into busybox nc towards a TCP listener on the host
end of the tap; the host counts bytes as they arrive, times first to last, and closes
the connection when all have come (which ends nc). Each run uses its own tap and
subnet; runs alternate ours/UML's. Needs root and /dev/net/tun.
"""

import dataclasses
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time

from common import median, say, Row

from lguest.uml import kit as kit_module, process
from lguest.uml.guest import Guest, GuestFailed

PORT = 5201
# One guest of 64 MiB ran out of memory ("System is deadlocked on memory") mid-transfer.
MEM = 128


class Receiver(threading.Thread):
    """Accept one connection, read `total` bytes, note the first and last arrival."""

    def __init__(self, address, total):
        super().__init__(daemon=True)
        self.total, self.n, self.first, self.last = total, 0, None, None
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(1)
        self.sock.settimeout(90)

    def run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        buf = bytearray(1 << 20)
        with conn:
            conn.settimeout(60)
            while self.n < self.total:
                try:
                    got = conn.recv_into(buf)
                except OSError:
                    break
                if not got:
                    break
                now = time.monotonic()
                self.first = self.first or now
                self.last = now
                self.n += got
        self.sock.close()

    def close(self):
        # close() alone does not wake a thread blocked in accept(), and the socket
        # would stay listening (the next bind fails): shut it down first.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.join(5)

    def rate(self):
        if self.n != self.total or self.last is None or self.last == self.first:
            return None
        return self.n / (self.last - self.first) / 1e6


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def guest_command(host_ip, blocks, port):
    return f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {host_ip} {port}"


def ours(kit, n, blocks):
    name, host, guest = f"lgbn{n}", f"10.77.{n}.1", f"10.77.{n}.2/24"
    # The tap (and so the host address) exists only once the back-end has opened it,
    # which Guest does inside run(): listen on every address instead.
    rx = Receiver(("0.0.0.0", PORT + 2 * n), blocks * 65536)
    rx.start()
    try:
        Guest(kit=kit, net=f"tap:{name}:{host}", ip=guest, timeout=60, mem=MEM,
              root="initramfs").run(
            guest_command(host.split("/")[0], blocks, PORT + 2 * n))
    except GuestFailed as e:
        # Counted as an incomplete run in the row's note, not hidden.
        say(f"net: our run {n} failed after {rx.n} of {rx.total} bytes: {e}")
    finally:
        rx.close()
    return rx.rate()


def umls(kit, n, blocks, workdir):
    name, host, guest = f"lgbu{n}", f"10.78.{n}.1", f"10.78.{n}.2/24"
    _ip("tuntap", "add", "dev", name, "mode", "tap")
    try:
        _ip("addr", "add", f"{host}/24", "dev", name)
        _ip("link", "set", name, "up")
        # process.boot has no hook for extra kernel arguments: a wrapper adds UML's own
        # tap transport to the same kernel's command line.
        wrapper = os.path.join(workdir, f"uml-tuntap-{n}")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec {kit.kernel} "$@" eth0=tuntap,{name}\n')
        os.chmod(wrapper, stat.S_IRWXU)
        uml_kit = dataclasses.replace(kit, kernel=wrapper)
        rx = Receiver((host, PORT + 2 * n + 1), blocks * 65536)
        rx.start()
        boot_dir = tempfile.mkdtemp(prefix="b", dir=workdir)
        try:
            out = process.boot(uml_kit, guest_command(host, blocks, PORT + 2 * n + 1), boot_dir,
                               timeout=60, mem=MEM,
                               ip=guest)
        finally:
            rx.close()
        if out.status != 0:
            say(f"net: UML tuntap run: status {out.status}: {bytes(out.stderr)[-300:]!r}")
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    return rx.rate()


def available():
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def measure(runs=5, quick=False):
    if not available():
        say("net: needs root and /dev/net/tun, section skipped")
        return []
    blocks = 128 if quick else 512                    # 8 or 32 MiB: UML's net is slow here
    kit = kit_module.ensure_kit()
    a, b = [], []
    with tempfile.TemporaryDirectory(prefix="lgbn-", dir="/tmp") as d:
        for i in range(runs):
            say(f"net: run {i + 1}/{runs}")
            a.append(ours(kit, i, blocks))
            b.append(umls(kit, i, blocks, d))
    failed = a.count(None) + b.count(None)
    a, b = [x for x in a if x], [x for x in b if x]
    if not a or not b:
        say(f"net: no complete transfer (ours {len(a)}, UML's {len(b)}), section left out")
        return []
    note = f"median of {len(a)}/{len(b)}" + (f", {failed} runs incomplete" if failed else "")
    return [Row("net", f"guest->host TCP, {blocks // 16} MiB via nc: our vhost-user net+tap "
                "vs UML's tuntap", median(a), median(b), "MB/s", "", note)]
