"""A command's stdin, carried from us to the guest over one UML console line (tty4).

#L:823 UML's console lines pass bytes but not an end of file: its line driver reads the
# host fd one byte at a time and, at EOF, hangs the tty up, which throws away what the
# guest had not read yet. So tty4 stays open for the guest's whole life and a command's
# stdin is framed on it. For each command that has a stdin the host first sends a line
# with the command's token (the guest skips everything before it: what an earlier
# command left unread), then frames `LEN\n` + LEN bytes, and `0\n` for the end of file.
# In the guest a background shell function reads the frames (the shell's `read` takes
# one byte at a time, so it never reads past a header; `dd iflag=fullblock,count_bytes`
# takes exactly LEN bytes) into a FIFO that is the command's stdin, so the command sees
# EOF, and a command that never reads is not held up: the agent kills the reader when the
# command is over. We coalesce what came while the line was busy into one frame (a
# process per frame in the guest), up to MAX_FRAME.
#
#L:824 UML's tty input has a flaw we work around and one we cannot. Leftovers: what an
# earlier command did not read may fill tty4's buffers (hundreds of KiB), and the shell's
# byte-at-a-time `read` would take seconds over it, so the guest skips to the token
# line with `awk` (which reads ahead; `sed` would wait for the line after, to know
# whether it is the last), says `go` on tty4's output, and only then do we
# send frames. The flaw: when the guest's tty buffer fills, UML's line driver throttles
# by taking the host fd out of its epoll set (line_throttle -> deactivate_chan) and its
# unthrottle only reads once, never putting the fd back; after that, input moves only
# while throttle/unthrottle keep alternating, i.e. while each unthrottle finds more
# than the tty buffer holds waiting in our pipe; so the pipe is widened to LINE_PIPE
# and kept full while the source has data. A reader slower than the line (8 MiB into
# md5sum) can stop it for good: seen here, dd waiting for 7 bytes with ~20 KiB unread in
# our pipe. And once throttled, the line may take no input again: the next command's
# stdin would never arrive. So a guest whose tty4 has carried more than its buffer
# holds (TTY_ROOM) is booted anew before the next command with a stdin (L:880); small
# inputs, the usual case, keep the warm guest.
#
# With a terminal (mode "t"), tty4 *is* the command's terminal: after the token line the
# guest sets it cooked (`stty sane rows R cols C`) and runs the command on it as its
# controlling tty (`setsid -c`), and we pass our keystrokes through as they are, our
# own terminal in raw mode (restored however we leave), so ^C, ^D and line editing are
# the guest's. What the command writes comes back on tty4's output, ended by the
# command's end marker (L:822). When our window changes (SIGWINCH) the new size goes on
# tty5, where a background loop in the guest sets it on tty4, which signals the command.
"""

import contextlib
import fcntl
import os
import selectors
import signal
import termios
import threading
import tty

# What the guest's tty buffer holds before it throttles UML's line (N_TTY_BUF_SIZE less
# TTY_THRESHOLD_THROTTLE): a command sent more may have left tty4 dead (L:824).
TTY_ROOM = 4096 - 128
# How much the pipe to tty4 holds: while a stdin streams, UML must never find it empty
# after a throttle (L:824), and 64 KiB runs dry between our writes on a busy host.
LINE_PIPE = 1 << 20
# The most one frame carries (the guest's dd reads it in 64 KiB blocks).
MAX_FRAME = 1 << 20
# How much we read from the source before waiting for the line to take it.
MAX_BUFFERED = 2 * MAX_FRAME

# The guest's half (L:823), as shell functions for /init. fd 5 is tty4, held open.
GUEST_FUNCTIONS = r"""
lguest_stdin_skip() {
  while IFS= read -r l <&5; do [ "$l" = "$1" ] && return 0; done
  return 1
}
lguest_stdin_frames() {
  awk -v t="$1" '$0 == t { exit }' <&5; printf 'go\n' >&5
  while IFS= read -r n <&5 && [ "$n" -gt 0 ] 2>/dev/null; do
    dd bs=65536 count="$n" iflag=fullblock,count_bytes <&5 2>/dev/null || return
  done
}
"""


def command_mode(stdin, tty_size):
    """The mode word of the agent's command line: '-' none, 'p' framed, 't:ROWS:COLS'."""
    if tty_size is not None:
        rows, cols = tty_size
        return f"t:{int(rows)}:{int(cols)}"
    return "-" if stdin is None else "p"


def frame(data):
    """One frame of stdin for the guest (an empty one is the end of file)."""
    return b"%d\n" % len(data) + bytes(data)


def source_fd(stdin):
    """The fd to read a stdin source from, or None for bytes; a clear error otherwise."""
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        return None
    if isinstance(stdin, int):
        return stdin
    try:
        return stdin.fileno()
    except (AttributeError, OSError, ValueError):
        raise TypeError("stdin must be bytes, a file descriptor or a file with a "
                        f"fileno(), not {type(stdin).__name__}") from None


class StdinPump:
    """Copy a stdin source onto the guest's tty4, framed (or raw, for a terminal).

    It lives in the agent's selector: `start(sel)` registers it, its callbacks run when
    the source has data or the line has room, `stop()` unregisters it. It never blocks:
    the line is non-blocking and the source is read only when select says so."""

    def __init__(self, stdin, line_fd, token, *, framed=True):
        self.line_fd = line_fd
        self.framed = framed
        self.src = source_fd(stdin)
        self.pending = bytearray() if self.src is not None else bytearray(stdin)
        self.eof = self.src is None          # nothing more will come from the source
        self.eof_sent = False                # ... and the guest has been told so
        self.out = bytearray(b"\n" + token.encode() + b"\n")
        self.sel = None
        self.pollable = True                 # select() can tell us when src has data
        self.going = not framed              # framed: wait for the guest's `go`
        self.sent = 0                        # bytes written to the line
        self.heard = bytearray()
        self._watch = {}

    def start(self, sel):
        self.sel = sel
        os.set_blocking(self.line_fd, False)
        self._update()

    def stop(self):
        for fd in list(self._watch):
            self.sel.unregister(fd)
        self._watch.clear()
        self.sel = None

    def _want(self, fd, callback, wanted):
        if wanted and fd not in self._watch:
            try:
                self.sel.register(fd, selectors.EVENT_WRITE if fd == self.line_fd
                                  else selectors.EVENT_READ, callback)
            except PermissionError:
                # epoll refuses what is always ready (a regular file, /dev/zero).
                self.pollable = False
                return
            self._watch[fd] = True
        elif not wanted and fd in self._watch:
            self.sel.unregister(fd)
            del self._watch[fd]

    def _update(self):
        if self.sel is None:
            return
        wants = lambda: not self.eof and len(self.pending) < MAX_BUFFERED   # noqa: E731
        if self.src is not None and not self.pollable:
            while wants():
                self._read_source()
        if not self.out and self.going:
            self._fill()
        self._want(self.line_fd, self._on_line, bool(self.out))
        if self.src is not None and self.pollable:
            self._want(self.src, self._on_source, wants())
            if not self.pollable:
                self._update()

    def _fill(self):
        """Move what we have read into the line's output: a frame, or the end of file."""
        if not self.framed:
            self.out += self.pending
            self.pending.clear()
        elif self.pending:
            self.out += frame(self.pending[:MAX_FRAME])
            del self.pending[:MAX_FRAME]
        elif self.eof and not self.eof_sent:
            self.out += frame(b"")
            self.eof_sent = True

    def _read_source(self):
        try:
            data = os.read(self.src, MAX_FRAME)
        except BlockingIOError:
            return
        except OSError:
            data = b""              # a source that fails ends like one that is empty
        if not data:
            self.eof = True
        self.pending += data

    def _on_source(self, events):
        self._read_source()
        self._update()

    def _on_line(self, events):
        try:
            done = os.write(self.line_fd, self.out[:LINE_PIPE])
        except BlockingIOError:
            return
        except OSError:
            self.out.clear()        # UML is gone; the agent sees its lines close
            self.pending.clear()
            self.eof = self.eof_sent = True
            done = 0
        del self.out[:done]
        self.sent += done
        self._update()

    def guest_said(self, data):
        """tty4's output in framed mode: the guest's `go` once it is past the leftovers."""
        if not self.going:
            self.heard += data
            if b"go\n" in self.heard:
                self.going = True
                self._update()


def widen_pipe(fd):
    """Give the pipe to tty4 LINE_PIPE bytes of room, as far as the host allows."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, LINE_PIPE)
    except OSError:
        pass                        # above /proc/sys/fs/pipe-max-size: keep the default


def window_size(fd):
    """(rows, cols) of the terminal on fd; 24x80 if it does not say."""
    try:
        size = os.get_terminal_size(fd)
        if size.lines > 0 and size.columns > 0:
            return size.lines, size.columns
    except OSError:
        pass
    return 24, 80


@contextlib.contextmanager
def raw_terminal(fd):
    """Our terminal in raw mode for the length of the block, then exactly as it was."""
    saved = termios.tcgetattr(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


@contextlib.contextmanager
def resizes_to(guest, fd):
    """Pass our window's new sizes (SIGWINCH) to the guest's terminal, in the block."""
    if threading.current_thread() is not threading.main_thread():
        yield                       # signal handlers can only be set in the main thread
        return
    previous = signal.signal(signal.SIGWINCH, lambda *_: guest.resize(*window_size(fd)))
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def is_null_device(fd):
    """True when fd is /dev/null (or closed): nothing to forward."""
    try:
        st = os.fstat(fd)
    except OSError:
        return True
    null = os.stat(os.devnull)
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def stdin_plan(fd_in=0, fd_out=1):
    """What `lguest run` does with its stdin: "none" for /dev/null (or closed), "tty" for
    an interactive guest terminal when both ends are terminals (as ssh -t, docker -it),
    else "stream": forwarded as read, EOF included (a terminal then gives its lines,
    ^D its end, so `lguest run -- cat > f` from a terminal works too)."""
    if is_null_device(fd_in):
        return "none"
    return "tty" if os.isatty(fd_in) and os.isatty(fd_out) else "stream"


def run_with_our_stdin(guest, command, **run_options):
    """guest.run() with our own stdin, as stdin_plan() says (L:823)."""
    plan = stdin_plan()
    if plan == "none":
        return guest.run(command, **run_options)
    if plan == "tty":
        with raw_terminal(0), resizes_to(guest, 0):
            return guest.run(command, stdin=0, tty_size=window_size(0), **run_options)
    return guest.run(command, stdin=0, **run_options)
