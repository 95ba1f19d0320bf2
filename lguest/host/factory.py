"""The one device factory: from a DeviceSpec to a device and the host resources it needs.

#L:940 From a DeviceSpec (L:952) to a working device, for every transport: the PCI
# launcher, the simulated guest, `lguest run` and `lguest vhost-user` all build their
# devices here. The host resources are opened (the seed's setup_console,
# setup_block_file, setup_rng, setup_tun_net, and a shared directory for virtio-fs)
# and handed to the sans-I/O device; what comes back says which fd wakes which queue
# when the host has input for it (stdin for the console, the tap for net), and each
# transport makes its own runner from that (L:941). Where the resources come from is
# a choice of its own: HostResources opens real files, /dev/urandom, the terminal,
# taps and shared directories; InMemoryResources keeps disks in bytearrays and counts
# entropy (L:300), for runs that must come out the same every time.
#
# A new kind of device is one entry in DEVICE_KINDS: a function (spec, resources) ->
# BuiltDevice. Whatever it opened is closed if it fails half-way (`_closing_on_error`).
# Its options are fields of DeviceSpec, parsed in config.py (L:952); a host resource
# of a new kind is one more method on HostResources (and on InMemoryResources, or a
# LauncherError there); every transport then serves it with no change of its own.
"""

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..config import parse_mac
from ..devices.block import ID_BYTES, BlockDevice
from ..devices.console import INPUT, ConsoleDevice
from ..devices.inmemory import BufferSink, CountingEntropy, MemoryStore
from ..devices.net import RX, NetDevice
from ..devices.rng import RngDevice
from ..errors import LauncherError


@dataclass
class BuiltDevice:
    device: object
    resources: list = field(default_factory=list)   # each has close()
    wake_fds: dict = field(default_factory=dict)    # queue index -> fd with host input
    description: str = ""

    def close(self):
        self.device.close()
        for resource in reversed(self.resources):
            resource.close()
        self.resources = []


def make_device(spec, resources):
    """The device `spec` asks for, over `resources` (HostResources or InMemoryResources)."""
    maker = DEVICE_KINDS.get(spec.kind)
    if maker is None:
        raise LauncherError(f"unknown device kind {spec.kind!r} "
                            f"(known: {', '.join(sorted(DEVICE_KINDS))})")
    return maker(spec, resources)


@contextmanager
def _closing_on_error(opened):
    """Close everything in `opened` (in reverse) if the block fails; else leave it open."""
    try:
        yield opened
    except BaseException:
        for resource in reversed(opened):
            resource.close()
        raise


def _named(spec, **kwargs):
    return dict(kwargs, name=spec.name) if spec.name else kwargs


def _console(spec, resources):
    sink, source, opened, options = resources.console()
    with _closing_on_error(opened):           # the terminal goes back if this fails
        device = ConsoleDevice(sink, source, **_named(spec, **options))
    wake = {INPUT: source.fd} if source is not None else {}
    return BuiltDevice(device, opened, wake, "console")


def _block(spec, resources):
    store, serial = resources.block_store(spec)
    with _closing_on_error([store]) as opened:
        device = BlockDevice(store, read_only=spec.read_only, serial=serial,
                             num_queues=spec.queues, **_named(spec))
    mode = " (read-only)" if spec.read_only else ""
    return BuiltDevice(device, opened, {}, f"virtblock {device.capacity} sectors{mode}")


def _rng(spec, resources):
    source = resources.entropy()
    return BuiltDevice(RngDevice(source, **_named(spec)), [source], {}, "rng")


def _net(spec, resources):
    with _closing_on_error([]) as opened:
        if spec.mac is not None:
            parse_mac(spec.mac)            # a bad MAC fails before the tap is set up
        link, where = resources.net_link(spec, opened)
        device = NetDevice(link, mac=spec.mac, **_named(spec))
    # Each pair's rx queue wakes on its own tap queue (L:385).
    links = link if isinstance(link, list) else [link]
    return BuiltDevice(device, opened, {2 * i + RX: q.fd for i, q in enumerate(links)}, where)


def _fs(spec, resources):
    from ..devices.fs import FsDevice          # only a share pays for the FUSE tables
    shared = resources.shared_directory(spec)
    with _closing_on_error([shared]):
        try:
            device = FsDevice(shared, spec.tag, name=spec.name or f"fs:{spec.tag}")
        except ValueError as e:
            raise LauncherError(f"--tag={spec.tag}: {e}") from None
    mode = " (read-only)" if spec.read_only else ""
    # FsDevice.close() closes the share itself, so it is not a resource of its own.
    return BuiltDevice(device, [], {}, f"virtio-fs {spec.tag}: {spec.path}{mode}")


DEVICE_KINDS = {"console": _console, "block": _block, "rng": _rng, "net": _net, "fs": _fs}


class HostResources:
    """Real host resources: block files, /dev/urandom, stdin/stdout, taps.

    terminal: the console is the launcher's own terminal: raw mode (if raw_terminal)
    and ^C^C^C ends the launcher (L:324). console_sink: the console writes there
    instead of stdout and takes no input (the simulated guest, `lguest run`)."""

    def __init__(self, stdin=0, stdout=1, *, terminal=True, raw_terminal=True,
                 console_sink=None):
        self.stdin, self.stdout = stdin, stdout
        self.terminal, self.raw_terminal = terminal, raw_terminal
        self.console_sink = console_sink

    def console(self):
        from .console import FdSink, FdSource, RawTerminal, interrupt_launcher
        if self.console_sink is not None:
            closable = [self.console_sink] if hasattr(self.console_sink, "close") else []
            return self.console_sink, None, closable, {}
        if not self.terminal:
            return FdSink(self.stdout), FdSource(self.stdin), [], {}
        terminal = RawTerminal(self.stdin)
        if self.raw_terminal:
            terminal.enter()
        options = {"clock": time.monotonic, "on_abort": interrupt_launcher}
        return FdSink(self.stdout), FdSource(self.stdin), [terminal], options

    def block_store(self, spec):
        from .block import FileStore
        if not spec.path:
            raise LauncherError("--block needs a file name")
        store = FileStore(spec.path, read_only=spec.read_only)
        return store, os.path.basename(spec.path)[:ID_BYTES]   # GET_ID's serial

    def entropy(self):
        from .rng import UrandomSource
        return UrandomSource()

    def shared_directory(self, spec):
        """A host directory for virtio-fs; every inode the guest holds is an fd of ours."""
        from .fs import SharedDirectory, raise_fd_limit
        from .fs_root import HostRoot
        if not spec.path:
            raise LauncherError("a virtio-fs device needs a directory")
        raise_fd_limit()
        # A root's /proc, /sys and /dev are not served (L:396).
        kind = HostRoot if os.path.realpath(spec.path) == "/" else SharedDirectory
        try:
            return kind(spec.path, read_only=spec.read_only)
        except OSError as e:
            raise LauncherError(f"--fs={spec.path}: {e.strerror}") from None

    def net_link(self, spec, opened):
        """A tap, configured as the spec says; appended to `opened` as soon as it is open.
        With spec.queues > 1, a list: that many queues of one multi-queue tap.

        A new tap (spec.tap None) is always brought up, with the spec's address or
        none, or joined to a bridge; a named one (which may be the user's own, set up
        beforehand) is configured only when an address is given."""
        from .tap import add_to_bridge, configure_device, open_tap, open_tap_queues
        if spec.queues > 1:            # one tap queue per queue pair (L:385)
            link = open_tap_queues(spec.tap or "tap%d", spec.queues)
            opened.extend(link)
            tap = link[0]
        else:
            link = tap = open_tap(spec.tap) if spec.tap else open_tap()
            opened.append(tap)
        if spec.bridge is not None:
            add_to_bridge(tap.name, spec.bridge)
            configure_device(tap.name, None)
            return link, f"tun {tap.name}: attached to bridge: {spec.bridge}"
        if spec.ip or not spec.tap:
            configure_device(tap.name, spec.ip, spec.prefix)
        address = spec.ip and (spec.ip + (f"/{spec.prefix}" if spec.prefix is not None else ""))
        pairs = f", {spec.queues} queue pairs" if spec.queues > 1 else ""
        return link, f"tun {tap.name}: {address or 'no address'}{pairs}"


def simulated_disk(sectors):
    """The simulated guest's disk contents: a pattern each sector's bytes can be told by."""
    return bytes((i * 7 + i // 512) & 0xFF for i in range(512 * sectors))


class InMemoryResources:
    """Resources in memory (L:300): runs that come out the same every time.

    image(spec) -> bytes gives a block device's disk (default: simulated_disk of
    spec.sectors, 16 if unset); serial is every block device's GET_ID answer."""

    def __init__(self, console_sink=None, *, image=None, serial="sim"):
        self.console_sink = console_sink
        self.image = image or (lambda spec: simulated_disk(spec.sectors or 16))
        self.serial = serial

    def console(self):
        sink = self.console_sink if self.console_sink is not None else BufferSink()
        return sink, None, [sink], {}

    def block_store(self, spec):
        return MemoryStore(self.image(spec), read_only=spec.read_only), self.serial

    def entropy(self):
        return CountingEntropy()

    def net_link(self, spec, opened):
        raise LauncherError("no in-memory network device: give it a link (L:760)")

    def shared_directory(self, spec):
        raise LauncherError("no in-memory shared directory: virtio-fs serves a host "
                            "directory (L:391)")
