"""The console's host side: the terminal in raw mode, stdin as a source, stdout as a sink.

#L:920 UNIX tty handling. If we can save the initial standard input settings, we
# turn off echo, line buffering and ^C etc.: we want a raw input stream to the Guest.
# Whatever way we leave - a normal exit, an exception, KeyboardInterrupt, SIGTERM or
# SIGHUP - the settings are put back, or the user's shell is left without echo. The
# seed left that to "the shell restores the console for us"; we do not count on it.
"""

import atexit
import logging
import os
import select
import signal
import termios
import threading

from ..devices.base import iov_skip

log = logging.getLogger("lguest.console")

RESTORE_ON = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class RawTerminal:
    """Puts a tty fd in raw mode (no ECHO, ICANON, ISIG) and restores it, once."""

    def __init__(self, fd=0):
        self.fd = fd
        self.saved = None
        self._previous_handlers = {}

    def enter(self):
        try:
            self.saved = termios.tcgetattr(self.fd)
        except termios.error:
            return self                     # not a terminal: nothing to do or undo
        raw = termios.tcgetattr(self.fd)
        raw[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
        raw[6][termios.VMIN] = 1            # a read returns as soon as one byte is there
        raw[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, raw)
        atexit.register(self.restore)
        self._catch_signals()
        return self

    def _catch_signals(self):
        # Handlers can only be set from the main thread; elsewhere atexit must do.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in RESTORE_ON:
            previous = signal.getsignal(sig)
            if previous in (signal.SIG_DFL, None):
                self._previous_handlers[sig] = previous
                signal.signal(sig, self._restore_and_die)

    def _restore_and_die(self, sig, frame):
        # Restore the terminal, then die of the same signal, as we would have.
        self.restore()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)

    def restore(self):
        if self.saved is None:
            return
        saved, self.saved = self.saved, None
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, saved)
        except termios.error as e:
            log.warning("could not restore the terminal: %s", str(e))
        atexit.unregister(self.restore)
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous_handlers.items():
                if signal.getsignal(sig) == self._restore_and_die:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    close = restore

    def __enter__(self):
        return self.enter()

    def __exit__(self, *exc):
        self.restore()


class FdSource:
    """Console input from an fd (stdin): will_block() and readv() for ConsoleDevice.
    The fd stays blocking (it is shared with the shell); we read only after poll()
    said there is something, so the read does not wait."""

    def __init__(self, fd=0):
        self.fd = fd

    def will_block(self):
        try:
            ready, _, _ = select.select([self.fd], [], [], 0)
        except (OSError, ValueError):
            return False                    # let the read report what is wrong
        return not ready

    def readv(self, views):
        return os.readv(self.fd, views)


class FdSink:
    """Console output to an fd (stdout): writes everything, looping over partial writes."""

    def __init__(self, fd=1):
        self.fd = fd

    def write(self, views):
        #L:921 writev can return a partial write, so we loop here. A failure is
        # reported and the rest of that buffer dropped, as the seed did: the guest's
        # output must not kill the guest.
        views = iov_skip(views, 0)
        while views:
            try:
                n = os.writev(self.fd, views)
            except BlockingIOError:
                select.select([], [self.fd], [])
                continue
            except OSError as e:
                log.warning("Write to stdout gave %s", str(e))
                return
            if n <= 0:
                log.warning("Write to stdout gave %d", n)
                return
            views = iov_skip(views, n)


def interrupt_launcher():
    """^C^C^C: stop the launcher as a normal ^C would (L:324). The seed sent SIGINT to
    its process group; we send it to our own main thread, which interrupts whatever it
    is waiting in (KVM_RUN, a read of /dev/lguest) and raises KeyboardInterrupt there,
    so the launcher unwinds through its normal cleanup and the terminal is restored."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
