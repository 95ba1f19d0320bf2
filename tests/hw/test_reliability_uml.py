"""Crash consistency with real Linux: a UML guest writes numbered 4 KiB blocks to
/dev/vda (our vhost-user block back-end, `lguest vhost-user`, in a process of its own),
each write followed by fsync on the device, printing "ACK v" once fsync returned (every
write up to version v was flushed by our device). The back-end is killed with SIGKILL at a random
moment; afterwards every acknowledged block is on disk as that version or a later one,
and nothing on disk is garbage. CI runs UML_CRASH_RUNS (default 4) boots;
scripts/crash-campaign --uml N runs more."""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from lguest.uml import kit, process
from lguest.uml.servers import wait_for_socket
from lguest.virtio import ID_BLOCK

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 4096
BLOCKS = 16
RUNS = int(os.environ.get("UML_CRASH_RUNS", "4"))

# Block n at version v: "blk N ver V" then spaces to 4095 bytes and a newline. Each
# write is its own batch, flushed with fsync on the device (conv=fsync): sync(2) would
# not do, as it reports no writeback error -- with the back-end dead, busybox's `sync`
# "succeeds" while the writes are lost, which is how a first version of this test saw
# "losses" that were not acknowledged at all. fsync reports them (dd exits non-zero).
GUEST_SCRIPT = (
    # When its back-end dies, virtio_uml removes the device and /dev/vda goes away; a
    # `dd of=/dev/vda` would then create a regular file of that name (tmpfs: fsync
    # "succeeds") -- which a first version of this test took for acknowledged writes.
    # So the block device is held open on fd 3 and written through /proc/self/fd/3,
    # which can only ever mean that device (ENXIO once it is gone).
    "exec 3<>/dev/vda || exit 5; [ -b /proc/self/fd/3 ] || exit 5; "
    "v=0; while [ $v -lt 100000 ]; do v=$((v+1)); n=$(( (v * 7) % NBLOCKS )); "
    "printf '%-4095s\\n' \"blk $n ver $v\" | dd of=/proc/self/fd/3 bs=4096 seek=$n "
    "conv=notrunc,fsync 2>/dev/null || exit 3; echo ACK $v; done"
).replace("NBLOCKS", str(BLOCKS))

ENTRY = re.compile(rb"blk (\d+) ver (\d+) *\n")


def version_of(v):
    return (v * 7) % BLOCKS


def check_image(path, acked):
    """(acknowledged blocks checked, losses); AssertionError on garbage or growth."""
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == BLOCK * BLOCKS, "the image changed size"
    last_acked = {}
    for v in range(1, acked + 1):
        last_acked[version_of(v)] = v
    losses = []
    for n in range(BLOCKS):
        chunk = data[n * BLOCK:(n + 1) * BLOCK]
        if chunk == bytes(BLOCK):
            on_disk = 0
        else:
            m = ENTRY.fullmatch(chunk)
            assert m and int(m.group(1)) == n, f"block {n} holds bytes nobody wrote there"
            on_disk = int(m.group(2))
            assert version_of(on_disk) == n
        if on_disk < last_acked.get(n, 0):
            losses.append((n, last_acked[n], on_disk))
    return len(last_acked), losses


def one_run(uml, workdir, rng, kill_within=(3.0, 6.0)):
    image = os.path.join(workdir, "disk.img")
    with open(image, "wb") as f:
        f.truncate(BLOCK * BLOCKS)
    sock = os.path.join(workdir, "blk.sock")
    if os.path.exists(sock):
        os.unlink(sock)           # a killed back-end leaves its socket: wait for the new one
    backend = subprocess.Popen([sys.executable, "-m", "lguest", "vhost-user", f"--socket={sock}",
                                f"--block={image}"], cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    acks = []
    text = bytearray()

    def on_stdout(data):
        text.extend(data)
        acks.extend(int(v) for v in re.findall(rb"ACK (\d+)\n", bytes(text)))
        del text[:text.rfind(b"\n") + 1]

    delay = rng.uniform(*kill_within)
    try:
        wait_for_socket(sock, backend, what="lguest vhost-user")
        boot_dir = os.path.join(workdir, "boot")
        os.makedirs(boot_dir, exist_ok=True)
        killer = threading.Timer(delay, backend.send_signal, (signal.SIGKILL,))
        killer.start()
        try:
            # Boot takes ~1.5 s; the kill lands during boot or mid-write. Once the
            # back-end is gone the guest's I/O stalls, so the timeout ends the boot.
            process.boot(uml, GUEST_SCRIPT, boot_dir, timeout=delay + 4, on_stdout=on_stdout,
                         devices=[(sock, ID_BLOCK)], wait=["vda"])
        finally:
            killer.cancel()
    finally:
        if backend.poll() is None:
            backend.send_signal(signal.SIGKILL)
        backend.wait(10)
    acked = max(acks, default=0)
    checked, losses = check_image(image, acked)
    return acked, checked, losses


def test_uml_acknowledged_syncs_survive_sigkill_of_the_backend(uml):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "3")))
    work = tempfile.mkdtemp(prefix="lgc-", dir="/tmp")
    totals = {"runs": 0, "acked_versions": 0, "blocks_checked": 0, "losses": 0}
    try:
        for _ in range(RUNS):
            acked, checked, losses = one_run(uml, work, rng)
            print(f"run {totals['runs']}: {acked} acknowledged, {checked} blocks checked, "
                  f"losses {losses}")
            totals["runs"] += 1
            totals["acked_versions"] += acked
            totals["blocks_checked"] += checked
            totals["losses"] += len(losses)
            assert losses == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(totals)
    # The guest must have got far enough to have something to lose.
    assert totals["acked_versions"] > 0, totals


def test_the_check_sees_a_loss_and_garbage(tmp_path):
    image = tmp_path / "img"
    data = bytearray(BLOCK * BLOCKS)
    data[version_of(1) * BLOCK:(version_of(1) + 1) * BLOCK] = b"%-4095s\n" % b"blk 7 ver 1"
    image.write_bytes(data)
    assert check_image(str(image), 1) == (1, [])
    assert check_image(str(image), 2) == (2, [(version_of(2), 2, 0)])
    data[0:BLOCK] = b"x" * BLOCK
    image.write_bytes(data)
    with pytest.raises(AssertionError, match="nobody wrote"):
        check_image(str(image), 0)
