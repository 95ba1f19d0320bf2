"""How long a ring thread busy-polls its kick fd before sleeping on it.

#L:734 Busy-polling. A ring thread asleep in poll() costs a wake-up per request: the
# kernel's futex and scheduler path and, in a virtual machine such as this one, a
# halted vCPU woken by its hypervisor -- tens of microseconds, which at one request in
# flight is most of a 4 KiB read or a console line. QEMU's answer (AioContext
# poll-max-ns) is to look again for a while before sleeping; ours is the same with
# poll(timeout=0) on the kick and stop fds (rings.py's KickWatcher), so the GIL is let
# go on every turn and the other rings' threads run.
#
# How long is adapted to the ring, as QEMU adapts it (util/aio-posix.c,
# adjust_polling_time, with poll-shrink 2): the window starts at zero, doubles (from
# POLL_START_NS) each time a kick came after the window but within the maximum, and
# halves when a kick took longer than the maximum. An idle or slow ring soon sleeps at
# once and costs no CPU; a busy one is caught while it is busy; one long gap does not
# cost the next requests their wake-ups, as QEMU's default (shrink to zero) would.
#
# What QEMU does not do, because it expects cores to spare: on a host whose CPUs are
# all wanted, a spinning thread only takes time from the guest it waits for. So we do
# not spin while tasks are waiting for a CPU -- Linux's pressure stall information,
# /proc/pressure/cpu, says for how long some task was runnable and not running; over
# the last PRESSURE_WINDOW_NS, more than PRESSURE_LIMIT of the time means no -- and a
# turn of the spin that took more than POLL_PREEMPTED_NS (someone else had our CPU, or
# the GIL) ends the spin and halves the window. Without PSI, the instantaneous count of
# runnable tasks in /proc/loadavg stands in.
#
# Measured (bench/RESULTS.md, "busy-polling"): on this 2-vCPU machine the gain is real
# at times and gone at others -- blk QD1 1,879 -> 11,729 IOPS with a fixed 200 us
# window in one run, 17,393 -> 8,608 in another; console lines 0.6x -> 1.5x of UML's
# own console, then no gain -- while the CPU per request rises 1.4-2.5x. A default
# must not cost CPU for a gain that comes and goes, so polling is off unless asked for
# (`--poll-us N`); this module makes asking safer, not free.
"""

import os

DEFAULT_POLL_US = 0                     # off: see "Measured" above
POLL_START_NS = 4_000
POLL_PREEMPTED_NS = 50_000
PRESSURE_WINDOW_NS = 10_000_000
PRESSURE_LIMIT = 0.10                   # of the window, some task waiting for a CPU
PRESSURE_STALE_NS = 200_000_000         # an older sample says nothing about now


def runnable_at_most_cpus(loadavg="/proc/loadavg", cpus=None):
    """True unless more tasks are runnable than the CPUs we may use: we are one of
    them, and so may be the guest producing its next request."""
    try:
        with open(loadavg, "rb") as f:
            runnable = int(f.read().split()[3].split(b"/")[0])
        return runnable <= (cpus or len(os.sched_getaffinity(0)))
    except (OSError, ValueError, IndexError, AttributeError):
        return True                   # no such file here: trust the window alone


class CpuPressure:
    """Whether the host has had a CPU to spare lately (L:734)."""

    def __init__(self, path="/proc/pressure/cpu", fallback=None):
        self.path = path
        self.fallback = fallback or runnable_at_most_cpus
        self._last = None             # (when, microseconds stalled) at the last look

    def _stalled_us(self):
        with open(self.path, "rb") as f:
            some = f.readline()       # "some avg10=... avg60=... avg300=... total=US"
        return int(some.rsplit(b"total=", 1)[1])

    def spare(self, now_ns):
        try:
            stalled = self._stalled_us()
        except (OSError, ValueError, IndexError):
            return self.fallback()
        last, self._last = self._last, (now_ns, stalled)
        if last is None or not 0 < now_ns - last[0] <= PRESSURE_STALE_NS:
            return self.fallback()    # no recent sample to compare with
        return (stalled - last[1]) * 1000 <= PRESSURE_LIMIT * (now_ns - last[0])


class AdaptivePoll:
    """The busy-poll window of one ring (L:734), in nanoseconds. spare_cpu(now_ns):
    whether spinning now takes no one's CPU (default: a CpuPressure of its own)."""

    def __init__(self, max_ns, spare_cpu=None):
        self.max_ns = max_ns
        self.window_ns = 0
        self._spare_cpu = spare_cpu or CpuPressure().spare
        self._spare = True
        self._checked_ns = None

    def usable_window(self, now_ns):
        """The window to spin for now: 0 while the host has no CPU to spare."""
        if not self.window_ns:
            return 0
        if self._checked_ns is None or now_ns - self._checked_ns >= PRESSURE_WINDOW_NS:
            self._spare = self._spare_cpu(now_ns)
            self._checked_ns = now_ns
        return self.window_ns if self._spare else 0

    def waited(self, waited_ns):
        """Adapt the window to a kick that came `waited_ns` after the wait began."""
        if waited_ns <= self.window_ns:
            return                                  # caught while polling: keep it
        if waited_ns > self.max_ns:
            self.window_ns //= 2                    # would have to poll too long
        else:
            self.window_ns = min(self.max_ns, self.window_ns * 2 or POLL_START_NS)

    def preempted(self):
        self.window_ns //= 2
