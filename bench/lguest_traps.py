"""What one /dev/lguest trap costs in Python: our run loop next to a bare syscall loop.

    .venv/bin/python bench/lguest_traps.py [--scale F] [--runs N] [--profile]

A boot of the lguest guest on a real lguest host is ~141,000 traps: ~100,000 `in
$0x42,%al` (the guest's PIT calibration, at CPL 1), ~20,000 pairs of `out %eax,(%dx)`
to 0xCF8/0xCFC (the guest's emerg_wr early console: a character per pair, through the
VIRTIO_PCI_CAP_PCI_CFG window of the console) and some MMIO movs into BAR0. This script
feeds a stream of that shape (scaled by --scale) to

  ours:  LguestBackend + the launcher's run_guest + a PciBus with a console, exactly
         as `lguest run` drives /dev/lguest;
  floor: a loop making exactly the seed's (C launcher's) pread/pwrite calls for the
         same stream (3.3 GETREG and 1.7 SETREG a trap) with no decoding at all:
         what any Python launcher doing the seed's syscalls must pay at least.

Both talk to the same StreamKernel, a minimal stand-in for /dev/lguest (the word size
of a real host, 4 bytes). Natively, a syscall here costs the Python call only; on the
real host each is also a kernel entry, paid by C alike. --profile runs cProfile over
ours and groups its time by what a trap spends it on.
"""

import argparse
import cProfile
import errno
import os
import pstats
import statistics
import struct
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lguest import x86  # noqa: E402
from lguest.backends.lguest_dev import LguestBackend  # noqa: E402
from lguest.devices.base import InlineRunner  # noqa: E402
from lguest.devices.console import ConsoleDevice  # noqa: E402
from lguest.launcher import run_guest  # noqa: E402
from lguest.memory import GuestMemory  # noqa: E402
from lguest.pci.bus import PciBus  # noqa: E402
from lguest.pci.config import FIELDS  # noqa: E402
from lguest.pci.transport import DEVICE_CFG_OFFSET  # noqa: E402

REG = {name: off // 4 for name, off in x86.USER_REGS_OFFSETS.items()}
WORD = struct.Struct("<I")
PENDING = struct.Struct("<B7sI")
GUEST_KERNEL_CS = 0x61
CONSOLE_SLOT = 1
EMERG_WR = 8


def _insn(code, follow):
    """7 bytes at eip: the instruction and what follows it in the guest's text."""
    return (code + follow)[:7].ljust(7, b"\x90")


def config_address(register_offset):
    return 0x80000000 | (CONSOLE_SLOT << 11) | (register_offset & 0xFC)


def boot_stream(scale=1.0, mmio_base=None):
    """[(pending record, ((register index, value), ...))]: a boot's traps, in order."""
    pit = int(100_000 * scale)
    chars = int(20_000 * scale)
    mmio = int(2_000 * scale)
    events = []
    set_regs = lambda **regs: tuple((REG[k], v) for k, v in regs.items())  # noqa: E731

    out_cf8 = _insn(x86.encode_port("out", 4, None), b"\xba\xfc\x0c\x00\x00")   # mov $0xcfc,%edx
    out_cfc = _insn(x86.encode_port("out", 4, None), b"\x5d\xc3")               # pop %ebp; ret

    def config_write(register, value, eip=0xC1020000):
        events.append((PENDING.pack(13, out_cf8, 0),
                       set_regs(edx=0xCF8, eax=config_address(register), eip=eip)))
        events.append((PENDING.pack(13, out_cfc, 0),
                       set_regs(edx=0xCFC, eax=value, eip=eip + 6)))

    # The window onto the console's emerg_wr, set once (the guest's set_cfg_window()).
    config_write(FIELDS["cfg_access.bar"][0], 0)
    config_write(FIELDS["cfg_access.length"][0], 4)
    config_write(FIELDS["cfg_access.offset"][0], DEVICE_CFG_OFFSET + EMERG_WR)
    pit_read = PENDING.pack(13, _insn(x86.encode_port("in", 1, 0x42), b"\xa8\x20\x74\xfa"), 0)
    text = b"Linux version 4.9.154 (lguest guest) #1 SMP\n"
    data_register = FIELDS["cfg_access.pci_cfg_data"][0]
    status_load = _insn(x86.encode_mov("load", 1, 0, mod=1, rm=3, disp=0x14), b"\xc3")
    select_store = _insn(x86.encode_mov("store", 2, 2, mod=1, rm=3, disp=0x16), b"\xc3")
    mmio_base = mmio_base or 0
    for i in range(max(pit, chars, mmio)):
        if i < pit:
            events.append((pit_read, set_regs(eip=0xC1010000, eax=0x1000 + (i & 0xFF))))
        if i < chars:
            config_write(data_register, text[i % len(text)])
        if i < mmio:
            events.append((PENDING.pack(14, status_load, mmio_base + 0x14),
                           set_regs(ebx=mmio_base, eip=0xC1030000)))
            events.append((PENDING.pack(14, select_store, mmio_base + 0x16),
                           set_regs(ebx=mmio_base, edx=i & 1, eip=0xC1030010)))
    return events


class StreamKernel:
    """/dev/lguest for a scripted stream: a read runs the "guest" to its next trap
    (setting the registers the stream says), GETREG makes the next read a register."""

    FD = 1000

    def __init__(self, events):
        self.events = iter(events)
        self.regs = [0] * 17
        self.regs[REG["xcs"]] = GUEST_KERNEL_CS
        self.reg_read = None
        self.traps = 0
        self.requests = [0] * 8
        self.reinjected = []
        self.dead = False

    def open(self, path, flags):
        return self.FD

    def close(self, fd):
        pass

    def pread(self, fd, size, offset):
        if self.reg_read is not None:
            index, self.reg_read = self.reg_read, None
            return WORD.pack(self.regs[index])
        if self.dead:
            return b"stream finished\0"[:size]
        event = next(self.events, None)
        if event is None:
            self.dead = True
            raise OSError(errno.ENOENT, "guest died")
        record, updates = event
        regs = self.regs
        for index, value in updates:
            regs[index] = value
        self.traps += 1
        return record

    def pwrite(self, fd, data, offset):
        # Words are 4-byte little-endian; request numbers and register offsets are < 256.
        request = data[0]
        self.requests[request] += 1
        if request == 5:                       # LHREQ_GETREG
            self.reg_read = data[4] >> 2
            return 8
        if request == 6:                       # LHREQ_SETREG
            self.regs[data[4] >> 2] = WORD.unpack_from(data, 8)[0]
            return 12
        if request == 7:                       # LHREQ_TRAP
            self.reinjected.append(data[4])
        return len(data)


class NullSink:
    """The console's output, kept as a count: the stream's text is the same every run."""

    def __init__(self):
        self.count = 0

    def write(self, views):
        self.count += sum(len(v) for v in views)


def ours(events, memory):
    """Our launcher's path: LguestBackend, run_guest, PciBus with the console."""
    kernel = StreamKernel(events)
    backend = LguestBackend(word_size=4, opener=kernel.open, pread=kernel.pread,
                            pwrite=kernel.pwrite, closer=kernel.close, warn=lambda m: None)
    bus = PciBus(memory)
    sink = NullSink()
    bus.add_device(ConsoleDevice(sink), InlineRunner())
    backend.attach_bus(bus)
    # A real host's addresses are 32-bit: stand in for where the guest's RAM is mapped.
    mapped = SimpleNamespace(size=memory.size, host_address=0xB0000000)
    backend.initialize(mapped, 0x1000000, mmio_limit=bus.mmio_limit)
    started = time.perf_counter_ns()
    run_guest(backend, bus)
    elapsed = time.perf_counter_ns() - started
    backend.close()
    return elapsed, kernel, sink.count


def floor(events):
    """The seed's syscalls for each trap of the stream, and nothing else."""
    kernel = StreamKernel(events)
    pread, pwrite, fd = kernel.pread, kernel.pwrite, kernel.FD
    words = struct.Struct("<II")
    get = {name: words.pack(5, off) for name, off in x86.USER_REGS_OFFSETS.items()}
    setreg = struct.Struct("<III")
    started = time.perf_counter_ns()
    while True:
        try:
            record = pread(fd, 12, 0)
        except OSError:
            break
        trap, insn = record[0], record[1]
        pwrite(fd, get["xcs"] if trap == 13 else get["ebx"], 0)
        pread(fd, 4, 0)
        if trap == 13 and insn in (0xEE, 0xEF, 0xEC, 0xED):
            pwrite(fd, get["edx"], 0)
            pread(fd, 4, 0)
        if trap == 13:
            pwrite(fd, get["eax"], 0)
            pread(fd, 4, 0)
            if insn in (0xE4, 0xE5, 0xEC, 0xED):
                pwrite(fd, setreg.pack(6, 24, 0xFF), 0)
        pwrite(fd, get["eip"], 0)
        eip = pread(fd, 4, 0)
        pwrite(fd, setreg.pack(6, 48, WORD.unpack(eip)[0] + 2), 0)
    elapsed = time.perf_counter_ns() - started
    return elapsed, kernel


CATEGORIES = (
    ("stream kernel / syscalls", ("bench/lguest_traps.py", "built-in method posix.p")),
    ("register round trips (get_reg/set_reg/_advance)", ("lguest_dev.py:get_reg",
                                                        "lguest_dev.py:set_reg",
                                                        "lguest_dev.py:_advance")),
    ("trap dispatch and exit (run, _emulate_*, Plan, TrapExit)", ("lguest_dev.py",)),
    ("counting wrappers (bench only)", ("lguest_host_side.py",)),
    ("decode (x86.py)", ("lguest/x86.py",)),
    ("bus dispatch (pci/)", ("lguest/pci/",)),
    ("devices (console, block, runner)", ("lguest/devices/", "lguest/host/", "virtqueue")),
    ("logging", ("logging/",)),
    ("run loop (launcher.py)", ("launcher.py",)),
    ("builtins (struct, int, bytes, len ...)", ("~:",)),
)


def group_profile(stats):
    """{category: seconds of own time} from a pstats.Stats, by CATEGORIES (first match)."""
    groups = dict.fromkeys([name for name, _ in CATEGORIES] + ["other"], 0.0)
    for (path, _, func), (_, _, tottime, _, _) in stats.stats.items():
        where = f"{path}:{func}"
        if path == "~":
            where = f"~:{func}"
        for name, needles in CATEGORIES:
            if any(n in where for n in needles):
                groups[name] += tottime
                break
        else:
            groups["other"] += tottime
    return groups


def print_profile(groups, traps):
    total = sum(groups.values())
    print(f"profile: {traps} traps, {total / traps * 1e6:.2f} us/trap under cProfile "
          "(inflated; read the shares):")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * seconds / total:5.1f}%  {seconds / traps * 1e6:6.2f} us  {name}")


def profile(events, memory, top=20):
    """cProfile over ours, own time grouped by what it is spent on, per trap."""
    profiler = cProfile.Profile()
    profiler.enable()
    _, kernel, _ = ours(events, memory)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print_profile(group_profile(stats), kernel.traps)
    print("top functions by own time:")
    stats.sort_stats("tottime").print_stats(top)


def measure(scale, runs):
    """Alternating runs of ours and the floor: medians and ranges in ns per trap."""
    memory = GuestMemory(16 << 20)
    bus = PciBus(memory)
    bus.add_device(ConsoleDevice(NullSink()), InlineRunner())
    events = boot_stream(scale, bus.devices[0].mmio_addr)
    ours_ns, floor_ns, syscalls = [], [], None
    try:
        for _ in range(runs):
            elapsed, kernel, printed = ours(events, memory)
            ours_ns.append(elapsed / kernel.traps)
            syscalls = (kernel.traps, kernel.requests[5], kernel.requests[6], printed)
            elapsed, kernel = floor(events)
            floor_ns.append(elapsed / kernel.traps)
    finally:
        memory.close()
    return ours_ns, floor_ns, syscalls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.2, help="fraction of a boot's traps (default 0.2)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="also cProfile ours")
    args = p.parse_args(argv)
    ours_ns, floor_ns, (traps, getregs, setregs, printed) = measure(args.scale, args.runs)
    o, f = statistics.median(ours_ns), statistics.median(floor_ns)
    print(f"{traps} traps a run ({getregs / traps:.2f} GETREG, {setregs / traps:.2f} SETREG a trap, "
          f"{printed} console bytes), {args.runs} runs alternating")
    print(f"ours : {o / 1000:6.2f} us/trap (range {min(ours_ns) / 1000:.2f}-{max(ours_ns) / 1000:.2f})")
    print(f"floor: {f / 1000:6.2f} us/trap (range {min(floor_ns) / 1000:.2f}-{max(floor_ns) / 1000:.2f})")
    print(f"ours/floor {o / f:.2f}x; ours spends {(o - f) / 1000:.2f} us a trap beyond the seed's syscalls")
    if args.profile:
        memory = GuestMemory(16 << 20)
        try:
            bus = PciBus(memory)
            bus.add_device(ConsoleDevice(NullSink()), InlineRunner())
            profile(boot_stream(args.scale, bus.devices[0].mmio_addr), memory)
        finally:
            memory.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
