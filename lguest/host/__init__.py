"""The host side of the devices: the only place they meet files, ttys, taps and threads.

#L:940 From a command-line DeviceSpec to a working device: the host resources are
# opened here (the seed's setup_console, setup_block_file, setup_rng, setup_tun_net),
# handed to the sans-I/O device, and a ThreadedRunner is made to serve its queues,
# waking on stdin or the tap where the device takes host input. The transport (PCI
# or vhost-user) takes the device and the runner; the launcher keeps the HostDevice
# and closes it at the end, which stops the threads, then closes files and restores
# the terminal.
"""

import logging
import os
import time
from dataclasses import dataclass, field

from ..devices.block import BlockDevice
from ..devices.console import INPUT, ConsoleDevice
from ..devices.net import RX, NetDevice
from ..devices.rng import RngDevice
from ..errors import LauncherError
from .block import FileStore
from .console import FdSink, FdSource, RawTerminal, interrupt_launcher
from .rng import UrandomSource
from .runner import ThreadedRunner
from .tap import add_to_bridge, configure_device, open_tap

log = logging.getLogger("lguest.host")


@dataclass
class HostDevice:
    device: object
    runner: ThreadedRunner
    resources: list = field(default_factory=list)   # each has close()
    description: str = ""

    def close(self):
        self.runner.stop()
        self.device.close()
        for resource in reversed(self.resources):
            resource.close()
        self.resources = []


def build_device(spec, *, stdin=0, stdout=1, on_error=None, raw_terminal=True):
    """Open what `spec` (a lguest.config.DeviceSpec) needs and return a HostDevice."""
    builder = _BUILDERS.get(spec.kind)
    if builder is None:
        raise LauncherError(f"unknown device kind {spec.kind!r}")
    return builder(spec, stdin=stdin, stdout=stdout, on_error=on_error, raw_terminal=raw_terminal)


def _console(spec, *, stdin, stdout, on_error, raw_terminal):
    terminal = RawTerminal(stdin)
    if raw_terminal:
        terminal.enter()
    device = ConsoleDevice(FdSink(stdout), FdSource(stdin), clock=time.monotonic,
                           on_abort=interrupt_launcher)
    runner = ThreadedRunner(wake_fds={INPUT: stdin}, on_error=on_error)
    return HostDevice(device, runner, [terminal], "console")


def _block(spec, *, on_error, **_):
    if not spec.path:
        raise LauncherError("--block needs a file name")
    store = FileStore(spec.path, read_only=spec.read_only)
    serial = os.path.basename(spec.path)[:20]
    device = BlockDevice(store, read_only=spec.read_only, serial=serial)
    mode = " (read-only)" if spec.read_only else ""
    return HostDevice(device, ThreadedRunner(on_error=on_error), [store],
                      f"virtblock {device.capacity} sectors{mode}")


def _rng(spec, *, on_error, **_):
    source = UrandomSource()
    return HostDevice(RngDevice(source), ThreadedRunner(on_error=on_error), [source], "rng")


def _net(spec, *, on_error, **_):
    device = None
    tap = open_tap()
    try:
        device = NetDevice(tap, mac=spec.mac)      # a bad MAC fails before the tap is set up
        if spec.bridge is not None:
            add_to_bridge(tap.name, spec.bridge)
            configure_device(tap.name, None)
            where = f"attached to bridge: {spec.bridge}"
        else:
            configure_device(tap.name, spec.ip)
            where = spec.ip or "no address"
    except BaseException:
        tap.close()
        raise
    runner = ThreadedRunner(wake_fds={RX: tap.fd}, on_error=on_error)
    return HostDevice(device, runner, [tap], f"tun {tap.name}: {where}")


_BUILDERS = {"console": _console, "block": _block, "rng": _rng, "net": _net}
