"""A UML guest's virtio_blk against `lguest vhost-user --block` as run for the bench:
several queues offered and the kick fd busy-polled (--poll-us), bytes checked both ways.

Also pins what the bench's QD16 row rests on: Debian's UML is a one-CPU kernel, and
Linux's virtio_blk takes min(num_queues, CPUs) queues, so however many we offer the
guest uses one (/sys/block/vda/mq has one entry)."""

import hashlib
import os
import subprocess
import sys

import pytest

from lguest import virtio
from lguest.uml import process, servers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.hw


@pytest.mark.parametrize("queues,poll_us", [(2, 0), (2, 50), (8, 200)])
def test_guest_reads_and_writes_through_queues_and_polling(uml, tmp_path, queues, poll_us):
    image = tmp_path / "disk.img"
    data = os.urandom(1 << 20)
    image.write_bytes(data + bytes(1 << 20))
    sock = str(tmp_path / "b.sock")
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "vhost-user", f"--socket={sock}",
                             f"--block={image}", f"--queues={queues}", f"--poll-us={poll_us}"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = []
    try:
        servers.wait_for_socket(sock, proc)
        command = ("echo mq $(ls /sys/block/vda/mq | wc -l); "
                   "dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum; "
                   "dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null "
                   "| dd of=/dev/vda bs=1M seek=1 oflag=direct conv=fsync 2>/dev/null; echo done")
        outcome = process.boot(uml, command, str(tmp_path), timeout=120,
                               on_stdout=lambda b: lines.append(b.decode()),
                               devices=[(sock, virtio.ID_BLOCK)], wait=["vda"])
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1].decode()
    out = "".join(lines).split()
    assert outcome.status == 0 and "done" in out, f"{outcome.log[-1500:]}\n{err[-1500:]}"
    assert out[out.index("mq") + 1] == "1"            # one CPU, one queue taken
    assert hashlib.md5(data).hexdigest() in out       # the guest read the host's bytes
    assert image.read_bytes()[1 << 20:] == data       # and wrote them back, 1 MiB on
    assert "Traceback" not in err
