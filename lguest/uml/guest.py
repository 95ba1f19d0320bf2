"""The library entry point: run commands in a User-Mode Linux guest on our devices.

    import lguest
    with lguest.Guest(block=["disk.img"]) as g:
        r = g.run("md5sum /dev/vda")
        print(r.returncode, r.stdout)

#L:880 A Guest is a recipe for a machine (memory, block files, console, network), and
# each run() is one fresh boot of it: the device back-ends start and listen (L:860),
# UML boots with the kit's initramfs (L:803), /init runs the command (L:820), UML
# powers off, the back-ends stop. A boot costs about a second and a half here, and
# nothing carries over between runs but what the command wrote to the block files,
# which is what makes the result of run() depend only on its inputs. A command that
# fails is a result (returncode != 0); a guest that dies or hangs is an exception,
# GuestFailed or GuestTimeout, carrying the tail of the kernel's console.
"""

import contextlib
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass

from .. import virtio
from ..errors import LauncherError
from . import kit as kit_module, process, servers


# Room for "/<boot>/console.sock" within the 108 bytes of a unix socket address.
MAX_WORKDIR_PATH = 80


class GuestFailed(LauncherError):
    """The guest died before reporting the command's exit status (e.g. a kernel panic)."""

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log


class GuestTimeout(GuestFailed):
    """The command (or the boot) did not finish within the timeout; the guest was killed."""


@dataclass
class Result:
    stdout: str | bytes
    stderr: str | bytes
    returncode: int
    elapsed: float


def describe_failure(outcome, timeout):
    """One clear line for a guest that did not report an exit status."""
    if outcome.timed_out:
        return GuestTimeout(f"guest timed out after {timeout:g} s and was stopped", outcome.log)
    panic = [line for line in outcome.log.splitlines() if "Kernel panic" in line]
    if panic:
        return GuestFailed(f"guest kernel panic: {panic[-1].strip()}", outcome.log)
    return GuestFailed("guest stopped without reporting the command's exit status "
                       f"(UML exit status {outcome.uml_returncode})", outcome.log)


class Guest:
    """A UML guest whose virtio devices are served by our vhost-user back-end."""

    def __init__(self, *, block=(), console=False, net=None, ip=None, mem=64, timeout=60.0,
                 backend="lguest", kit=None):
        self.block = [b if isinstance(b, str) else f"{b[0]},ro" if b[1] else b[0]
                      for b in block]
        self.console = console
        self.net = net
        self.ip = ip
        self.mem = mem
        self.timeout = timeout
        self.backend = backend
        self._kit = kit
        self.workdir = None
        for spec in self.block:
            servers.parse_block_spec(spec)

    def __enter__(self):
        self._kit = self._kit or kit_module.ensure_kit()
        self.workdir = tempfile.mkdtemp(prefix="lguest-uml-")
        if len(self.workdir) > MAX_WORKDIR_PATH:
            # A unix socket's path must fit in sun_path (108 bytes, L:861).
            os.rmdir(self.workdir)
            self.workdir = tempfile.mkdtemp(prefix="lguest-uml-", dir="/tmp")
        self._boots = 0
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _servers(self, stack, workdir, console_sink):
        """Start the back-ends; return [(socket, virtio id)] in the order UML should see them."""
        if not (self.block or self.console or self.net is not None):
            return []
        if self.backend == "qsd":
            if self.console or self.net is not None:
                raise LauncherError("the qemu-storage-daemon back-end serves block devices only")
            return stack.enter_context(servers.QsdBlockServer(self.block, workdir)).devices
        if self.backend != "lguest":
            raise LauncherError(f"unknown back-end {self.backend!r} (lguest or qsd)")
        from . import ours
        return stack.enter_context(ours.OurServers(self.block, workdir, console=self.console,
                                                   console_sink=console_sink,
                                                   net=self.net)).devices

    def _wait_list(self, devices):
        blocks = [d for d in devices if d[1] == virtio.ID_BLOCK]
        names = [f"vd{chr(ord('a') + i)}" for i in range(len(blocks))]
        if self.console:
            names.append("hvc0")
        if self.net is not None:
            names.append("eth0")
        return names

    def run(self, command, *, timeout=None, on_stdout=None, on_stderr=None, text=True):
        """Boot, run command (a shell string, or an argv list), power off; return a Result."""
        if self.workdir is None:
            with self:
                return self.run(command, timeout=timeout, on_stdout=on_stdout,
                                on_stderr=on_stderr, text=text)
        if not isinstance(command, str):
            command = shlex.join(command)
        timeout = self.timeout if timeout is None else timeout
        on_stdout = on_stdout or (lambda b: None)
        self._boots += 1
        boot_dir = os.path.join(self.workdir, str(self._boots))
        os.mkdir(boot_dir)
        console_out = bytearray()

        def console_sink(data):
            console_out.extend(data)
            on_stdout(bytes(data))

        try:
            with contextlib.ExitStack() as stack:
                devices = self._servers(stack, boot_dir, console_sink)
                outcome = process.boot(
                    self._kit, command, boot_dir, timeout=timeout, on_stdout=on_stdout,
                    on_stderr=on_stderr or (lambda b: None), mem=self.mem, devices=devices,
                    wait=self._wait_list(devices), ip=self.ip,
                    stdout_device="hvc0" if self.console else "tty1")
        finally:
            shutil.rmtree(boot_dir, ignore_errors=True)
        if outcome.status is None:
            raise describe_failure(outcome, timeout)
        stdout = bytes(console_out) + bytes(outcome.stdout)
        stderr = bytes(outcome.stderr)
        if text:
            stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        return Result(stdout, stderr, outcome.status, outcome.elapsed)
