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


def one_run(kit, console, size):
    state = {"n": 0, "first": None, "last": None}

    def count(data):
        now = time.monotonic()
        if state["first"] is None:
            state["first"] = now
        state["n"] += len(data)
        state["last"] = now

    blocks = size // 65536
    try:
        r = Guest(console=console, kit=kit, timeout=60, root="initramfs").run(
            f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null", on_stdout=count, text=False)
    except GuestFailed as e:
        # Counted as an incomplete run in the row's note, not hidden.
        say(f"console: {'virtio' if console else 'uml'} run failed after {state['n']} of "
            f"{blocks * 65536} bytes: {e}")
        return None
    if r.returncode != 0 or state["n"] != blocks * 65536:
        raise SystemExit(f"bench console: {'virtio' if console else 'uml'} run failed: "
                         f"status {r.returncode}, {state['n']} bytes of {blocks * 65536}")
    return state["n"] / (state["last"] - state["first"]) / 1e6


def measure(runs=5, quick=False):
    size = (16 if quick else 64) << 20
    kit = kit_module.ensure_kit()
    ours, theirs = [], []
    for i in range(runs):
        say(f"console: run {i + 1}/{runs}")
        ours.append(one_run(kit, True, size))
        theirs.append(one_run(kit, False, size))
    failed = ours.count(None) + theirs.count(None)
    ours, theirs = [x for x in ours if x], [x for x in theirs if x]
    if not ours or not theirs:
        raise SystemExit(f"no complete console run (ours {len(ours)}, UML's {len(theirs)})")
    note = f"median of {len(ours)}/{len(theirs)}" + (f", {failed} runs stalled" if failed else "")
    return [Row("console", f"guest stdout, dd {size >> 20} MiB, virtio console vs UML's fd console",
                median(ours), median(theirs), "MB/s", "", note)]
