"""The optional seccomp filter (L:980): after install(), a launcher process cannot open
files, make sockets or execve, while its devices -- opened before, served by threads
that are stopped and started again across a reset -- keep working. In a subprocess,
since a filter cannot be taken off. Skipped, saying why, where libseccomp's Python
binding is missing."""

import json
import os
import subprocess
import sys

import pytest

from lguest import seccomp

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OK, WHY = seccomp.available()

CHILD = r"""
import errno, json, os, socket, struct, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from lguest import seccomp
from lguest.config import DeviceSpec
from lguest.host import build_device
from test_dev_transport import Guest

host = build_device(DeviceSpec("block", path=sys.argv[3]))
guest = Guest(host.device, runners=[host.runner])
(h,) = guest.handles
seccomp.install()
out = {}

def attempt(name, call):
    try:
        call()
        out[name] = "allowed"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, e.errno)

attempt("open", lambda: open(sys.argv[4], "rb"))
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("execv", lambda: os.execv("/bin/true", ["true"]))

def blk(kind, sector, data=b"", read_len=0):
    q = h.queue(0)
    q.add_buffer([struct.pack("<IIQ", kind, 0, sector)] + ([data] if data else []),
                 [read_len + 1] if read_len else [1])
    h.kick(0)
    got = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = q.collect()
        time.sleep(0.001)
    return got[0].data

out["write"] = blk(1, 2, b"S" * 512)[-1]
h.negotiate(); h.setup_queues(); h.driver_ok()      # reset: queue threads joined, new ones
out["read_after_reset"] = blk(0, 2, read_len=512)[:4].decode()
guest.close(); host.close()
print(json.dumps(out), flush=True)
"""


@pytest.mark.skipif(not OK, reason=f"seccomp filter unavailable: {WHY}")
def test_filtered_launcher_cannot_open_socket_or_exec_but_serves_its_disk(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(8 * 512))
    other = tmp_path / "other"
    other.write_text("host file")
    done = subprocess.run([sys.executable, "-c", CHILD, ROOT, HERE, str(image), str(other)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["open"] == "EPERM" and out["socket"] == "EPERM" and out["execv"] == "EPERM"
    assert out["write"] == 0 and out["read_after_reset"] == "SSSS"
    assert image.read_bytes()[2 * 512:3 * 512] == b"S" * 512


def test_without_the_binding_install_says_why(monkeypatch):
    monkeypatch.setattr(seccomp, "DIST_PACKAGES", "/nonexistent")
    monkeypatch.setitem(sys.modules, "seccomp", None)      # `import seccomp` fails
    ok, why = seccomp.available()
    assert not ok and "python3-seccomp" in why
    with pytest.raises(seccomp.LauncherError, match="seccomp"):
        seccomp.install()
