"""The network device's host side: a tap device through /dev/net/tun.

#L:930 We open /dev/net/tun and tell it we want a tap device (ethernet frames, not IP
# packets), with no packet information prefix (IFF_NO_PI) and a virtio_net_hdr in
# front of every frame (IFF_VNET_HDR). The offloads the guest may use are the ones
# the tap accepts: checksum, TSO over IPv4 and IPv6, with ECN (TUNSETOFFLOAD). In
# virtio 1.0 the header always carries num_buffers, so the tap is told the header is
# 12 bytes (TUNSETVNETHDRSZ): the guest's frames then go through untouched.
"""

import errno
import fcntl
import os
import select
import socket
import struct

from ..config import parse_ip, prefix_netmask
from ..errors import LauncherError
from ..virtio import VNET_HDR_SIZE

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETNOCSUM = 0x400454C8
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCBRADDIF = 0x89A2
IFF_UP = 0x1
IFNAMSIZ = 16
IFREQ_SIZE = 40


def ifreq(name, payload=b""):
    """struct ifreq: the interface name, then a 24-byte union."""
    return struct.pack(f"{IFNAMSIZ}s", name.encode()) + payload.ljust(IFREQ_SIZE - IFNAMSIZ, b"\0")


class Tap:
    """An open tap: readv (BlockingIOError when empty), writev, will_block, for NetDevice."""

    def __init__(self, fd, name):
        self.fd, self.name = fd, name

    def readv(self, views):
        return os.readv(self.fd, views)

    def writev(self, views):
        return os.writev(self.fd, views)

    def will_block(self):
        ready, _, _ = select.select([self.fd], [], [], 0)
        return not ready

    def set_attached(self, on):
        """One queue of a multi-queue tap: take the host's frames (on) or not (TUNSETQUEUE).

        The kernel answers EINVAL when the queue already is so. That is no error here: a
        session served in a forked child (L:742) leaves the queues as its guest last
        wanted, and the next child starts from the parent's idea of them."""
        flag = IFF_ATTACH_QUEUE if on else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.fd, TUNSETQUEUE, ifreq("", struct.pack("H", flag)))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise LauncherError(f"{'attaching' if on else 'detaching'} a queue of "
                                    f"{self.name}: {e.strerror}") from None

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_tap(pattern="tap%d", *, multi_queue=False):
    """get_tun_device(): a new tap with the seed's flags, offloads and header size.
    multi_queue: one queue of a tap that may have several (IFF_MULTI_QUEUE)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise LauncherError(f"Failed to open {TUN_PATH}: {e.strerror}") from None
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if multi_queue else 0)
        result = _ioctl(fd, TUNSETIFF, ifreq(pattern, struct.pack("H", flags)), "configuring /dev/net/tun")
        _ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
               "Could not set features for tun device")
        # "We don't need checksums calculated for packets coming in this device: trust
        # us!" Newer kernels dropped the ioctl; the seed ignored its result too.
        try:
            fcntl.ioctl(fd, TUNSETNOCSUM, 1)
        except OSError:
            pass
        _ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE),
               f"Setting tun header size to {VNET_HDR_SIZE}")
    except BaseException:
        os.close(fd)
        raise
    name = result[:IFNAMSIZ].rstrip(b"\0").decode()
    return Tap(fd, name)


def open_tap_queues(pattern, count):
    """`count` queues of one multi-queue tap (the first names it; the others join it).
    All are closed if any fails."""
    first = open_tap(pattern, multi_queue=True)
    taps = [first]
    try:
        while len(taps) < count:
            taps.append(open_tap(first.name, multi_queue=True))
    except BaseException:
        for tap in taps:
            tap.close()
        raise
    return taps


def _ioctl(fd, request, arg, what):
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise LauncherError(f"{what}: {e.strerror}") from None


#L:931 configure_device(): give the host end an IPv4 address and bring it up, so
# packets will flow. "Don't read these incantations. Just cut & paste them like I
# did!" Any socket will do for the ioctls. Unlike the seed we keep the interface's
# other flags when we add IFF_UP. SIOCSIFADDR gives the address its classful netmask
# (10.x: /8), so two taps with 10.x addresses would both route all of 10.0.0.0/8 and
# the newer one would take the other's replies; a prefix (IP/24) sets the netmask
# after the address, so each tap routes only its own subnet.
def configure_device(ifname, ip=None, prefix=None):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        address = parse_ip(ip) if ip else bytes(4)
        sin = struct.pack("HH4s8x", socket.AF_INET, 0, address)
        _ioctl(sock.fileno(), SIOCSIFADDR, ifreq(ifname, sin), f"Setting {ifname} interface address")
        if ip and prefix is not None:
            mask = struct.pack("HH4s8x", socket.AF_INET, 0, prefix_netmask(prefix))
            _ioctl(sock.fileno(), SIOCSIFNETMASK, ifreq(ifname, mask),
                   f"Setting {ifname} netmask /{prefix}")
        current = _ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq(ifname), f"Reading {ifname} flags")
        flags = struct.unpack_from("H", current, IFNAMSIZ)[0] | IFF_UP
        _ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq(ifname, struct.pack("H", flags)),
               f"Bringing interface {ifname} up")


#L:932 add_to_bridge(): attach the host end of the tap to an existing bridge
# ("adapted from libbridge ... yet another James Morris contribution").
def add_to_bridge(ifname, bridge):
    if not bridge:
        raise LauncherError("must specify bridge name")
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise LauncherError(f"interface {ifname} does not exist!") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _ioctl(sock.fileno(), SIOCBRADDIF, ifreq(bridge, struct.pack("i", index)),
               f"can't add {ifname} to bridge {bridge}")
