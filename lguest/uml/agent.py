"""The host side of the guest agent: one booted UML, many commands.

#L:822 A boot costs a second or more (Debian's UML kernel spends most of it benchmarking
# raid6 algorithms), a command in a booted guest a few milliseconds, so a Guest keeps its
# UML running between run()s and talks to the /init agent of L:821 over the control line
# (tty3: a pipe in, a pipe out). Each command gets a fresh token; its stdout and stderr
# are passed on as they come except for the last few bytes, held back until we know they
# are not the start of the end marker; the command is over when its status line and both
# end markers have come. If instead the control line closes, UML is gone (a panic, a
# `poweroff`, a kill): the command's Outcome has no status, and the caller boots anew.
# With `console`, the command's stdout reaches us through our virtio console (a device
# thread) rather than tty1: the console's sink writes into a pipe of ours, which this
# loop reads like any other channel, so the ordering logic is the same for both.
"""

import os
import secrets
import selectors
import subprocess
import time

from ..errors import LauncherError
from .init_script import END_MARKER, READY_MARKER, STATUS_MARKER
from .process import LOG_TAIL, Outcome, kernel_arguments, kill_group, spawn
from .stdin import TTY_ROOM, StdinPump, command_mode, widen_pipe

# How long a guest may take to sync and power off once we close its control line.
STOP_GRACE = 5.0
# The longest command line we send: it must fit in the pipe's buffer (64 KiB), so our
# write never waits on a guest that has stopped reading.
MAX_COMMAND = 60 * 1024


class FramedStream:
    """One output stream of one command: deliver bytes until the end marker arrives."""

    def __init__(self, marker, deliver):
        self.marker = marker
        self.deliver = deliver
        self.data = bytearray()
        self.held = b""
        self.done = False

    def _give(self, data):
        if data:
            self.data += data
            self.deliver(bytes(data))

    def feed(self, data):
        if self.done:
            return                      # a straggler's bytes after the end: not ours
        buf = self.held + data
        at = buf.find(self.marker)
        if at >= 0:
            self._give(buf[:at])
            self.held, self.done = b"", True
            return
        keep = next((k for k in range(min(len(buf), len(self.marker) - 1), 0, -1)
                     if buf.endswith(self.marker[:k])), 0)
        self._give(buf[:len(buf) - keep])
        self.held = buf[len(buf) - keep:]


def encode_command(command):
    """The command as one line that the guest's `printf %b` turns back into it."""
    if "\0" in command:
        raise LauncherError("a command cannot contain a NUL byte")
    return command.replace("\\", "\\\\").replace("\n", "\\n")


def parse_agent_status(text, token):
    """The status of command `token` from the control line's text, or None."""
    for line in text.decode("ascii", "replace").splitlines():
        words = line.strip().split()
        if len(words) == 3 and words[:2] == [STATUS_MARKER, token] and words[2].isdigit():
            return int(words[2])
    return None


def command_line(token, mode, command):
    """The control line's text for one command (L:821), checked for length."""
    line = f"{token} {mode} {encode_command(command)}\n".encode()
    if len(line) > MAX_COMMAND:
        raise LauncherError(f"command too long for the guest agent ({len(command)} bytes; "
                            f"keep it under {MAX_COMMAND // 1024} KiB, or put a script "
                            "on a block device)")
    return line


class BootedGuest:
    """A running UML whose /init is the agent: start(), run() any number of times, stop()."""

    def __init__(self, kit, workdir, *, console=False, cpus=None):
        self.kit = kit
        self.workdir = workdir
        self.cpus = cpus                # where UML may run (None: anywhere, L:887)
        self.proc = None
        self.log = bytearray()
        self.log_received = 0           # bytes of kernel console ever read (self.log: its tail)
        self._fds = []
        self._sel = selectors.DefaultSelector()
        self._console = os.pipe() if console else None
        self._console_in = self._console[1] if console else None
        self._ready = False
        self.stdin_suspect = False      # tty4 may no longer take input (L:824)
        if console:
            self._fds += list(self._console)

    def console_write(self, data):
        """The console sink: hand what the guest printed on hvc0 to our read loop."""
        fd = self._console_in
        if fd is None:
            return                      # released: the fd number may be someone else's now
        try:
            os.write(fd, data)
        except OSError:
            pass                        # the guest is being stopped; nobody is listening

    def start(self, **kernel_options):
        """Spawn UML (the device back-ends must already be listening)."""
        pipes = [os.pipe() for _ in range(8)]
        self._fds += [fd for pair in pipes for fd in pair]
        (log_r, log_w), (out_r, out_w), (err_r, err_w), (st_r, st_w), (ctl_r, ctl_w), \
            (in_r, in_w), (tty_r, tty_w), (winch_r, winch_w) = pipes
        guest_ends = (log_w, out_w, err_w, st_w, ctl_r, in_r, tty_w, winch_r)
        argv = kernel_arguments(self.kit, None, self.workdir, guest_ends[:4], control=ctl_r,
                                stdin_line=(in_r, tty_w, winch_r), **kernel_options)
        self.proc = spawn(argv, self.workdir, guest_ends, self.cpus)
        for fd in guest_ends:
            self._close_fd(fd)
        self._control = ctl_w
        self._stdin_line = in_w
        widen_pipe(in_w)
        self._winch = winch_w
        os.set_blocking(winch_w, False)
        stdout = self._console[0] if self._console else out_r
        for fd, name in ((log_r, "log"), (stdout, "stdout"), (err_r, "stderr"),
                         (st_r, "status"), (tty_r, "tty")):
            self._sel.register(fd, selectors.EVENT_READ, name)
        if self._console:
            self._sel.register(out_r, selectors.EVENT_READ, "log")   # tty1 is unused then

    @property
    def alive(self):
        return self.proc is not None and self._has("status")

    def _has(self, name):
        return any(key.data == name for key in self._sel.get_map().values())

    def _close_fd(self, fd):
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    def _read(self, deadline, handle):
        """One round of the read loop; False once the deadline has passed."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        for key, events in self._sel.select(left):
            if callable(key.data):
                key.data(events)        # the stdin pump's side of the loop (L:823)
                continue
            data = os.read(key.fd, 65536)
            if not data:
                self._sel.unregister(key.fd)
            elif key.data == "log":
                self._logged(data)
            else:
                handle(key.data, data)
        return True

    def _logged(self, data):
        self.log = (self.log + data)[-LOG_TAIL:]
        self.log_received += len(data)

    def _log_since(self, mark):
        """The kernel console's text since log_received was `mark` (its tail, if long).
        Lines the kernel wrote as the command ended may still be in the pipe: read them."""
        for key, _ in self._sel.select(0):
            if key.data == "log":
                data = os.read(key.fd, 65536)
                if data:
                    self._logged(data)
        new = min(self.log_received - mark, len(self.log))
        return self.log[len(self.log) - new:].decode("utf-8", "replace")

    def _wait_until_ready(self, deadline, handle):
        """Boot time: read until the agent says it listens; False on timeout or death."""
        text = bytearray()

        def until_ready(name, data):
            if name == "status":
                text.extend(data)
            else:
                handle(name, data)      # early output (insmod complaints) is the command's

        while not self._ready and self.alive:
            self._ready = READY_MARKER.encode() in text
            if not self._ready and not self._read(deadline, until_ready):
                return False
        return self._ready

    def run(self, command, *, timeout=None, on_stdout=None, on_stderr=None, stdin=None,
            tty_size=None):
        """Run one shell command line; an Outcome whose status is None if UML died.

        stdin: None (/dev/null), bytes, an fd or a file, forwarded with its EOF (L:823);
        with tty_size=(rows, cols) the command runs on a guest terminal instead, fed
        from stdin as typed, and its output (stdout and stderr) comes to on_stdout."""
        start = time.monotonic()
        token = secrets.token_hex(8)
        marker = f"{END_MARKER}{token}>>".encode()
        outcome = Outcome(None, False, None, "", 0.0)
        streams = {"stdout": FramedStream(marker, on_stdout or (lambda b: None)),
                   "stderr": FramedStream(marker, on_stderr or (lambda b: None))}
        if tty_size is not None:
            streams["tty"] = FramedStream(marker, on_stdout or (lambda b: None))
        line = command_line(token, command_mode(stdin, tty_size), command)
        pump = None

        def handle(name, data):
            if name == "status":
                outcome.status_text += data
            elif name in streams:
                streams[name].feed(data)
            elif name == "tty" and pump is not None:
                pump.guest_said(data)   # framed stdin: the guest's `go` (L:824)

        deadline = None if timeout is None else start + timeout
        status = None
        log_mark = self.log_received
        if not self._wait_until_ready(deadline, handle):
            outcome.timed_out = self.alive
        else:
            pump = self._send(line, token, stdin, framed=tty_size is None)
        try:
            while self.alive and not outcome.timed_out:
                status = parse_agent_status(outcome.status_text, token)
                if status is not None and all(s.done for s in streams.values()):
                    break
                if not self._read(deadline, handle):
                    outcome.timed_out = True
                    break
        finally:
            if pump is not None:
                pump.stop()
                self.stdin_suspect |= pump.sent > TTY_ROOM
        outcome.status = status if all(s.done for s in streams.values()) else None
        outcome.stdout, outcome.stderr = streams["stdout"].data, streams["stderr"].data
        if tty_size is not None:
            outcome.stdout = streams["tty"].data
        if outcome.status is None:
            # Dead: read what the kernel said last (the panic line). Hung: kill it now.
            self.stop(grace=0 if outcome.timed_out else 1.0)
            outcome.uml_returncode = self.proc.returncode
        outcome.command_log = self._log_since(log_mark)
        outcome.log = self.log.decode("utf-8", "replace")
        outcome.elapsed = time.monotonic() - start
        return outcome

    def resize(self, rows, cols):
        """A new window size for the command on the guest terminal (tty5, L:823)."""
        fd = getattr(self, "_winch", None)
        if fd is not None and fd in self._fds:
            try:
                os.write(fd, b"%d %d\n" % (rows, cols))
            except OSError:
                pass                    # no room, or UML gone: a resize is not worth a wait

    def _send(self, line, token, stdin, framed):
        """Hand the agent its command line; start its stdin's pump, if it has one."""
        try:
            os.write(self._control, line)
        except OSError:
            pass                        # UML is gone: the read loop sees its lines close
        if stdin is None:
            return None
        pump = StdinPump(stdin, self._stdin_line, token, framed=framed)
        pump.start(self._sel)
        return pump

    def stop(self, grace=STOP_GRACE):
        """Let the guest sync and power off (closing its control line), then make sure."""
        if self.proc is None:
            return
        if getattr(self, "_control", None) is not None:
            self._close_fd(self._control)
            self._control = None
        deadline = time.monotonic() + grace
        while grace > 0 and (self._has("status") or self._has("log")):
            if not self._read(deadline, lambda name, data: None):
                break
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()) if grace else 0.01)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc)

    def release(self):
        """Close every descriptor we still hold (after stop, and after the back-ends)."""
        self._console_in = None
        self._sel.close()
        for fd in list(self._fds):
            self._close_fd(fd)
