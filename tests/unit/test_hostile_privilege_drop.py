"""After --chroot and --username, a launcher that a hostile guest took over could do
little: the whole launcher (fake backend, a real block image opened before the drop)
runs in a subprocess, and the simulated guest -- running inside the launcher's run
loop, after the drop -- tries to open host files outside the jail and to regain root,
and uses the disk. Needs root (we are, here); skipped otherwise, saying so."""

import json
import os
import pwd
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import errno, json, os, sys
sys.path.insert(0, sys.argv[1])
from lguest.backends import fake_guest
from lguest.config import DeviceSpec, LaunchConfig
from lguest.launcher import launch
secret, image, jail = sys.argv[2:5]

def scenario(guest):
    kernel = fake_guest.GuestKernel(guest)
    handles = kernel.probe()
    for h in handles:
        kernel.bring_up(h)
    blk = next(h for h in handles if h.device_type == 2)
    out = {"uid": os.getresuid(), "gid": os.getresgid(), "root_dir": sorted(os.listdir("/"))}
    out["write"] = fake_guest.block_request(kernel, blk, 1, 3, data=b"D" * 512)[0]
    out["read"] = fake_guest.block_request(kernel, blk, 0, 3, read_len=512)[1][:4].decode()
    for name, path in (("secret", secret), ("passwd", "/etc/passwd"), ("image", image)):
        try:
            open(path, "rb").close()
            out[name] = "opened"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    for name, call in (("setuid", lambda: os.setuid(0)), ("seteuid", lambda: os.seteuid(0)),
                       ("chroot_escape", lambda: os.chroot("/.."))):
        try:
            call()
            out[name] = "succeeded"
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
    print("RESULT " + json.dumps(out), flush=True)
    return "hostile guest done"

fake_guest.default_scenario = scenario
sys.exit(launch(LaunchConfig(mem_mb=4, kernel="none", backend="fake", chroot=jail,
                             username="nobody", devices=[DeviceSpec("block", path=image)])))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and setresuid need root")
def test_dropped_launcher_cannot_reach_host_files_or_root_but_keeps_its_disk(tmp_path):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    jail = tmp_path / "jail"
    jail.mkdir()
    (jail / "inside").write_text("x")
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    os.chmod(secret, 0o644)                    # readable by anyone: only the jail stops it
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(16 * 512))
    os.chmod(tmp_path, 0o755)
    done = subprocess.run([sys.executable, "-c", CHILD, ROOT, str(secret), str(image), str(jail)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["uid"] == [nobody.pw_uid] * 3 and out["gid"] == [nobody.pw_gid] * 3
    assert out["root_dir"] == ["inside"]                   # / is the jail
    assert out["secret"] == "ENOENT" and out["passwd"] == "ENOENT" and out["image"] == "ENOENT"
    assert out["setuid"] == "EPERM" and out["seteuid"] == "EPERM"
    assert out["chroot_escape"] == "EPERM"
    # The disk opened before the drop still works, both ways.
    assert out["write"] == 0 and out["read"] == "DDDD"
    assert image.read_bytes()[3 * 512:4 * 512] == b"D" * 512
