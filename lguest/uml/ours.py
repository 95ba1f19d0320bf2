"""Our vhost-user back-end, in this process, serving a UML guest's devices.

#L:861 The devices a guest asks for become our own device models (L:340 block, L:320
# console) each behind a vhost-user server on its own socket (L:740), each with its own
# thread, all in this process. In-process rather than a child process because the
# console's output must reach our stdout in order with everything else, and because a
# Python start-up per device would double the cost of `lguest run -- true`. The price
# is that a bug in a device thread is a bug in us: the servers are closed (and the
# sockets removed) on every way out of the `with`. The devices, their host resources
# and runners are the back-end's own factories (L:760): nothing here is device code.
"""

import os

from .. import virtio
from ..config import DeviceSpec
from ..host.factory import HostResources
from ..vhost_user import served as served_devices
from ..vhost_user.server import VhostUserServer
from . import servers


class CallbackSink:
    """The console's sink: hand every byte the guest printed to a callback."""

    def __init__(self, callback):
        self.callback = callback

    def write(self, views):
        total = 0
        for v in views:
            self.callback(bytes(v))
            total += len(v)
        return total


def console_to(callback):
    """A console whose output goes to a callback and which has no input (L:320)."""
    return served_devices.serve(DeviceSpec("console", name="hvc0"),
                                HostResources(console_sink=CallbackSink(callback)))


class OurServers:
    """Start one vhost-user server per device; `.devices` lists (socket, virtio id).

    `net` is the back-end's own spec (tap:NAME[:HOSTIP[/PREFIX]]), or an already built Served
    device (one end of a guest-to-guest pair, L:760). `cpus`: where the servers' threads
    run (None: anywhere; L:887)."""

    def __init__(self, blocks, workdir, *, console=False, console_sink=None, net=None,
                 fs=(), cpus=None):
        for spec in blocks:
            servers.parse_block_spec(spec)
        self.blocks = list(blocks)
        self.workdir = workdir
        self.console = console
        self.console_sink = console_sink or (lambda data: None)
        self.net = net
        self.fs = list(fs)              # [(host directory, tag, read_only)]
        self.cpus = cpus
        self.devices = []
        self._servers = []
        self._served = []

    def _serve(self, served, name, virtio_id, owned=True):
        if owned:
            self._served.append(served)
        path = os.path.join(self.workdir, f"{name}.sock")
        server = VhostUserServer(served.backend(), path)
        self._servers.append(server)
        server.serve_in_thread(self.cpus)
        self.devices.append((path, virtio_id))

    def _net(self):
        if isinstance(self.net, str):
            return served_devices.net_tap(self.net), True
        return self.net, False          # the caller owns a shared pair end

    def __enter__(self):
        try:
            for i, spec in enumerate(self.blocks):
                self._serve(served_devices.block(spec, name=f"vd{chr(97 + i)}"),
                            f"blk{i}", virtio.ID_BLOCK)
            if self.console:
                self._serve(console_to(self.console_sink), "console", virtio.ID_CONSOLE)
            if self.net is not None:
                served, owned = self._net()
                self._serve(served, "net", virtio.ID_NET, owned)
            for i, (path, tag, read_only) in enumerate(self.fs):
                self._serve(served_devices.fs(path, tag, read_only), f"fs{i}", virtio.ID_FS)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        served_devices.stop_serving(self._servers, self._served)
        self._servers, self._served = [], []
