"""Boot UML once with host directories served by our virtio-fs back-end (vhost-user)."""

import os
import shutil
import tempfile

from lguest.uml import process
from lguest.virtio import ID_FS
from lguest.vhost_user import served as devices
from lguest.vhost_user.server import VhostUserServer


def boot_with_shares(kit, command, shares, *, timeout=120, mem=256):
    """shares: [(host dir, tag, read_only)]. Returns (Outcome, [device stats])."""
    workdir = tempfile.mkdtemp(prefix="lgfs-", dir="/tmp")
    served, servers, devs = [], [], []
    try:
        for i, (path, tag, ro) in enumerate(shares):
            item = devices.fs(path, tag, read_only=ro)
            served.append(item)
            sock = os.path.join(workdir, f"fs{i}.sock")
            server = VhostUserServer(item.backend(), sock)
            servers.append(server)
            server.serve_in_thread()
            devs.append((sock, ID_FS))
        outcome = process.boot(kit, command, workdir, timeout=timeout, devices=devs, mem=mem)
    finally:
        devices.stop_serving(servers, served)
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome, [item.device.stats for item in served]


def parse_checks(stdout):
    """Lines 'CHECK name rest...' -> {name: rest}."""
    found = {}
    for line in stdout.decode(errors="replace").splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] == "CHECK":
            found[parts[1]] = parts[2] if len(parts) == 3 else ""
    return found
