#!/usr/bin/env python3
"""Record the device-level traffic of a real User-Mode Linux boot, for replay without Linux.

    .venv/bin/python scripts/record-uml-trace.py [OUT]     (default tests/data/uml-boot-block-console.trace.gz)

Boots UML (the project's kit, L:803) with our vhost-user back-end (L:720) serving a
1 MiB disk made from a seed (trace.make_image, so the replay can make it again) and a
console, records every message, kick, chain, push and call (L:785), runs a small
command that reads and writes a few sectors and prints to /dev/hvc0, and writes the
stream. tests/unit/test_uml_trace_replay.py replays it.

Devices left out: rng (Debian's UML kernel has no HW_RANDOM_VIRTIO, so no driver would
ever touch it) and net (it needs a tap or a peer, and its rx ring is served by a
host-woken thread, whose work a replay cannot schedule as the host did).
"""

import hashlib
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lguest.devices.block import BlockDevice            # noqa: E402
from lguest.devices.console import ConsoleDevice        # noqa: E402
from lguest.devices.inmemory import BufferSink          # noqa: E402
from lguest.host.block import FileStore                 # noqa: E402
from lguest import virtio                              # noqa: E402
from lguest.uml import kit, process                    # noqa: E402
from lguest.vhost_user import trace                     # noqa: E402
from lguest.vhost_user.backend import VhostUserTransport  # noqa: E402
from lguest.vhost_user.server import VhostUserServer    # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "tests", "data", "uml-boot-block-console.trace.gz")
IMAGE = {"name": "vda", "kind": "block", "size": 1 << 20, "seed": 1, "read_only": False}
CONSOLE = {"name": "hvc0", "kind": "console"}
# Reads 4 sectors at 4 KiB and 64 KiB at 128 KiB (readahead makes that multi-segment
# requests, in indirect tables), writes a line over sector 16 and flushes it
# (conv=fsync: a FLUSH request), reads it back, and prints: each step shows on the rings.
COMMAND = ("dd if=/dev/vda bs=512 skip=8 count=4 2>/dev/null | md5sum; "
           "dd if=/dev/vda bs=4096 skip=32 count=16 2>/dev/null | md5sum; "
           "echo 'written by the guest' | dd of=/dev/vda bs=512 seek=16 conv=fsync 2>/dev/null; "
           "dd if=/dev/vda bs=512 skip=16 count=1 2>/dev/null | head -c 21; echo; "
           "echo hello from hvc0")


def main(argv):
    out = argv[1] if len(argv) > 1 else DEFAULT_OUT
    uml = kit.ensure_kit()
    workdir = tempfile.mkdtemp(prefix="lgrec-", dir="/tmp")   # short: socket paths
    try:
        disk = os.path.join(workdir, "disk.img")
        with open(disk, "wb") as f:
            f.write(trace.make_image(IMAGE["size"], IMAGE["seed"]))
        store = FileStore(disk)
        sink = BufferSink(lambda data: sys.stdout.buffer.write(data))
        recorder = trace.TraceRecorder()
        backends = [VhostUserTransport(BlockDevice(store, name="vda")),
                    VhostUserTransport(ConsoleDevice(sink, name="hvc0"))]
        running, devices = [], []
        for backend, (sock, device_id) in zip(backends, (("blk0", virtio.ID_BLOCK),
                                                         ("console", virtio.ID_CONSOLE))):
            backend.recorder = recorder.device(backend.device.name)
            server = VhostUserServer(backend, os.path.join(workdir, f"{sock}.sock"))
            server.serve_in_thread()
            running.append(server)
            devices.append((server.path, device_id))
        try:
            outcome = process.boot(uml, COMMAND, workdir, timeout=60, devices=devices,
                                   wait=["vda", "hvc0"], stdout_device="hvc0",
                                   on_stderr=lambda b: sys.stderr.buffer.write(b))
        finally:
            for server in running:
                server.close()
            for backend in backends:
                backend.close()
            store.close()
        if outcome.status != 0:
            sys.exit(f"record-uml-trace: the guest did not finish cleanly (status {outcome.status}):\n"
                     + outcome.log[-2000:])
        with open(disk, "rb") as f:
            image_sha = hashlib.sha256(f.read()).hexdigest()
        recorder.append({"type": "end", "dev": "vda", "state": {"image_sha256": image_sha}})
        recorder.append({"type": "end", "dev": "hvc0",
                         "state": {"console": bytes(sink.data).decode("utf-8", "replace")}})
        header = {"config": {"devices": [IMAGE, CONSOLE], "command": COMMAND, "mem_mb": 64,
                             "kernel": os.path.basename(uml.kernel)},
                  "comment": "made by scripts/record-uml-trace.py: a real UML boot on our "
                             "vhost-user back-end; rng and net left out (see the script)"}
        recorder.write(out, header)
        print(f"record-uml-trace: {len(recorder.records)} records, {os.path.getsize(out)} bytes "
              f"-> {out}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
