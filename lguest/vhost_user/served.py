"""Devices served over vhost-user: the factory's device and the runner that serves it.

#L:760 A served device is three things: the device model with its host resources,
# from the one device factory (L:940), the runner that calls it (L:732 for
# guest-driven devices; host/runner.py's ThreadedRunner where host input must wake a
# queue: console input from stdin, frames from a tap), and the resources to close
# when we are done. Net devices can also be joined to each other
# instead of to a tap: a SOCK_DGRAM socketpair carries each frame, virtio-net header
# and all, from one guest's tx queue to the other's rx queue -- the header a sender's
# driver wrote is exactly the one the receiver's driver expects from a tap.
"""

import select
import socket
from dataclasses import dataclass, field

from ..config import DeviceSpec, parse_address, parse_block, parse_net_queues
from ..errors import LauncherError
from ..host.factory import HostResources, make_device
from ..host.runner import ThreadedRunner
from .backend import VhostUserTransport
from .polling import DEFAULT_POLL_US
from .rings import DirectRunner


@dataclass
class Served:
    device: object
    runner_factory: object = DirectRunner
    resources: list = field(default_factory=list)

    @classmethod
    def from_built(cls, built):
        """The factory's device (L:940), served directly unless host input wakes a queue."""
        wake_fds = dict(built.wake_fds)
        factory = (lambda: ThreadedRunner(wake_fds=wake_fds)) if wake_fds else DirectRunner
        return cls(built.device, factory, built.resources)

    def backend(self, poll_us=DEFAULT_POLL_US):
        """poll_us: busy-poll each kick fd that long before sleeping (L:734)."""
        return VhostUserTransport(self.device, runner_factory=self.runner_factory,
                                  poll_us=poll_us)

    def close(self):
        self.device.close()
        for resource in self.resources:
            resource.close()


def stop_serving(servers, items):
    """Close the servers (their listeners and sessions, so no ring thread is left
    serving), then the devices and what they opened, in that order."""
    for server in servers:
        server.close()
        server.backend.disconnect()
    for item in items:
        item.close()


# The console of `lguest vhost-user --console` is our stdin/stdout, but not the
# launcher's terminal: no raw mode, and ^C is the shell's as usual.
_HOST = HostResources(terminal=False)


def serve(spec, resources=_HOST):
    """The device a DeviceSpec asks for, ready to serve."""
    return Served.from_built(make_device(spec, resources))


def block(text, name="vda", num_queues=1):
    """'disk.img' or 'disk.img,ro' (or ',rw'): L:952's block syntax; num_queues request
    queues (multiqueue)."""
    path, read_only = parse_block(text)
    return serve(DeviceSpec("block", path=path, read_only=read_only, name=name,
                            queues=num_queues))


def fs(path, tag, read_only=False):
    """A host directory as a virtio-fs device (L:391), mounted in the guest by `tag`."""
    return serve(DeviceSpec("fs", path=path, tag=tag, read_only=read_only))


def console(in_fd=0, out_fd=1):
    return serve(DeviceSpec("console", name="hvc0"), HostResources(in_fd, out_fd, terminal=False))


def rng():
    return serve(DeviceSpec("rng"))


def parse_tap(text, mac=None):
    """'tap:NAME' or 'tap:NAME:IPADDR[/PREFIX]' (the host end's address, L:952), then
    optionally ',queues=N' (queue pairs, a tap queue each, L:385) -> a net DeviceSpec."""
    where, comma, options = text.partition(",")
    parts = where.split(":")
    if len(parts) not in (2, 3) or parts[0] != "tap" or not parts[1]:
        raise LauncherError(f"--net={text}: expected tap:NAME or tap:NAME:IPADDR[/PREFIX]"
                            "[,queues=N]")
    spec = DeviceSpec("net", tap=parts[1], mac=mac)
    if len(parts) == 3:
        spec.ip, spec.prefix = parse_address(parts[2])
    if comma:
        spec.queues = parse_net_queues(options)
    return spec


def net_tap(text, mac=None):
    return serve(parse_tap(text, mac))


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


class _Cable(HostResources):
    """Where a net device's "tap" is one end of a guest-to-guest cable."""

    def __init__(self, link):
        super().__init__(terminal=False)
        self.link = link

    def net_link(self, spec, opened):
        opened.append(self.link)
        return self.link, "guest-to-guest cable"


def net_pair(macs=("52:54:00:00:00:01", "52:54:00:00:00:02")):
    """Two net devices whose frames go to each other."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return [serve(DeviceSpec("net", mac=mac, name=f"net{i}"), _Cable(DatagramLink(sock)))
            for i, (sock, mac) in enumerate(zip((a, b), macs))]
