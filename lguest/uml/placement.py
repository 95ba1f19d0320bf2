"""Where a UML guest and its device back-ends run: one CPU shared, by default.

#L:887 A UML guest is one host process (its programs are more, but only one of them
# runs at a time), and each of its requests is a ping-pong with a back-end thread: the
# guest kicks, waits, our thread serves and interrupts, the guest goes on. Left to the
# scheduler, the woken thread goes to whichever CPU is idle, so every request wakes an
# idle CPU twice -- in a virtual machine whose idle vCPUs halt (this one's cpuidle
# driver is `none`) that is a trip through the hypervisor each time. On one shared CPU
# the two take turns and nothing idles: measured here, a stat storm took 1.0 s instead
# of 1.6, 4 KiB reads at QD1 ran at 1.8x the IOPS, a boot was 0.3 s shorter, and nothing
# measured got slower (docs/uml.md, "One CPU", has the table). So by default the guest
# and its back-ends share the CPU the launcher is on as the guest boots (the scheduler
# had room there); `--cpus all` leaves them to the scheduler, `--cpus LIST` (taskset's
# syntax: 0,2-3) puts them on those CPUs. Guests booted by one process (run_pair's
# two, a test suite's Guests in threads) are spread: "one" takes a CPU that none of
# this process's running guests has, while there is one.
"""

import os
import threading
from collections import Counter

from ..errors import LauncherError

ONE, ALL = "one", "all"
MAX_CPU = 8191                  # Linux's NR_CPUS at its largest


def allowed_cpus():
    """The CPUs this process may run on."""
    return frozenset(os.sched_getaffinity(0))


def parse_cpus(text):
    """--cpus: "one", "all", or a list of CPUs such as 0,2-3; ValueError if not."""
    text = text.strip()
    if text in (ONE, ALL):
        return text
    cpus = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{text!r} is not 'one', 'all' or a list of CPUs such as 0,2-3")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"{part!r} is not a range of CPUs (it runs backwards)")
        if last > MAX_CPU:
            raise ValueError(f"CPU {last} is past the last CPU Linux can have ({MAX_CPU})")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def current_cpu():
    """The CPU this thread last ran on (field 39 of /proc/thread-self/stat), or None."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            # The command name (field 2) may hold spaces; the fields after it do not.
            return int(f.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


# CPUs given to this process's running guests by claim(), and how many each.
_claimed = Counter()
_claimed_lock = threading.Lock()


def claim(spec):
    """resolve() for a guest about to boot, spreading "one" over the CPUs our other
    running guests do not have; release() the result when the guest is gone."""
    with _claimed_lock:
        if spec == ONE:
            allowed = allowed_cpus()
            fewest = min(_claimed[cpu] for cpu in allowed)
            free = {cpu for cpu in allowed if _claimed[cpu] == fewest}
            cpus = resolve(ONE, allowed=free)
        else:
            cpus = resolve(spec)
        if cpus is not None:
            _claimed.update(cpus)
        return cpus


def release(cpus):
    """The guest claim() placed on `cpus` is gone."""
    if cpus is None:
        return
    with _claimed_lock:
        for cpu in cpus:
            if _claimed[cpu] > 0:
                _claimed[cpu] -= 1


def resolve(spec, allowed=None):
    """The CPU set a guest and its back-ends get, or None for the scheduler's choice.
    spec: what parse_cpus() gave; LauncherError for CPUs we may not use."""
    allowed = allowed_cpus() if allowed is None else frozenset(allowed)
    if spec == ALL:
        return None
    if spec == ONE:
        cpu = current_cpu()
        return frozenset({cpu if cpu in allowed else min(allowed)})
    outside = sorted(set(spec) - allowed)
    if outside:
        raise LauncherError(f"CPU {', '.join(map(str, outside))} is not one this process may "
                         f"run on ({describe(allowed)})")
    return frozenset(spec)


def describe(cpus):
    """0,2-3 for {0, 2, 3}: the list the way taskset and /proc print it."""
    ranges, run = [], []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            ranges.append(run)
        run = [cpu]
    if run:
        ranges.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in ranges)


def pin_this_thread(cpus):
    """Keep the calling thread (and every thread and process it starts) on `cpus`."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
