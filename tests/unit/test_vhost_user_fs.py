"""`lguest vhost-user --fs`: arguments, the config space a front-end reads, a request served."""

import errno
import os
import struct

import pytest

from lguest.devices import fuse_wire as W
from lguest.errors import LauncherError
from lguest.vhost_user import cli
from lguest.vhost_user import served as devices
from lguest.vhost_user.frontend import Frontend
from test_vhost_user_cli import cli_serving


def test_fs_needs_a_tag_and_ro_needs_fs():
    args = cli.parse_args(["--socket", "/tmp/s", "--fs", "/tmp", "--tag", "t", "--ro"])
    assert (args.fs, args.tag, args.ro) == ("/tmp", "t", True)
    for bad in (["--socket", "/s", "--fs", "/tmp"], ["--socket", "/s", "--rng", "--ro"],
                ["--socket", "/s", "--rng", "--tag", "t"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


def test_a_missing_directory_or_bad_tag_is_one_line(tmp_path, capsys):
    with pytest.raises(LauncherError):
        devices.fs(str(tmp_path / "nope"), "t")
    with pytest.raises(LauncherError):
        devices.fs(str(tmp_path), "x" * 40)
    assert cli.main(["--socket", str(tmp_path / "s"), "--fs", str(tmp_path / "nope"),
                     "--tag", "t"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


def test_front_end_reads_the_tag_byte_by_byte_and_gets_answers(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello").write_text("hi")
    sock = str(tmp_path / "fs.sock")
    with cli_serving(["--socket", sock, "--fs", str(share), "--tag", "myfs"]):
        with Frontend.connect(sock) as fe:
            fe.negotiate()
            # virtio_uml reads the config one byte per GET_CONFIG message
            tag = bytes(fe.get_config(i, 1)[0] for i in range(36))
            assert tag.rstrip(b"\0") == b"myfs"
            assert struct.unpack("<I", fe.get_config(36, 4))[0] == 1
            fe.set_mem_table()
            fe.setup_queue(0, 8)
            q = fe.setup_queue(1, 8)
            for name, want in ((b"hello", 0), (b"..", -errno.EINVAL), (b"none", -errno.ENOENT)):
                header = W.IN_HEADER.pack(40 + len(name) + 1, W.LOOKUP, 5, 1, 0, 0, 0, 0, 0)
                q.ring.add_buffer([header + name + b"\0"], [16 + W.ENTRY_OUT_SIZE])
                q.kick()
                used = q.wait_used()[0]
                length, error, unique = W.OUT_HEADER.unpack_from(used.data)
                assert (error, unique) == (want, 5)
                if want == 0:
                    attr = W.ATTR.unpack_from(used.data, 16 + W.ENTRY_OUT_HEAD.size)
                    assert attr[1] == 2                          # size of "hi"


def test_serving_a_directory_raises_the_soft_fd_limit():
    import resource
    import subprocess
    import sys
    code = ("import resource; from lguest.host.fs import raise_fd_limit; raise_fd_limit(); "
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # noqa: E731
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=low, capture_output=True,
                         text=True, check=True).stdout
    assert int(out) >= hard > 256
