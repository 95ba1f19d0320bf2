"""The library entry point: run commands in a User-Mode Linux guest on our devices.

    import lguest
    with lguest.Guest(block=["disk.img"]) as g:
        r = g.run("md5sum /dev/vda")
        print(r.returncode, r.stdout)
        g.run("true")                      # the same booted guest: milliseconds

#L:880 A Guest is a recipe for a machine (memory, block files, console, network) and,
# once its first run() has booted it, that machine: the device back-ends start and
# listen (L:860), UML boots with the kit's initramfs (L:803), and /init becomes the agent
# of L:821, which runs each run()'s command and reports it (L:822). A boot costs a
# second or more here, a command in the booted guest a few milliseconds. Each command
# starts in an empty /root with a minimal environment, and what it left running is
# killed; a command that fails is a result (returncode != 0); a guest that dies or hangs
# is an exception, GuestFailed or GuestTimeout, carrying the tail of the kernel's
# console, and the next run() boots a new guest. close() (or the end of the `with`)
# powers the guest off and stops the back-ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Sequence

from .. import virtio
from ..errors import LauncherError
from . import agent, kit as kit_module, placement, servers, shares as shares_module

if TYPE_CHECKING:
    from ..vhost_user.served import Served
    from .kit import Kit


# Room for "/<boot>/console.sock" within the 108 bytes of a unix socket address.
MAX_WORKDIR_PATH = 80
# Enough for the host's Python running a test suite: at 64 MiB pytest was killed by the
# guest's OOM killer. UML's memory is a sparse file; only what the guest touches costs
# host memory, and boots took as long at 512 MiB as at 64 (1.2-1.6 s).
DEFAULT_MEM_MB = 256


class GuestFailed(LauncherError):
    """The guest died before reporting the command's exit status (e.g. a kernel panic)."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


class GuestTimeout(GuestFailed):
    """The command (or the boot) did not finish within the timeout; the guest was killed."""


@dataclass
class Result:
    """What one run() gave back: the command's own output and exit status."""

    stdout: str | bytes
    stderr: str | bytes
    returncode: int
    elapsed: float                  # seconds, including the boot if this run() booted
    # What the guest's kernel did to the command that a user should hear of (an OOM
    # kill: memory_notes), one sentence each: the command's own output says nothing of it.
    notes: list[str] = field(default_factory=list)


# Linux's oom_kill.c: "Out of memory: Killed process 123 (python3) total-vm:..."
# ("Memory cgroup out of memory: ..." inside a cgroup with a limit).
_OOM_KILL = re.compile(r"out of memory: Killed process (\d+) \(([^)]*)\)", re.IGNORECASE)


def memory_notes(kernel_log, mem):
    """One note per process the guest's OOM killer killed, in kernel_log's text."""
    return [f"the guest ran out of memory ({mem} MiB) and its kernel killed {name} "
            f"(pid {pid})"
            for pid, name in _OOM_KILL.findall(kernel_log)]


def describe_failure(outcome, timeout):
    """One clear line for a guest that did not report an exit status."""
    if outcome.timed_out:
        return GuestTimeout(f"guest timed out after {timeout:g} s and was stopped", outcome.log)
    panic = [line for line in outcome.log.splitlines() if "Kernel panic" in line]
    if panic:
        return GuestFailed(f"guest kernel panic: {panic[-1].strip()}", outcome.log)
    return GuestFailed("guest stopped without reporting the command's exit status "
                       f"(UML exit status {outcome.uml_returncode})", outcome.log)


def _placement(cpus):
    """Guest(cpus=...) checked now, so a bad one is refused before anything boots."""
    try:
        spec = placement.parse_cpus(cpus) if isinstance(cpus, str) else frozenset(cpus)
        if not spec or not isinstance(spec, str) and not all(
                isinstance(c, int) and c >= 0 for c in spec):
            raise ValueError("give 'one', 'all', or CPU numbers")
        placement.resolve(spec)
    except (TypeError, ValueError, LauncherError) as e:
        raise LauncherError(f"cpus={cpus!r}: {e}") from None
    return spec


class _Booted:
    """One boot of a Guest: its back-ends, its UML, its directory, stopped in that order."""

    def __init__(self, guest, boot_dir):
        self.stack = contextlib.ExitStack()
        self.stack.callback(shutil.rmtree, boot_dir, ignore_errors=True)
        # Chosen at each boot: "one" is the CPU we are on now, unless another of our
        # guests has it (L:887).
        self.cpus = placement.claim(guest.cpus)
        self.stack.callback(placement.release, self.cpus)
        self.uml = agent.BootedGuest(guest._kit, boot_dir, console=guest.console,
                                     cpus=self.cpus)
        self.stack.callback(self.uml.release)
        self.sink = lambda data: None
        try:
            devices = guest._servers(self.stack, boot_dir, self._console, self.cpus)
            self.stack.callback(self.stop)
            self.uml.start(mem=guest.mem, devices=devices, wait=guest._wait_list(devices),
                           ip=guest.ip, stdout_device="hvc0" if guest.console else "tty1",
                           skip_modules=kit_module.unused_modules(
                               guest._kit, [d[1] for d in devices]))
        except BaseException:
            self.close()
            raise
        self.grace = agent.STOP_GRACE

    def _console(self, data):
        self.uml.console_write(data)

    def stop(self):
        self.uml.stop(grace=self.grace)

    def close(self, grace=agent.STOP_GRACE):
        self.grace = grace
        self.stack.close()


class Guest:
    """A UML guest whose virtio devices are served by our vhost-user back-end.

    block: disk image paths ("disk.img" or "disk.img,ro", or (path, read_only)), which
    the guest sees as /dev/vda, /dev/vdb, ...; console: send the commands' stdout through
    our virtio console (/dev/hvc0) instead of UML's tty; net: a back-end network spec
    (tap:NAME[:HOSTIP[/PREFIX]]) or a served device; ip: an address/prefix for eth0; mem: MiB;
    timeout: the default for run() (seconds, None for no limit); backend: "lguest"
    (ours) or "qsd" (qemu-storage-daemon, block only); kit: a prepared lguest.uml Kit.
    root: "host" (the host's root, read-only, with cwd writable, commands run there as
    user: L:886) or "initramfs" (the busybox guest); share: more host directories,
    "HOST[:GUEST][,ro]" or (host, guest[, read_only]); cwd (default: ours) and user
    ((uid, gid) or (uid, gid, supplementary groups); default: ours, with our groups)
    are where and as whom commands run with the host root;
    terminal: our stdout is a terminal, so the caller's TERM is passed (else TERM=dumb);
    cpus: where the guest and its back-ends run (L:887): "one" (one CPU shared, the one
    we are on at boot), "all" (the scheduler's choice), or CPUs ("0,2-3", or ints).
    """

    def __init__(self, *, block: Iterable[str | tuple[str, bool]] = (), console: bool = False,
                 net: str | Served | None = None, ip: str | None = None,
                 mem: int = DEFAULT_MEM_MB, timeout: float | None = 60.0,
                 backend: str = "lguest", kit: Kit | None = None, root: str = "host",
                 share: Iterable = (), cwd: str | None = None, user: tuple | None = None,
                 terminal: bool = False, cpus: str | Iterable[int] = placement.ONE):
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
        self.boots = 0                      # how many times this Guest has booted UML
        self._booted = None
        for spec in self.block:
            servers.parse_block_spec(spec)
        self.plan = shares_module.plan(share, root, cwd, user, terminal=terminal)
        self.cpus = _placement(cpus)

    def __enter__(self):
        self._kit = self._kit or kit_module.ensure_kit()
        self.workdir = tempfile.mkdtemp(prefix="lguest-uml-")
        if len(self.workdir) > MAX_WORKDIR_PATH:
            # A unix socket's path must fit in sun_path (108 bytes, L:861).
            os.rmdir(self.workdir)
            self.workdir = tempfile.mkdtemp(prefix="lguest-uml-", dir="/tmp")
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Power the guest off (it syncs first), stop the back-ends, remove the temp files."""
        self._discard()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _servers(self, stack, workdir, console_sink, cpus):
        """Start the back-ends (on `cpus`, L:887); return [(socket, virtio id)] in the
        order UML should see them."""
        if not (self.block or self.console or self.net is not None or self.plan.shares):
            return []
        from . import ours
        if self.backend == "qsd":
            if self.console or self.net is not None:
                raise LauncherError("the qemu-storage-daemon back-end serves block devices only")
            devices = stack.enter_context(
                servers.QsdBlockServer(self.block, workdir, cpus)).devices if self.block else []
            # The shared directories are ours whoever serves the disks.
            return devices + stack.enter_context(
                ours.OurServers([], workdir, fs=self.plan.served, cpus=cpus)).devices
        if self.backend != "lguest":
            raise LauncherError(f"unknown back-end {self.backend!r} (lguest or qsd)")
        return stack.enter_context(ours.OurServers(self.block, workdir, console=self.console,
                                                   console_sink=console_sink,
                                                   net=self.net, fs=self.plan.served,
                                                   cpus=cpus)).devices

    def _wait_list(self, devices):
        blocks = [d for d in devices if d[1] == virtio.ID_BLOCK]
        names = [f"vd{chr(ord('a') + i)}" for i in range(len(blocks))]
        if self.console:
            names.append("hvc0")
        if self.net is not None:
            names.append("eth0")
        return names

    def _discard(self, grace=agent.STOP_GRACE):
        booted, self._booted = self._booted, None
        if booted is not None:
            booted.close(grace)

    def _boot(self):
        self.boots += 1
        boot_dir = os.path.join(self.workdir, str(self.boots))
        os.mkdir(boot_dir)
        return _Booted(self, boot_dir)

    def _mount_shares(self, start, timeout):
        """Right after a boot: the agent mounts the shares (L:886), or we say why not."""
        script = self.plan.setup_script()
        if script is None:
            return
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        errors = bytearray()
        outcome = self._booted.uml.run(script, timeout=left, on_stderr=errors.extend)
        if outcome.status is None:
            self._discard(grace=0)
            raise describe_failure(outcome, timeout)
        if outcome.status != 0:
            self._discard(grace=0)
            raise GuestFailed("could not mount the shared directories in the guest: "
                              + (errors.decode(errors="replace").strip() or
                                 f"status {outcome.status}"), outcome.log)

    def boot(self) -> Guest:
        """Boot now (run() would on first use); a no-op if the guest is up."""
        if self.workdir is None:
            self.__enter__()
        if self._booted is None:
            self.run("true")
        return self

    def resize(self, rows: int, cols: int) -> None:
        """Tell a command running on a guest terminal (run(tty_size=...)) its new size."""
        if self._booted is not None:
            self._booted.uml.resize(rows, cols)

    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            on_stdout: Callable[[bytes], None] | None = None,
            on_stderr: Callable[[bytes], None] | None = None, text: bool = True,
            stdin: bytes | int | BinaryIO | None = None,
            tty_size: tuple[int, int] | None = None) -> Result:
        """Run command (a shell string, or an argv list) in the guest; return a Result.

        The first run() boots the guest; later ones reuse it, unless a command killed it.
        on_stdout / on_stderr receive the output's bytes as they come; timeout (seconds)
        counts from the start of this run(), boot included. stdin: bytes, an fd or a
        file (read as the command reads it, EOF included), None for /dev/null;
        tty_size=(rows, cols): run it on a guest terminal fed from stdin (L:823)."""
        if self.workdir is None:
            with self:
                return self.run(command, timeout=timeout, on_stdout=on_stdout,
                                on_stderr=on_stderr, text=text, stdin=stdin,
                                tty_size=tty_size)
        if not isinstance(command, str):
            command = shlex.join(command)
        timeout = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            if stdin is not None and self._booted and self._booted.uml.stdin_suspect:
                self._discard()             # its tty4 may take no more input (L:824)
            if self._booted is None:
                self._booted = self._boot()
                self._mount_shares(start, timeout)
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            outcome = self._booted.uml.run(self.plan.wrap(command), timeout=left,
                                           on_stdout=on_stdout, on_stderr=on_stderr,
                                           stdin=stdin, tty_size=tty_size)
        except LauncherError:
            raise                           # e.g. a command too long: the guest is fine
        except BaseException:
            self._discard(grace=0)          # ^C or a host error: stop the guest at once
            raise
        if outcome.status is None:
            self._discard(grace=0)
            raise describe_failure(outcome, timeout)
        stdout, stderr = bytes(outcome.stdout), bytes(outcome.stderr)
        if text:
            stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        return Result(stdout, stderr, outcome.status, time.monotonic() - start,
                      memory_notes(outcome.command_log, self.mem))
