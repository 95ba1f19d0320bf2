"""Our vhost-user back-end, in this process, serving a UML guest's devices.

#L:861 The devices a guest asks for become our own device models (L:340 block, L:320
# console) each behind a vhost-user server on its own socket (L:740), each with its own
# thread, all in this process. In-process rather than a child process because the
# console's output must reach our stdout in order with everything else, and because a
# Python start-up per device would double the cost of `lguest run -- true`. The price
# is that a bug in a device thread is a bug in us: the servers are closed (and the
# sockets removed) on every way out of the `with`.
"""

import os

from ..devices.block import BlockDevice
from ..devices.console import ConsoleDevice
from ..errors import LauncherError
from ..vhost_user.backend import VhostUserBackend
from ..vhost_user.server import VhostUserServer
from . import servers


class FileStore:
    """A block device's file, as the store BlockDevice wants (L:340)."""

    def __init__(self, path, read_only):
        try:
            self.fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except OSError as e:
            raise LauncherError(f"cannot open block file {path}: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size

    def readv_at(self, offset, views):
        return os.preadv(self.fd, views, offset)

    def writev_at(self, offset, views):
        return os.pwritev(self.fd, views, offset)

    def flush(self):
        os.fsync(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _host_store(path, read_only):
    """The host layer's store if it is there (host/block.py), else ours."""
    try:
        from ..host.block import FileStore as HostFileStore
    except ImportError:
        return FileStore(path, read_only)
    return HostFileStore(path, read_only=read_only)


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


class OurServers:
    """Start one vhost-user server per device; `.devices` lists (socket, virtio id)."""

    def __init__(self, blocks, workdir, *, console=False, console_sink=None, net=None):
        if net:
            raise LauncherError("--net is not served to UML guests yet")
        self.blocks = [servers.parse_block_spec(b) for b in blocks]
        self.workdir = workdir
        self.console = console
        self.console_sink = console_sink or (lambda data: None)
        self.devices = []
        self._servers = []
        self._stores = []

    def _serve(self, device, name, virtio_id):
        path = os.path.join(self.workdir, f"{name}.sock")
        server = VhostUserServer(VhostUserBackend(device), path)
        self._servers.append(server)
        server.serve_in_thread()
        self.devices.append((path, virtio_id))

    def __enter__(self):
        try:
            for i, (path, read_only) in enumerate(self.blocks):
                store = _host_store(path, read_only)
                self._stores.append(store)
                self._serve(BlockDevice(store, read_only=read_only, name=f"vd{chr(97 + i)}"),
                            f"blk{i}", servers.VIRTIO_ID_BLOCK)
            if self.console:
                self._serve(ConsoleDevice(CallbackSink(self.console_sink), name="hvc0"),
                            "console", servers.VIRTIO_ID_CONSOLE)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for server in self._servers:
            server.close()
            server.backend.close()
        for store in self._stores:
            store.close()
        self._servers, self._stores = [], []
