"""DPDK's virtio-user (dpdk-testpmd) as a VM-less front-end of our vhost-user net device.

Third-party front-end code with no guest kernel: DPDK 22.11's net_virtio_user PMD
connects to `lguest vhost-user --net ...`, maps its memfd-backed memory (--no-huge), and
testpmd moves frames through our rings: txonly (testpmd -> our tx ring -> the host's
tap, 1 to 4 segments a frame), macswap (frames the host sends on the tap -> our rx ring
-> testpmd -> back, byte for byte), io across `--net pair` (one testpmd, two ports, our
cable between them), two queue pairs (both used, or one of two), rings larger than
QEMU's, and a testpmd killed mid-traffic. The kit (Debian's packages, unpacked into the
cache) is tests/hw/dpdk_kit.py; docs/dpdk.md says what was seen. Each testpmd runs for
about a second of forwarding: its forwarding core spins at 100%.
"""

import contextlib
import os
import re
import shutil
import socket
import struct
import tempfile
import time

import pytest

from lguest.errors import LauncherError
from lguest.uml.servers import wait_for_socket

import dpdk_kit
from kits import kit_or_skip
from qemu_run import Backend

TAP_IP = "10.77.0.1"
PMD_MAC = "52:54:00:77:00:02"
HOST_MAC = "02:00:00:77:00:01"          # the source of the frames we inject
FORWARD_S = 1.0
ETH_P_ALL, ETH_P_TEST = 0x0003, 0x88B5  # 0x88b5: IEEE 802 local experimental ethertype
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33                     # Linux; root (as the tap tests are) may set it


@pytest.fixture(scope="module")
def kit():
    return kit_or_skip(dpdk_kit.ensure_kit, "DPDK (dpdk-testpmd)")


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="lgdp-", dir="/tmp")
    yield d
    dpdk_kit.quit_all()
    shutil.rmtree(d, ignore_errors=True)


def need_tap():
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("a tap back-end needs root and /dev/net/tun")


@contextlib.contextmanager
def tap_backend(workdir, queues=1):
    """Our back-end on a fresh tap (queues pairs): yields (backend, tap name, stopped),
    where stopped["log"] holds the back-end's log once the `with` is left."""
    need_tap()
    tap = tap_name()
    spec = f"--net=tap:{tap}:{TAP_IP}/24" + (f",queues={queues}" if queues > 1 else "")
    be = Backend(workdir, "net", [spec])
    stopped = {}
    try:
        yield be, tap, stopped
    finally:
        stopped["log"] = be.stop()


def tap_name():
    return f"lgdpdk{os.getpid() % 10000}"


def tap_counters(tap):
    base = f"/sys/class/net/{tap}/statistics"
    return {n: int(open(f"{base}/{n}").read()) for n in ("rx_packets", "rx_bytes",
                                                           "tx_packets", "tx_bytes")}


def vdev(sock, index=0, queues=1, queue_size=256):
    # mac=: DPDK 22.11's virtio-user reads the device's MAC only through GET_CONFIG,
    # and it does not take our PROTOCOL_F_CONFIG, so without it it makes one up.
    return (f"net_virtio_user{index},path={sock},queues={queues},queue_size={queue_size},"
            f"mac={PMD_MAC[:-1]}{index + 2}")


# All our back-end may say with -v when nothing goes wrong. A refused ring says
# "SET_VRING_NUM refused: ... bad driver: ..." (no "error" in it), hence a list.
QUIET = re.compile(r"lguest vhost-user: (serving net\d* on |vhost-user net\d*: "
                   r"(front-end connected on |region guest |front-end disconnected$))")


def clean_log(log):
    """Our back-end's log, asserted to hold only QUIET lines."""
    odd = [line for line in log.splitlines() if not QUIET.match(line)]
    assert not odd, "\n".join(odd[:20])
    return log


def mac_bytes(mac):
    return bytes(int(x, 16) for x in mac.split(":"))


def udp_frame(dst_mac, sport, size):
    """An Ethernet/IPv4/UDP frame of `size` bytes from 10.77.0.1:sport: a flow the tap's
    queue selection hashes like any other (our injected multiqueue traffic)."""
    payload = bytes(size - 14 - 20 - 8)
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(TAP_IP), socket.inet_aton("10.77.0.2"))
    csum = sum(struct.unpack("!10H", ip))
    csum = (csum & 0xFFFF) + (csum >> 16)
    ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
    return mac_bytes(dst_mac) + mac_bytes(HOST_MAC) + b"\x08\x00" + ip + udp


def inject(tap, frames):
    """Send raw frames out of the tap: the kernel hands each to our back-end's tap fd."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((tap, 0))
        for frame in frames:
            s.send(frame)


def start_pmd(kit, workdir, vdevs, mode, extra=(), name="pmd"):
    pmd = dpdk_kit.Testpmd(kit, workdir, vdevs, [f"--forward-mode={mode}", *extra], name)
    try:
        pmd.wait_prompt()
    except LauncherError as e:
        pmd.quit()
        pytest.fail(f"testpmd did not come up: {e}\n{' '.join(pmd.argv)}")
    return pmd


def forward(pmd, first="start"):
    """start, FORWARD_S seconds of forwarding, stop, stats; return testpmd's output."""
    pmd.send(first)
    time.sleep(FORWARD_S)
    pmd.send("stop")
    pmd.send("show port stats all")
    return pmd.quit()


def stream_tx(output):
    """{(port, queue): TX-packets} from stop's per-stream forward statistics."""
    return {(int(p), int(q)): int(tx) for p, q, tx in re.findall(
        r"Forward Stats for RX Port=\s*(\d+)/Queue=\s*(\d+) -> TX Port=\s*\d+/Queue=\s*\d+"
        r" -+\s+RX-packets:\s*\d+\s+TX-packets:\s*(\d+)", output)}


def xstats(output):
    """{name: value} from `show port xstats 0`: the virtio PMD counts what each rx queue
    got by frame size (rx_q0_size_512_1023_packets, ...). Counters, not testpmd's
    verbose per-frame lines: those come from the forwarding core while the main one
    echoes commands, and in a file (fully buffered) a line was once cut in two."""
    block = output[output.rindex("NIC extended statistics for port"):]
    return {k: int(v) for k, v in re.findall(r"^(\w+): (\d+)$", block, re.M)}


def capture(tap):
    """A raw socket on the tap that sees what comes in from our back-end."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # It also sees each frame the host sends out of the tap: with the default buffer
    # (208 KiB) 24 of 64 frames that came back were not there to read (the tap's
    # counters had them all).
    cap.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    cap.bind((tap, 0))
    cap.settimeout(0)
    return cap


def captured(cap, src_mac, limit):
    """Up to `limit` frames from src_mac waiting on the capture socket (not ones the
    host itself sent out of the tap)."""
    frames = []
    while len(frames) < limit:
        try:
            data, addr = cap.recvfrom(4096)
        except BlockingIOError:
            break
        if addr[2] != PACKET_OUTGOING and data[6:12] == mac_bytes(src_mac):
            frames.append(data)
    cap.close()
    return frames


# txonly's own IPv4/UDP frame (64 bytes), a full-sized one, and the same split over
# mbufs: then DPDK's virtio PMD puts the virtio-net header and each segment in a
# descriptor of its own, in an indirect table (INDIRECT_DESC is negotiated; counted
# with "1000,514": every tx chain was indirect, with 3 readable buffers), so our tx
# path gathers each frame from several places in the front-end's memory.
@pytest.mark.parametrize("txpkts", ["64", "1514", "1000,514", "64,64,64,64"])
def test_testpmd_txonly_frames_reach_the_tap(kit, workdir, txpkts):
    size = sum(int(n) for n in txpkts.split(","))
    with tap_backend(workdir) as (be, tap, stopped):
        # What crosses: a capture on the tap of frames coming in from the back-end.
        cap = capture(tap)
        before = tap_counters(tap)
        pmd = start_pmd(kit, workdir, [vdev(be.socket)], "txonly")
        if "," in txpkts:
            for line in ("port stop 0", "port config 0 tx_offload multi_segs on",
                         "port start 0"):
                pmd.send(line)
        pmd.send(f"set txpkts {txpkts}")
        out = forward(pmd)
        after = tap_counters(tap)
        frames = captured(cap, PMD_MAC, 32)
    log = stopped["log"]
    assert f"packet len={size} - nb packet segments={txpkts.count(',') + 1}" in out, out[-3000:]
    stats = dpdk_kit.port_stats(out)
    assert 0 in stats, out[-3000:]
    sent = stats[0]
    assert sent["tx_packets"] > 1000 and sent["tx_errors"] == 0, (sent, out[-3000:])
    assert sent["tx_bytes"] == size * sent["tx_packets"]       # no FCS
    # Every frame testpmd counted as sent came out of the tap, byte for byte in size.
    assert after["rx_packets"] - before["rx_packets"] == sent["tx_packets"], (before, after, sent)
    assert after["rx_bytes"] - before["rx_bytes"] == sent["tx_bytes"], (before, after, sent)
    # And as testpmd built them: IPv4/UDP from 198.18.0.1 to 198.18.0.2 (its defaults).
    assert frames, "the capture on the tap saw none of testpmd's frames"
    for f in frames:
        assert len(f) == size and f[12:14] == b"\x08\x00" and f[23] == 17, f[:64].hex()
        assert f[26:34] == socket.inet_aton("198.18.0.1") + socket.inet_aton("198.18.0.2"), \
            f[:64].hex()
    assert "front-end connected" in clean_log(log)


def test_host_frames_reach_testpmd_and_come_back_macswapped(kit, workdir):
    # host -> tap -> our rx ring -> testpmd (macswap: swaps the two MAC addresses, and
    # nothing else) -> our tx ring -> tap -> host: each frame checked byte for byte.
    n, size = 64, 1000
    head = mac_bytes(PMD_MAC) + mac_bytes(HOST_MAC) + struct.pack("!H", ETH_P_TEST)
    sent = [head + bytes((i + j) & 0xFF for j in range(size - 14)) for i in range(n)]
    with tap_backend(workdir) as (be, tap, stopped):
        # Counted from before testpmd connects: it may send back a frame of the host's
        # own (an IPv6 solicitation) as soon as it starts, and once did, before a
        # count taken after `start`.
        before = tap_counters(tap)
        pmd = start_pmd(kit, workdir, [vdev(be.socket)], "macswap")
        pmd.send("start")
        cap = capture(tap)
        inject(tap, sent)
        time.sleep(FORWARD_S)
        pmd.send("stop")
        pmd.send("show port xstats 0")
        out = pmd.quit()
        after = tap_counters(tap)
        back = captured(cap, PMD_MAC, 2 * n)
    log = stopped["log"]
    x = xstats(out)
    # Exactly our frames in the 512-1023 bin (the host's own, IPv6 router and neighbour
    # solicitations when the tap comes up, are < 128 bytes), none refused or dropped.
    assert x["rx_q0_size_512_1023_packets"] == n, x
    assert x["rx_errors"] == x["rx_missed_errors"] == x["rx_mbuf_allocation_errors"] == 0, x
    # The tap's counters see the host's own frames too (an IPv6 solicitation or two);
    # what testpmd sent back (all it received, ours and those) came out whole.
    assert after["tx_packets"] - before["tx_packets"] >= n, (before, after)
    assert after["rx_packets"] - before["rx_packets"] == x["tx_good_packets"] >= n, (after, x)
    ours = [f for f in back if f[12:14] == struct.pack("!H", ETH_P_TEST)]
    swapped = [mac_bytes(HOST_MAC) + mac_bytes(PMD_MAC) + f[12:] for f in sent]
    assert ours == swapped, f"{len(ours)} of {n} came back; first: {ours[:1]}"
    clean_log(log)


def test_pair_cable_between_two_testpmd_ports(kit, workdir):
    # One testpmd, two virtio_user ports, one on each end of our --net pair: io mode
    # forwards what port 1 receives out of port 0 and back, after a first burst from
    # each (`start tx_first`), so the same frames cross our cable again and again.
    other = os.path.join(workdir, "b.sock")
    be = Backend(workdir, "a", [f"--socket={other}", "--net=pair"])
    try:
        wait_for_socket(other, be.proc, timeout=30, what="lguest vhost-user --net=pair")
        pmd = start_pmd(kit, workdir, [vdev(be.socket, 0), vdev(other, 1)], "io")
        out = forward(pmd, first="start tx_first")
    finally:
        log = be.stop()
    stats = dpdk_kit.port_stats(out)
    assert set(stats) == {0, 1}, out[-3000:]
    for a, b in ((0, 1), (1, 0)):
        tx, rx = stats[a], stats[b]
        # Many crossings, each one whole (64 bytes), none lost: what one port received
        # is what the other sent, less what was still in the cable at `stop`.
        assert rx["rx_packets"] > 1000, stats
        assert 0 <= tx["tx_packets"] - rx["rx_packets"] <= 2 * 256, stats
        assert rx["rx_bytes"] == 64 * rx["rx_packets"] and rx["rx_errors"] == 0, stats
    clean_log(log)


def every_sent_frame_reached_the_tap(out, before, after):
    """testpmd (port 0) sent many frames, and the tap's counters grew by exactly that many."""
    sent = dpdk_kit.port_stats(out)[0]
    assert sent["tx_packets"] > 1000, out[-3000:]
    assert after["rx_packets"] - before["rx_packets"] == sent["tx_packets"], (before, after, sent)


def receive_host_flows(pmd, tap, flows=64):
    """Send `flows` UDP flows (one frame each, 200 bytes, source ports 40000...) from
    the host into the tap while testpmd receives; testpmd's xstats after."""
    pmd.send("start")
    inject(tap, [udp_frame(PMD_MAC, 40000 + i, 200) for i in range(flows)])
    time.sleep(FORWARD_S)
    pmd.send("stop")
    pmd.send("show port xstats 0")
    return pmd.quit()


def test_two_queue_pairs_both_ways(kit, workdir):
    mq = ["--rxq=2", "--txq=2"]
    with tap_backend(workdir, queues=2) as (be, tap, stopped):
        before = tap_counters(tap)
        pmd = start_pmd(kit, workdir, [vdev(be.socket, queues=2)], "txonly", mq, "tx")
        tx_out = forward(pmd)
        after = tap_counters(tap)
        # The host's way: 64 UDP flows (source ports), which the multi-queue tap
        # spreads over its two queues by flow hash; each queue is one of our pairs.
        pmd = start_pmd(kit, workdir, [vdev(be.socket, queues=2)], "rxonly", mq, "rx")
        rx_out = receive_host_flows(pmd, tap)
    log = stopped["log"]
    per_queue = stream_tx(tx_out)
    assert set(per_queue) == {(0, 0), (0, 1)} and min(per_queue.values()) > 100, tx_out[-3000:]
    assert after["rx_packets"] - before["rx_packets"] == sum(per_queue.values()), \
        (before, after, per_queue)
    x = xstats(rx_out)
    per_rxq = [x[f"rx_q{q}_size_128_255_packets"] for q in (0, 1)]
    assert sum(per_rxq) == 64 and min(per_rxq) > 0, x
    clean_log(log)


# testpmd's queue_size= goes up to virtio's 32768; we took up to QEMU's 1024, and a
# refusal is unheard (DPDK asks no reply for ring set-up and sets no err fd): 2048 came
# up, link up, and sent 512 frames into rings we never served.
@pytest.mark.parametrize("queue_size", [2048, 4096])
def test_rings_larger_than_qemus(kit, workdir, queue_size):
    with tap_backend(workdir) as (be, tap, stopped):
        before = tap_counters(tap)
        pmd = start_pmd(kit, workdir, [vdev(be.socket, queue_size=queue_size)], "txonly",
                        ["--total-num-mbufs=16384"])    # a full rx ring, and some to send
        out = forward(pmd)
        after = tap_counters(tap)
    log = stopped["log"]
    every_sent_frame_reached_the_tap(out, before, after)
    clean_log(log)


def test_two_pairs_offered_one_used(kit, workdir):
    # queues=2 with --rxq=1: DPDK sets up all four rings but enables only pair 0
    # (SET_VRING_ENABLE 1 for rings 0 and 1, never for 2 and 3). Our second tap queue
    # must then be detached, or the flows the tap hashes to it would wait there.
    with tap_backend(workdir, queues=2) as (be, tap, stopped):
        pmd = start_pmd(kit, workdir, [vdev(be.socket, queues=2)], "rxonly",
                        ["--rxq=1", "--txq=1"])
        out = receive_host_flows(pmd, tap)
    log = stopped["log"]
    x = xstats(out)
    assert x["rx_q0_size_128_255_packets"] == 64 and "rx_q1_good_packets" not in x, x
    clean_log(log)


def test_a_killed_testpmd_and_the_next_one(kit, workdir):
    # testpmd SIGKILLed while it sends as fast as it can: its rings are mid-flight. The
    # next testpmd on the same back-end starts afresh and every frame it sends arrives.
    with tap_backend(workdir) as (be, tap, stopped):
        first = start_pmd(kit, workdir, [vdev(be.socket)], "txonly", name="first")
        first.send("start")
        time.sleep(0.5)
        first.proc.kill()
        first.quit()
        # Its session has ended (and written what it popped) before we count.
        deadline = time.monotonic() + 10
        while "front-end disconnected" not in open(be.log_path).read():
            assert time.monotonic() < deadline, open(be.log_path).read()
            time.sleep(0.05)
        before = tap_counters(tap)
        second = start_pmd(kit, workdir, [vdev(be.socket)], "txonly", name="second")
        out = forward(second)
        after = tap_counters(tap)
    log = stopped["log"]
    every_sent_frame_reached_the_tap(out, before, after)
    assert clean_log(log).count("front-end connected") == 2
