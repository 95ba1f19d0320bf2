"""`lguest vhost-user`: argument handling, a served socket, console and net-pair devices."""

import contextlib
import os
import struct
import threading

import pytest

from lguest.devices.console import ConsoleDevice
from lguest.vhost_user import cli, served as devices
from lguest.vhost_user import protocol as P
from lguest.vhost_user.backend import VhostUserTransport
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import VhostUserServer
from lguest.devices.inmemory import BufferSink as Sink


def test_parse_args_requires_one_device_and_matching_sockets():
    args = cli.parse_args(["--socket", "/tmp/a", "--block", "x.img,ro"])
    assert args.block == "x.img,ro" and args.socket == ["/tmp/a"]
    for bad in (["--socket", "/tmp/a"], ["--block", "x"], ["--socket", "/a", "--rng", "--console"],
                ["--socket", "/a", "--net", "pair"], ["--socket", "/a", "--socket", "/b", "--rng"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


def test_main_reports_a_missing_file_in_one_line(capsys, tmp_path):
    assert cli.main(["--socket", str(tmp_path / "s"), "--block", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err


@contextlib.contextmanager
def cli_serving(argv):
    """`lguest vhost-user ARGV` served on a thread until the block ends; yields the
    socket's path once it exists, and checks that stopping removed it."""
    args = cli.parse_args(argv)
    sock = argv[argv.index("--socket") + 1]
    stop = threading.Event()
    thread = threading.Thread(target=cli.serve, args=(cli.build(args), args.socket, stop))
    thread.start()
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            threading.Event().wait(0.01)
        yield sock
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and not os.path.exists(sock)


def test_block_served_on_a_unix_socket_then_cleaned_up(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xAB" * 4096)
    sock = str(tmp_path / "blk.sock")
    with cli_serving(["--socket", sock, "--block", f"{image},ro"]):
        for _ in range(2):                           # a second front-end after the first
            with Frontend.connect(sock) as fe:
                offered = fe.negotiate()
                assert offered & (1 << 5)            # VIRTIO_BLK_F_RO
                fe.set_mem_table()
                q = fe.setup_queue(0, 8)
                q.ring.add_buffer([struct.pack("<IIQ", 0, 0, 1)], [512, 1])
                q.kick()
                used = q.wait_used()[0]
                assert used.data == b"\xAB" * 512 + b"\0"


def test_console_output_reaches_the_sink(tmp_path):
    sink = Sink()
    sock = str(tmp_path / "con.sock")
    with VhostUserServer(VhostUserTransport(ConsoleDevice(sink)), sock) as server:
        server.serve_in_thread()
        with Frontend.connect(sock) as fe:
            fe.negotiate()
            fe.set_mem_table()
            fe.setup_queue(0, 8)
            out = fe.setup_queue(1, 8)
            out.ring.add_buffer([b"hello ", b"from the guest\n"], [])
            out.kick()
            out.wait_used()
    assert bytes(sink.data) == b"hello from the guest\n"


def test_net_pair_carries_a_frame_from_one_guest_to_the_other(tmp_path):
    pair = devices.net_pair()
    paths = [str(tmp_path / "a.sock"), str(tmp_path / "b.sock")]
    servers = [VhostUserServer(s.backend(), p) for s, p in zip(pair, paths)]
    try:
        for s in servers:
            s.serve_in_thread()
        with Frontend.connect(paths[0]) as a, Frontend.connect(paths[1]) as b:
            for fe in (a, b):
                fe.negotiate()
                fe.set_mem_table()
            b_rx = b.setup_queue(0, 8)
            b.setup_queue(1, 8)
            a.setup_queue(0, 8)
            a_tx = a.setup_queue(1, 8)
            assert b.get_config(0, 6) == bytes.fromhex("525400000002")
            b_rx.ring.add_buffer((), [2048])
            b_rx.kick()
            frame = bytes(12) + b"\xff" * 6 + bytes.fromhex("525400000001") + b"\x08\x00" + b"ping" * 10
            a_tx.ring.add_buffer([frame], [])
            a_tx.kick()
            a_tx.wait_used()
            got = b_rx.wait_used()[0]
            assert got.data[12:] == frame[12:]
            assert struct.unpack_from("<H", got.data, 10)[0] == 1      # num_buffers
    finally:
        devices.stop_serving(servers, pair)


def test_bench_completes_requests_both_ways(tmp_path):
    from lguest.vhost_user import bench
    image = tmp_path / "bench.img"
    image.write_bytes(bytes(1 << 20))
    for write in (False, True):
        iops, mbs = bench.run(str(image), 4096, 0.1, 4, write)
        assert iops > 100 and abs(mbs - iops * 4096 / 1e6) < 1e-6 * mbs + 1e-9


def test_other_host_architectures_are_refused_with_one_line(monkeypatch, capsys, tmp_path):
    import platform
    from lguest.errors import LauncherError
    from lguest.vhost_user.backend import VhostUserTransport
    from lguest.vhost_user.rings import require_x86_host
    require_x86_host("x86_64")
    require_x86_host("i686")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(LauncherError, match="aarch64.*x86 hosts only"):
        VhostUserTransport(ConsoleDevice(None))
    image = tmp_path / "d.img"
    image.write_bytes(bytes(512))
    assert cli.main(["--socket", str(tmp_path / "s"), "--block", str(image)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aarch64" in err and "x86 hosts only" in err
    assert not (tmp_path / "s").exists()
