"""Which device, with which host resources and which runner: for the CLI and `lguest run`.

#L:760 A served device is three things: the device model (L:300), the runner that
# calls it (L:732 for guest-driven devices; host/runner.py's ThreadedRunner where host
# input must wake a queue: console input from stdin, frames from a tap), and the host
# resources to close when we are done. Net devices can also be joined to each other
# instead of to a tap: a SOCK_DGRAM socketpair carries each frame, virtio-net header
# and all, from one guest's tx queue to the other's rx queue -- the header a sender's
# driver wrote is exactly the one the receiver's driver expects from a tap.
"""

import select
import socket
from dataclasses import dataclass, field

from ..devices.block import BlockDevice
from ..devices.console import INPUT, ConsoleDevice
from ..devices.net import RX, NetDevice
from ..devices.rng import RngDevice
from ..errors import LauncherError
from ..host.block import FileStore
from ..host.console import FdSink, FdSource
from ..host.rng import UrandomSource
from ..host.runner import ThreadedRunner
from .backend import VhostUserBackend
from .rings import DirectRunner


@dataclass
class Served:
    device: object
    runner_factory: object = DirectRunner
    resources: list = field(default_factory=list)

    def backend(self):
        return VhostUserBackend(self.device, runner_factory=self.runner_factory)

    def close(self):
        self.device.close()
        for resource in self.resources:
            resource.close()


def _woken_by(queue_index, fd):
    return lambda: ThreadedRunner(wake_fds={queue_index: fd})


def block(spec, name="vda"):
    """'disk.img' or 'disk.img,ro'."""
    path, _, option = spec.partition(",")
    if option not in ("", "ro", "rw"):
        raise LauncherError(f"--block={spec}: the only options are ro and rw")
    store = FileStore(path, read_only=option == "ro")
    return Served(BlockDevice(store, read_only=option == "ro", name=name), resources=[store])


def fs(path, tag, read_only=False):
    """A host directory as a virtio-fs device (L:391)."""
    from ..devices.fs import FsDevice
    from ..host.fs import SharedDirectory, raise_fd_limit
    raise_fd_limit()
    try:
        shared = SharedDirectory(path, read_only=read_only)
    except OSError as e:
        raise LauncherError(f"--fs={path}: {e.strerror}") from None
    try:
        return Served(FsDevice(shared, tag, name=f"fs:{tag}"))
    except ValueError as e:
        shared.close()
        raise LauncherError(f"--tag={tag}: {e}") from None


def console(in_fd=0, out_fd=1):
    device = ConsoleDevice(FdSink(out_fd), FdSource(in_fd), name="hvc0")
    return Served(device, _woken_by(INPUT, in_fd))


def rng():
    source = UrandomSource()
    return Served(RngDevice(source), resources=[source])


def net_tap(spec, mac=None):
    """'tap:NAME' or 'tap:NAME:IPADDR' (the host end's address)."""
    from ..host.tap import configure_device, open_tap
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "tap" or not parts[1]:
        raise LauncherError(f"--net={spec}: expected tap:NAME or tap:NAME:IPADDR")
    tap = open_tap(parts[1])
    if len(parts) == 3:
        configure_device(tap.name, parts[2])
    return Served(NetDevice(tap, mac=mac), _woken_by(RX, tap.fd), [tap])


class DatagramLink:
    """One end of a guest-to-guest cable, with the tap's interface (L:380)."""

    def __init__(self, sock):
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()

    def readv(self, views):
        return self.sock.recvmsg_into(views)[0]

    def writev(self, views):
        return self.sock.sendmsg(views)

    def will_block(self):
        return not select.select([self.fd], [], [], 0)[0]

    def close(self):
        self.sock.close()


def net_pair(macs=("52:54:00:00:00:01", "52:54:00:00:00:02")):
    """Two net devices whose frames go to each other."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    served = []
    for i, (sock, mac) in enumerate(zip((a, b), macs)):
        link = DatagramLink(sock)
        served.append(Served(NetDevice(link, mac=mac, name=f"net{i}"), _woken_by(RX, link.fd), [link]))
    return served

