"""Net multiqueue over vhost-user with a real multi-queue tap, driven by our own
front-end (L:750) as QEMU or virtio_uml would: GET_QUEUE_NUM says the pairs, the
control queue picks how many are in use, the host's flows spread over the pairs' rx
queues (each served on its own thread) and each tx queue reaches the host."""

import os
import socket
import struct
import time

import pytest

from host_probes import needs_tap
from lguest.devices import net
from lguest.vhost_user import protocol as P
from lguest.vhost_user import served
from test_host_tap import capture_socket, find_frame
from test_vhost_user_backend import Session

GUEST_MAC = bytes.fromhex("525400000042")
HOST_MAC = bytes.fromhex("525400000043")
FLOWS = 64


def udp_frame(sport, marker):
    """An IPv4/UDP frame to the guest: the tap hashes its flow to pick a queue."""
    payload = marker.ljust(32, b".")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                     bytes([10, 215, 0, 1]), bytes([10, 215, 0, 2]))
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0)
    return GUEST_MAC + HOST_MAC + b"\x08\x00" + ip + udp + payload


@pytest.fixture
def mq_session():
    name = f"lgmq{os.getpid() % 10000}"
    device = served.net_tap(f"tap:{name}:10.215.0.1/24,queues=2")
    s = Session(device.backend(), regions=((0, 8 << 20),))
    yield s, device
    s.close()
    device.close()


def post_rx(queue, count=48):
    for _ in range(count):
        queue.ring.add_buffer([], [2048])
    queue.kick()


def pairs_set(fe, ctrl, pairs):
    ctrl.ring.add_buffer([bytes([net.CTRL_MQ, net.CTRL_MQ_VQ_PAIRS_SET]) + struct.pack("<H", pairs)], [1])
    ctrl.kick()
    (used,) = ctrl.wait_used(timeout=10)
    return used.data[0]


def send_flows(ifname, marker):
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for sport in range(40000, 40000 + FLOWS):
            sock.send(udp_frame(sport, marker))


def gather(queues, marker, want, timeout=10.0):
    """How many frames carrying `marker` each rx queue got, once `want` came (or timeout)."""
    counts = [0] * len(queues)
    deadline = time.monotonic() + timeout
    while sum(counts) < want and time.monotonic() < deadline:
        for i, q in enumerate(queues):
            used = q.ring.collect()
            for buf in used:
                counts[i] += marker in buf.data
                q.ring.add_buffer([], [2048])       # give the buffer back, as a driver does
            if used:
                q.kick()
        time.sleep(0.02)
    return counts


@needs_tap
def test_two_pairs_over_a_multi_queue_tap(mq_session):
    s, device = mq_session
    fe = s.fe
    fe.negotiate()
    assert fe.features & (1 << net.F_MQ) and fe.features & (1 << net.F_CTRL_VQ)
    assert fe.protocol_features & (1 << P.PROTOCOL_F_MQ)
    assert fe.ask_u64(P.GET_QUEUE_NUM) == 2                         # pairs, as QEMU counts
    assert struct.unpack("<H", fe.get_config(net.CONFIG_MAX_PAIRS, 2))[0] == 2
    fe.set_mem_table()
    rx0, tx0, rx1, tx1, ctrl = (fe.setup_queue(i, 64) for i in range(5))
    tap_name = device.device.tap.name
    assert sorted(t.name for t in device.device.taps) == [tap_name, tap_name]
    post_rx(rx0)
    post_rx(rx1)        # kicked while pair 1 is not in use: its thread does not watch the tap
    assert pairs_set(fe, ctrl, 2) == net.CTRL_OK        # no kick after: the device wakes it
    send_flows(tap_name, b"both")
    counts = gather([rx0, rx1], b"both", FLOWS)
    assert sum(counts) == FLOWS and min(counts) > 0, counts    # spread, none lost or doubled
    threads = {t.name for t in __import__("threading").enumerate()}
    assert {"net/rx0", "net/rx1", "net/tx0", "net/tx1", "net/ctrl"} <= threads

    capture = capture_socket(tap_name)
    try:
        tx1.ring.add_buffer([bytes(12) + b"\xff" * 6 + GUEST_MAC + b"\x88\xb5" + b"from-pair-1".ljust(46, b".")])
        tx1.kick()
        assert find_frame(capture, b"from-pair-1") is not None
    finally:
        capture.close()

    assert pairs_set(fe, ctrl, 1) == net.CTRL_OK              # back to one pair
    send_flows(tap_name, b"one")
    assert gather([rx0, rx1], b"one", FLOWS) == [FLOWS, 0]
    assert not s.backend.errors


@needs_tap
def test_the_cli_builds_queue_pairs_on_one_tap():
    from lguest.vhost_user import cli
    name = f"lgmc{os.getpid() % 10000}"
    (built,) = cli.build(cli.parse_args(["--socket", "/s", f"--net=tap:{name}:10.216.0.1/24,queues=3"]))
    try:
        assert built.device.queue_pairs == 3 and len(built.device.queue_names) == 7
        assert {t.name for t in built.device.taps} == {name}
        assert len({t.fd for t in built.device.taps}) == 3
        assert open(f"/sys/class/net/{name}/tun_flags").read().strip() == hex(0x5102)  # TAP|MULTI_QUEUE|NO_PI|VNET_HDR
    finally:
        built.close()
    assert not os.path.exists(f"/sys/class/net/{name}")


@needs_tap
def test_a_tap_queue_set_as_it_already_is_is_no_error():
    # A session in a forked child leaves the queues as its guest wanted; the next child
    # starts from the parent's view, so it may ask for what already is.
    from lguest.host.tap import configure_device, open_tap_queues
    taps = open_tap_queues(f"lgmd{os.getpid() % 10000}", 2)
    try:
        configure_device(taps[0].name, "10.217.0.1", 24)
        for on in (False, False, True, True):
            taps[1].set_attached(on)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((taps[0].name, 0))
            taps[1].set_attached(False)
            for sport in range(40000, 40000 + 16):
                sock.send(udp_frame(sport, b"q"))
            time.sleep(0.2)
            assert taps[1].will_block() and not taps[0].will_block()   # all on queue 0
    finally:
        for t in taps:
            t.close()


@needs_tap
def test_forked_sessions_one_after_another_each_get_their_pairs(tmp_path):
    """`lguest vhost-user` serves each front-end in a forked child (L:742): the first
    guest leaves pair 1's tap queue detached, the next child still thinks it attached."""
    import subprocess
    import sys
    from lguest.uml.servers import wait_for_socket
    from test_vhost_user_isolation import ROOT, connect
    name = f"lgmf{os.getpid() % 10000}"
    sock = str(tmp_path / "net.sock")
    log = open(tmp_path / "backend.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "vhost-user", f"--socket={sock}",
                             f"--net=tap:{name}:10.218.0.1/24,queues=2", "-v"], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_socket(sock, proc, what="lguest vhost-user")
        for pairs in (1, 2):
            with connect(sock, regions=((0, 8 << 20),)) as fe:
                fe.negotiate()
                fe.set_mem_table()
                rx0, tx0, rx1, tx1, ctrl = (fe.setup_queue(i, 64) for i in range(5))
                post_rx(rx0)
                post_rx(rx1)
                assert pairs_set(fe, ctrl, pairs) == net.CTRL_OK
                send_flows(name, b"s%d" % pairs)
                counts = gather([rx0, rx1], b"s%d" % pairs, FLOWS)
                assert sum(counts) == FLOWS and (min(counts) > 0 if pairs == 2 else counts[1] == 0), counts
            time.sleep(0.3)           # the session's child ends
    finally:
        proc.terminate()
        proc.wait(10)
        log.seek(0)
        text = log.read()
        log.close()
    assert "error" not in text.lower() and "Traceback" not in text, text
