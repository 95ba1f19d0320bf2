"""Console: MB/s of guest output through our virtio console (vhost-user, hvc0) next to
UML's own console (a tty line whose output is a host pipe: `con1=null,fd:N`).

The same guest command writes SIZE bytes with dd to its stdout, which /init points at
hvc0 (ours, `Guest(console=True)`) or tty1 (UML's). The host counts bytes as they
arrive and times from the first to the last.
"""

import time

from common import median, say, Row

from lguest.uml import kit as kit_module
from lguest.uml.guest import Guest, GuestFailed


def one_run(kit, console, size, lines=None):
    """MB/s of `size` bytes in 64 KiB writes, or with `lines`, lines/s of `seq 1 LINES`
    (on a tty, which hvc0 and tty1 both are, seq writes each line on its own)."""
    state = {"n": 0, "first": None, "last": None}

    def count(data):
        now = time.monotonic()
        if state["first"] is None:
            state["first"] = now
        state["n"] += len(data)
        state["last"] = now

    blocks = size // 65536
    command = f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null"
    if lines:
        command, size = f"seq 1 {lines}", len("".join(f"{i}\n" for i in range(1, lines + 1)))
    try:
        r = Guest(console=console, kit=kit, timeout=120, root="initramfs").run(
            command, on_stdout=count, text=False)
    except GuestFailed as e:
        # Counted as an incomplete run in the row's note, not hidden.
        say(f"console: {'virtio' if console else 'uml'} run failed after {state['n']} of "
            f"{size} bytes: {e}")
        return None
    if r.returncode != 0 or state["n"] != size:
        raise SystemExit(f"bench console: {'virtio' if console else 'uml'} run failed: "
                         f"status {r.returncode}, {state['n']} bytes of {size}")
    seconds = state["last"] - state["first"]
    return lines / seconds if lines else state["n"] / seconds / 1e6


def compare(kit, runs, label, **what):
    ours, theirs = [], []
    for i in range(runs):
        say(f"console: {label}: run {i + 1}/{runs}")
        ours.append(one_run(kit, True, **what))
        theirs.append(one_run(kit, False, **what))
    failed = ours.count(None) + theirs.count(None)
    ours, theirs = [x for x in ours if x], [x for x in theirs if x]
    if not ours or not theirs:
        raise SystemExit(f"no complete console run (ours {len(ours)}, UML's {len(theirs)})")
    note = f"median of {len(ours)}/{len(theirs)}" + (f", {failed} runs stalled" if failed else "")
    return median(ours), median(theirs), note


def measure(runs=5, quick=False):
    size, lines = (16 if quick else 64) << 20, 5000 if quick else 20000
    kit = kit_module.ensure_kit()
    bulk = compare(kit, runs, "bulk", size=size)
    by_line = compare(kit, runs, "lines", size=0, lines=lines)
    return [Row("console", f"guest stdout, dd {size >> 20} MiB, virtio console vs UML's fd console",
                bulk[0], bulk[1], "MB/s", "", bulk[2]),
            Row("console", f"guest stdout line by line, seq 1 {lines}: virtio console vs UML's "
                "fd console", by_line[0], by_line[1], "lines/s", "", by_line[2])]
