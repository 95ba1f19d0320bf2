"""KVM exits: port-I/O exit round trips through the Python launcher next to a C loop
doing the same KVM_RUN/exit cycle on the same guest (the physical limit here), and
ioeventfd kicks per second, both ways.

Python: bench/kvm_exits.py's timed_run, i.e. KvmBackend + the launcher's run loop
(run_guest) handing every IoExit to a PciBus. C: bench/kvm_loop.c, compiled at bench
time, running the same bytes (tests/hw/guests/loop32.S) in flat 32-bit protected mode.
On KVM-PVM the guest's ring 0 is emulated, so both pay for emulating its loop.

Whole requests: tests/hw/guests/rngloop.py runs rngloop32.S (post a buffer to an rng
device, kick by ioeventfd, wait for the used entry: spinning, or halted until the
interrupt) through the launcher. There is no reference for a whole request (no C
version of the host's answer), so those rows have no ratio; the same runs' bare kick
rate is printed beside them for scale only.
"""

import os
import subprocess
import sys
import tempfile

from common import ROOT, compile_c, median, say, Row

sys.path.insert(0, os.path.join(ROOT, "tests", "hw", "guests"))


def available():
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def c_loop(binary, guest_bin, n):
    done = subprocess.run([binary, guest_bin, str(n)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench kvm: {binary} failed: {done.stderr}")
    rates = {}
    for line in done.stdout.splitlines():
        name, count, ns = line.split()
        rates[name] = int(count) / (int(ns) / 1e9)
    return rates["exits"], rates["kicks"]


def py_loop(code, n):
    import kvm_exits
    exits, _ = kvm_exits.timed_run(code, {"ecx": n, "edi": 1})
    kicks, counted = kvm_exits.timed_run(
        code, {"ecx": n, "edi": 0, "ebx": kvm_exits.NOTIFY, "edx": 0}, True)
    if counted != n:
        raise SystemExit(f"bench kvm: the eventfd counted {counted} kicks of {n}")
    return n / exits, n / kicks


def py_requests(n):
    import rngloop
    with tempfile.TemporaryDirectory(prefix="lguest-bench-rngloop-") as d:
        return tuple(rngloop.rate(n, d, waitirq=w) for w in (False, True))


def measure(runs=5, quick=False):
    if not available():
        say("kvm: no usable /dev/kvm, section skipped")
        return []
    import build
    n = 5000 if quick else 20000
    binary = compile_c("kvm_loop.c")
    with tempfile.TemporaryDirectory(prefix="lguest-bench-kvm-") as d:
        code = build.assemble("loop32", d)
        guest_bin = os.path.join(d, "loop32.bin")
        c, py, req = [], [], []
        for i in range(runs):
            say(f"kvm: run {i + 1}/{runs}")
            c.append(c_loop(binary, guest_bin, n))
            py.append(py_loop(code, n))
            req.append(py_requests(n))
    note = f"median of {runs}, {n} per run"
    kicks = median(k for _, k in py)
    # A request is a kick plus the host's whole answer; there is no C version of the
    # answer, and a request rate over a kick rate compares different things: no ratio,
    # the kick rate is only said for scale.
    scale = f"{note}; no reference: for scale, the same runs' bare kicks {kicks:,.0f}/s"
    return [
        Row("kvm", "port-I/O exit round trips: launcher (KvmBackend+run_guest+PciBus) vs C loop",
            median(e for e, _ in py), median(e for e, _ in c), "exits/s", ">= 0.1x", note),
        # No launcher code runs per kick: KVM signals the eventfd inside the kernel. Both
        # sides are the same guest loop in KVM_RUN; the row checks that binding the notify
        # address from Python costs nothing, not the launcher's speed.
        Row("kvm", "ioeventfd kicks (KVM_IOEVENTFD-bound notify, no exit, no launcher code per "
            "kick): KVM_RUN entered from KvmBackend vs from C", kicks,
            median(k for _, k in c), "kicks/s", "", note),
        Row("kvm", "rng requests (ioeventfd kick, runner thread, device, irq), guest spins on "
            "used.idx", median(s for s, _ in req), None, "requests/s", "", scale),
        Row("kvm", "rng requests, guest halts until the device's interrupt",
            median(h for _, h in req), None, "requests/s", "", scale),
    ]
