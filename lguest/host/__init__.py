"""The host side of the devices: the only place they meet files, ttys, taps and threads.

#L:941 The PCI launcher's devices: the factory's (L:940), each served by a
# ThreadedRunner (one thread per queue, L:900) that also wakes on stdin or the tap
# where the device takes host input. The transport takes the device and the runner;
# the launcher keeps the HostDevice and closes it at the end, which stops the
# threads, then closes files and restores the terminal.
"""

import logging
from dataclasses import dataclass

from .factory import BuiltDevice, HostResources, make_device
from .runner import ThreadedRunner

log = logging.getLogger("lguest.host")


@dataclass
class HostDevice(BuiltDevice):
    """A BuiltDevice with the runner that serves it; closing stops the runner first."""
    runner: object = None

    @classmethod
    def from_built(cls, built, runner):
        return cls(built.device, built.resources, built.wake_fds, built.description, runner)

    def close(self):
        self.runner.stop()
        super().close()


def build_device(spec, *, stdin=0, stdout=1, on_error=None, raw_terminal=True):
    """Open what `spec` (a lguest.config.DeviceSpec) needs and return a HostDevice."""
    built = make_device(spec, HostResources(stdin, stdout, raw_terminal=raw_terminal))
    return HostDevice.from_built(built, ThreadedRunner(wake_fds=built.wake_fds, on_error=on_error))
