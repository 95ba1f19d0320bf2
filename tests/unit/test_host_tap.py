"""The net device through a real tap: guest frames appear on the host interface, host
frames land in guest buffers with a correct vnet header. Needs root and /dev/net/tun;
skipped, saying which is missing, elsewhere. Bad addresses fail with LauncherError."""

import fcntl
import os
import socket
import struct
import time

import pytest

from lguest.config import DeviceSpec
from lguest.devices import net
from lguest.errors import LauncherError
from lguest.host import build_device
from host_probes import needs_tap
from test_dev_transport import Guest

ETH_P_ALL = 0x0003
ETHERTYPE = 0x88B5          # IEEE local experimental: nothing else on the host sends it
GUEST_MAC = "52:54:00:12:34:56"
SIOCBRADDBR, SIOCBRDELBR = 0x89A0, 0x89A1




def frame(dst, src, marker):
    return dst + src + struct.pack("!H", ETHERTYPE) + marker.ljust(46, b".")


def capture_socket(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.settimeout(0.2)
    return sock


def find_frame(sock, marker, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if data[12:14] == struct.pack("!H", ETHERTYPE) and marker in data:
            return data
    return None


@pytest.fixture
def netdev():
    # /24: a classful 10.x tap would route all of 10.0.0.0/8 and could take the replies
    # of other 10.x taps on this host (other tests' guests).
    host = build_device(DeviceSpec("net", ip="10.213.7.1", prefix=24, mac=GUEST_MAC))
    guest = Guest(host.device, runners=[host.runner])
    tap = host.resources[0]
    yield host, guest, tap
    guest.close()
    host.close()


@needs_tap
def test_tap_is_configured_up_with_the_address(netdev):
    host, guest, tap = netdev
    (h,) = guest.handles
    assert h.device_type == 1
    assert h.features & (1 << net.F_MAC)
    assert bytes(h.read_config(i, 1) for i in range(6)) == bytes.fromhex("525400123456")
    flags = int(open(f"/sys/class/net/{tap.name}/flags").read(), 16)
    assert flags & 1, "interface is not up"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16s24x", tap.name.encode())
        addr = fcntl.ioctl(s.fileno(), 0x8915, ifreq)        # SIOCGIFADDR
    assert socket.inet_ntoa(addr[20:24]) == "10.213.7.1"
    assert netmask(tap.name) == "255.255.255.0"


@needs_tap
def test_without_a_prefix_the_address_is_classful_as_the_seeds():
    # 100.x: a class A address outside 10/8, so this /8 overlaps no other test's tap.
    host = build_device(DeviceSpec("net", ip="100.213.7.1"))
    try:
        tap = host.resources[0]
        assert netmask(tap.name) == "255.0.0.0"
        assert routes_of(tap.name) == [("100.0.0.0", "255.0.0.0")]
    finally:
        host.close()


def netmask(ifname):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16s24x", ifname.encode())
        return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891B, ifreq)[20:24])   # SIOCGIFNETMASK


def routes_of(ifname):
    """The IPv4 routes through ifname, from /proc/net/route: (destination, mask) texts."""
    found = []
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[0] == ifname:
                dest, mask = (socket.inet_ntoa(struct.pack("<I", int(x, 16))) for x in (fields[1], fields[7]))
                found.append((dest, mask))
    return found


@needs_tap
def test_two_taps_with_prefixes_route_only_their_own_subnets():
    # Classful, both would route 10.0.0.0/8 and the second would take the first's replies.
    a = build_device(DeviceSpec("net", ip="10.214.1.1", prefix=24))
    b = build_device(DeviceSpec("net", ip="10.214.2.1", prefix=24))
    try:
        ta, tb = a.resources[0], b.resources[0]
        assert (netmask(ta.name), netmask(tb.name)) == ("255.255.255.0", "255.255.255.0")
        assert routes_of(ta.name) == [("10.214.1.0", "255.255.255.0")]
        assert routes_of(tb.name) == [("10.214.2.0", "255.255.255.0")]
        assert "10.214.1.1/24" in a.description
    finally:
        a.close()
        b.close()


@needs_tap
def test_guest_frame_arrives_on_the_host_interface(netdev):
    host, guest, tap = netdev
    (h,) = guest.handles
    sock = capture_socket(tap.name)
    try:
        sent = frame(b"\xff" * 6, bytes.fromhex("525400123456"), b"guest-to-host")
        h.queue(net.TX).add_buffer([bytes(12), sent[:20], sent[20:]], [])
        h.kick(net.TX)
        got = find_frame(sock, b"guest-to-host")
        assert got is not None, "the guest's frame never reached the interface"
        assert got[:len(sent)] == sent
    finally:
        sock.close()


@needs_tap
def test_host_frame_arrives_in_a_guest_buffer_with_a_vnet_header(netdev):
    host, guest, tap = netdev
    (h,) = guest.handles
    rx = h.queue(net.RX)
    for _ in range(8):                       # the host may send its own frames (IPv6) too
        rx.add_buffer([], [1526])
    h.kick(net.RX)
    sock = capture_socket(tap.name)
    sent = frame(bytes.fromhex("525400123456"), b"\x02" * 6, b"host-to-guest")
    try:
        sock.send(sent)
    finally:
        sock.close()
    deadline = time.monotonic() + 5
    found = None
    while found is None and time.monotonic() < deadline:
        for used in rx.collect():
            if used.data[12 + 12:12 + 14] == struct.pack("!H", ETHERTYPE):
                found = used
        time.sleep(0.005)
    assert found is not None, "the host's frame never reached the guest"
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers = \
        struct.unpack_from("<BBHHHHH", found.data)
    assert gso_type == 0 and gso_size == 0            # VIRTIO_NET_HDR_GSO_NONE
    assert flags in (0, 2)                            # nothing, or DATA_VALID
    assert num_buffers == 1
    assert found.data[12:] == sent and found.len == 12 + len(sent)
    assert guest.irqs


@needs_tap
def test_tap_added_to_a_bridge():
    name = f"lgbr{os.getpid() % 100000}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCBRADDBR, name.encode() + b"\0")
        except OSError as e:
            pytest.skip(f"cannot create a bridge here: {e.strerror}")
        try:
            host = build_device(DeviceSpec("net", bridge=name))
            tap = host.resources[0]
            assert os.path.basename(os.readlink(f"/sys/class/net/{tap.name}/master")) == name
            assert "attached to bridge" in host.description
            host.close()
            with pytest.raises(LauncherError) as e:
                build_device(DeviceSpec("net", bridge=name + "x"))
            assert "can't add" in str(e.value)
        finally:
            fcntl.ioctl(s.fileno(), SIOCBRDELBR, name.encode() + b"\0")
