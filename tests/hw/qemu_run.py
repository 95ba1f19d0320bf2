"""Run a QEMU TCG guest whose virtio devices are served by `lguest vhost-user` processes.

One boot can carry several devices (each its own back-end process and socket), so the
QEMU tests share boots: CI time matters and a TCG boot costs seconds. The guest's /init
(tests/hw/qemu_kit.py) prints `RESULT name value...` lines on the serial console, which
QEMU writes to a file; every failure message carries that console's tail.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from lguest.uml.servers import wait_for_socket

QEMU = "qemu-system-x86_64"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def qemu_path():
    return shutil.which(QEMU)


class Backend:
    """One `lguest vhost-user` process serving one device on `socket`."""

    def __init__(self, workdir, name, args):
        self.socket = os.path.join(workdir, f"{name}.sock")
        self.log_path = os.path.join(workdir, f"{name}.log")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lguest", "vhost-user", f"--socket={self.socket}", "-v",
             *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_socket(self.socket, self.proc, timeout=30, what=f"lguest vhost-user {name}")

    def kill_sessions(self):
        """SIGKILL the forked session processes (L:742) of this back-end, not the
        server; return how many there were."""
        killed = 0
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
        return killed

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with open(self.log_path, errors="replace") as f:
            return f.read()


@dataclass
class Boot:
    returncode: int
    console: str                  # the guest's serial console
    stderr: str                   # QEMU's own messages
    backend_logs: dict = field(default_factory=dict)
    timed_out: bool = False

    def tail(self, lines=40):
        text = "\n".join(self.console.splitlines()[-lines:])
        logs = "".join(f"\n--- back-end {n} (last lines) ---\n" + "\n".join(t.splitlines()[-8:])
                       for n, t in self.backend_logs.items())
        return (f"\nQEMU status {self.returncode}{' (timed out)' if self.timed_out else ''}, "
                f"stderr: {self.stderr.strip()[-600:]!r}\n--- serial console (tail) ---\n"
                f"{text}{logs}")

    def results(self, name):
        """The values of every `RESULT name ...` line, as lists of words."""
        return [(m.group(1) or "").split() for m in
                re.finditer(rf"^RESULT {re.escape(name)}(?: (.*))?$", self.console, re.M)]

    def result(self, name):
        found = self.results(name)
        assert found, f"the guest printed no RESULT {name}" + self.tail()
        return found[-1]


def wait_for_console(console, text, timeout=240):
    """Wait until the serial console file holds text; True if it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(console, errors="replace") as f:
                if text in f.read():
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    return False


def memory_args(mb, hotplug=False):
    # vhost-user needs the guest's memory in a file the back-end can map: QEMU 7.2
    # shares it only when told to, as a memfd backend bound to the NUMA node.
    size = f"{mb}M,slots=2,maxmem={mb + 1024}M" if hotplug else f"{mb}M"
    return ["-m", size, "-object", f"memory-backend-memfd,id=mem,size={mb}M,share=on",
            "-numa", "node,memdev=mem"]


def monitor_path(workdir):
    return os.path.join(workdir, "monitor.sock")


def hmp(workdir, *commands):
    """Send QEMU human-monitor commands (boot(..., hotplug=True) opens the monitor)."""
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(monitor_path(workdir))
        for command in commands:
            s.sendall(command.encode() + b"\n")
            time.sleep(1)


def boot(kit_, initrd, workdir, device_args, *, smp=1, mem_mb=256, machine=None, timeout=None,
         watch=None, hotplug=False):
    """Boot once with the given -chardev/-device/-netdev arguments; return a Boot.
    watch(console_path, qemu_process), if given, runs on a thread of its own while QEMU does."""
    console = os.path.join(workdir, "console.log")
    timeout = timeout or int(os.environ.get("QEMU_TIMEOUT", "300"))
    argv = [qemu_path(), "-accel", "tcg", "-smp", str(smp), "-nographic", "-nodefaults",
            "-no-reboot", *(["-machine", machine] if machine else []),
            *memory_args(mem_mb, hotplug), *device_args,
            *(["-monitor", f"unix:{monitor_path(workdir)},server,nowait"] if hotplug else []),
            "-kernel", kit_.kernel, "-initrd", initrd,
            "-append", "console=ttyS0 rdinit=/init quiet panic=-1",
            "-serial", f"file:{console}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if watch is not None:
        threading.Thread(target=watch, args=(console, proc), daemon=True).start()
    timed_out = False
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        _, err = proc.communicate()
    text = ""
    if os.path.exists(console):
        with open(console, errors="replace") as f:
            text = f.read()
    return Boot(proc.returncode, text, err or "", timed_out=timed_out)
