"""Cost of a port-I/O exit through the Python KVM backend, and of an ioeventfd kick.

    sudo .venv/bin/python bench/kvm_exits.py [N]

Guest tests/hw/guests/loop32.S runs N iterations of either `out %al,$0x80` (each an
exit: KVM_RUN returns, the launcher's loop hands the IoExit to a PciBus, complete(),
KVM_RUN again) or a 16-bit MMIO write bound to an eventfd with KVM_IOEVENTFD (no exit
to Python). Prints time per iteration and per second for both.

Then whole requests (tests/hw/guests/rngloop32.S via rngloop.py): the guest posts a
16-byte buffer to an rng device, kicks by ioeventfd, and waits for the used entry,
spinning on used.idx or halted until the device's interrupt; the host side is the
threaded runner waking on the eventfd, serving, and pulsing the irqchip. Printed
against the kick rate of the same run: the ratio is what the host side of a request
adds to the guest's own kick.
"""

import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "hw", "guests"))

import build  # noqa: E402
import rngloop  # noqa: E402
from lguest.backends.kvm import KvmBackend  # noqa: E402
from lguest.launcher import run_guest  # noqa: E402
from lguest.memory import GuestMemory  # noqa: E402
from lguest.pci.bus import PciBus  # noqa: E402

NOTIFY = 16 << 20


def timed_run(code, regs, bind_eventfd=False):
    memory = GuestMemory(2 << 20)
    memory.write(0x1000, code)
    bus = PciBus(memory)
    with KvmBackend(irqchip=False, quiet=True) as backend:
        backend.initialize(memory, 0x1000, mode="protected")
        for name, value in regs.items():
            backend.set_reg(name, value)
        fd = None
        if bind_eventfd:
            fd = os.eventfd(0, os.EFD_NONBLOCK)
            backend.vm.ioeventfd(fd, NOTIFY, 2, datamatch=0)
        started = time.perf_counter()
        run_guest(backend, bus)
        elapsed = time.perf_counter() - started
        count = os.eventfd_read(fd) if fd is not None else None
        if fd is not None:
            os.close(fd)
    memory.close()
    return elapsed, count


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as d:
        code = build.assemble("loop32", d)
    exits, _ = timed_run(code, {"ecx": n, "edi": 1})
    kicks, counted = timed_run(code, {"ecx": n, "edi": 0, "ebx": NOTIFY, "edx": 0}, True)
    assert counted == n, counted
    print(f"port-I/O exit round trip via Python: {exits / n * 1e6:7.1f} us  ({n / exits:9.0f} exits/s)")
    print(f"ioeventfd kick (no exit to Python):  {kicks / n * 1e6:7.1f} us  ({n / kicks:9.0f} kicks/s)")
    print(f"ratio: an exit costs {exits / kicks:.1f}x an ioeventfd kick (both include the guest's "
          f"own loop instructions, emulated on KVM-PVM)")
    requests(n, kicks / n)


def requests(n, kick):
    with tempfile.TemporaryDirectory() as d:
        for waitirq, how in ((False, "spinning on used.idx"), (True, "halted until the irq")):
            per = 1 / rngloop.rate(n, d, waitirq=waitirq)
            print(f"rng request, {how + ':':22} {per * 1e6:7.1f} us  ({1 / per:9.0f} requests/s)"
                  f"  = {per / kick:.1f}x a kick")


if __name__ == "__main__":
    main(sys.argv)
