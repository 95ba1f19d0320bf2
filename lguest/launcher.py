"""The launcher: build the machine from a LaunchConfig, run the guest, clean up.

#L:002 The run loop is written once, against the Backend interface (L:001). Each
# exit is one of three things. An I/O access goes to the bus, the one entry point
# every backend calls (L:400's PciBus.access), and complete() finishes the guest's
# instruction with the answer. Guest death ends us with the guest's last words and,
# as the seed's errx(1, ...), exit status 1 (a simulated guest that finished its work
# reports 0). A reboot request re-executes the launcher with the same arguments,
# as the seed's restart_guest() did, once everything has been cleaned up. A signal
# (EINTR) inside run() just runs the guest again; the backends see to that.
"""

import os
import sys

from .backends.base import GuestDied, IoExit, RebootRequested
from .errors import GuestError, LauncherError


def run_guest(backend, bus):
    """Run until the guest dies or asks to reboot; return that exit."""
    while True:
        try:
            exit_ = backend.run()
        except InterruptedError:
            continue
        if isinstance(exit_, IoExit):
            result = bus.access(exit_.space, exit_.addr, exit_.size, exit_.is_write, exit_.value)
            exit_.complete(0 if exit_.is_write else result)
        elif isinstance(exit_, (GuestDied, RebootRequested)):
            return exit_
        else:
            raise LauncherError(f"backend {backend.name} returned {exit_!r}")
