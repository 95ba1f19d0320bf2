"""KVM exits: port-I/O exit round trips through our Python KVM layer next to the same
loop in C (bench/kvm_loop.c, compiled at bench time: the physical limit here), and
ioeventfd kicks per second.

The Python loop is what the launcher does per exit: KVM_RUN through lguest.backends.kvm
(Vcpu.run), decode struct kvm_run's io exit, take the byte out of the run page, and hand
the access to a PciBus (lguest.pci.bus.access, the one entry point every backend calls),
which finds no device on port 0x10 and ignores it. The guest is the same real-mode code
in both: `out dx, al` forever. (KVM-PVM here emulates guest ring 0, so each exit also
pays for emulating the guest's two instructions: that cost is in both loops alike.)
"""

import fcntl
import os
import struct
import subprocess
import time

from common import compile_c, median, say, Row

# Must match bench/kvm_loop.c: mov dx,0x10; l: out dx,al; jmp l
EXIT_CODE = bytes([0xBA, 0x10, 0x00, 0xEE, 0xEB, 0xFD])
# mov cx,0xffff; mov dx,0x20; l: out dx,al; loop l; hlt; jmp back to the start
KICK_CODE = bytes([0xB9, 0xFF, 0xFF, 0xBA, 0x20, 0x00, 0xEE, 0xE2, 0xFD, 0xF4, 0xEB, 0xF4])
EXIT_PORT, KICK_PORT = 0x10, 0x20
# struct kvm_ioeventfd { u64 datamatch, addr; u32 len; s32 fd; u32 flags; u8 pad[36]; }
IOEVENTFD_STRUCT = struct.Struct("<QQIiI36x")
IOEVENTFD_IOCTL = (1 << 30) | (IOEVENTFD_STRUCT.size << 16) | (0xAE << 8) | 0x79
IOEVENTFD_PIO, IOEVENTFD_DEASSIGN = 1 << 1, 1 << 2


def available():
    return os.path.exists("/dev/kvm")


def c_loop(exits, rounds):
    binary = compile_c("kvm_loop.c")
    done = subprocess.run([binary, str(exits), str(rounds)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"bench kvm: {binary} failed: {done.stderr}")
    out = {}
    for line in done.stdout.splitlines():
        name, count, ns = line.split()
        out[name] = int(count) / (int(ns) / 1e9)
    return out["exits"], out["kicks"]


class PyGuest:
    """One VM with the two code snippets, run through lguest.backends.kvm.vm."""

    def __init__(self):
        from lguest.backends.kvm import ioctls as K, vm as V
        from lguest.memory import GuestMemory
        from lguest.pci.bus import PciBus
        self.K = K
        self.system = V.KvmSystem()
        self.vm = self.system.create_vm()
        self.memory = GuestMemory(0x10000)
        self.memory.write(0x1000, EXIT_CODE)
        self.memory.write(0x1100, KICK_CODE)
        self.vm.add_memory(0, self.memory.size, self.memory.host_address)
        self.vcpu = self.vm.create_vcpu()
        self.bus = PciBus(self.memory)

    def start_at(self, rip):
        sregs = self.vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        self.vcpu.set_sregs(sregs)
        self.vcpu.set_regs({name: 0 for name in self.K.REG_NAMES} | {"rip": rip, "rflags": 2})

    def exits(self, n):
        """Exit round trips per second, each dispatched to the bus as the launcher does."""
        K, vcpu, page, access = self.K, self.vcpu, self.vcpu.run_page, self.bus.access
        from lguest.pci.bus import PIO
        io = K.RUN_IO.unpack_from
        self.start_at(0x1000)
        start = time.perf_counter()
        for _ in range(n):
            if vcpu.run() != K.EXIT_IO:
                raise SystemExit("bench kvm: unexpected exit")
            direction, size, port, count, data_offset = io(page, K.RUN_UNION)
            value = int.from_bytes(page[data_offset:data_offset + size], "little")
            access(PIO, port, size, direction == 1, value)
        return n / (time.perf_counter() - start)

    def kicks(self, rounds):
        """ioeventfd kicks per second (the guest loops; one hlt exit per 65535 kicks)."""
        K = self.K
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            self._ioeventfd(efd, 0)
            self.start_at(0x1100)
            start = time.perf_counter()
            for _ in range(rounds):
                if self.vcpu.run() != K.EXIT_HLT:
                    raise SystemExit("bench kvm: unexpected exit")
            elapsed = time.perf_counter() - start
            count = os.eventfd_read(efd)
            self._ioeventfd(efd, IOEVENTFD_DEASSIGN)
        finally:
            os.close(efd)
        return count / elapsed

    def _ioeventfd(self, efd, flags):
        # Vm.ioeventfd cannot be used as it is: ioctls.py binds IOEVENTFD to both the
        # struct and the ioctl number (the number wins), so the same ioctl is made here.
        arg = IOEVENTFD_STRUCT.pack(0, KICK_PORT, 1, efd, IOEVENTFD_PIO | flags)
        fcntl.ioctl(self.vm.fd, IOEVENTFD_IOCTL, arg)

    def close(self):
        self.vm.close()
        self.system.close()


def measure(runs=5, quick=False):
    if not available():
        say("kvm: no /dev/kvm, section skipped")
        return []
    exits, rounds = (5000, 1) if quick else (20000, 2)
    c_exits, c_kicks, py_exits, py_kicks = [], [], [], []
    guest = PyGuest()
    try:
        for i in range(runs):
            say(f"kvm: run {i + 1}/{runs}")
            ce, ck = c_loop(exits, rounds)
            c_exits.append(ce)
            c_kicks.append(ck)
            py_exits.append(guest.exits(exits))
            py_kicks.append(guest.kicks(rounds))
    finally:
        guest.close()
    return [
        Row("kvm", "port-I/O exit round trips, Python (KVM_RUN + decode + bus) vs C loop",
            median(py_exits), median(c_exits), "exits/s", ">= 0.1x", f"median of {runs}"),
        Row("kvm", "ioeventfd kicks, guest loop (no exit per kick)", median(py_kicks),
            median(c_kicks), "kicks/s", "", f"median of {runs}"),
    ]
