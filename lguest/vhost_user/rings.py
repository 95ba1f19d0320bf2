"""Per-ring state and the threads that turn kick eventfds into process() calls.

#L:730 In a PCI guest a kick is a write to a notify register that traps into us; here
# it is the front-end writing to an eventfd it handed over with SET_VRING_KICK. Each
# live ring gets a KickWatcher thread blocked in poll() on that fd (and on a private
# stop fd, so the socket thread can take the ring down at any moment). On a kick it
# drains the eventfd and asks the DeviceRunner (L:310) to serve the queue; with the
# InlineRunner that is a direct call on this thread, so a block request costs one
# wake-up and no hand-over. Errors in the ring are the front-end's guest's fault:
# lenient, as vhost-user back-ends are, we log one line, stop serving that ring, and
# signal its error eventfd (SET_VRING_ERR), while the other rings and the server go on.
#
# The reverse direction is the call fd (SET_VRING_CALL): writing a u64 1 to it is the
# interrupt. virtio_uml hands us one end of a socketpair rather than an eventfd (SIGIO
# works on sockets); the write must not block, and a full one (an interrupt already
# pending) is fine (Signaller, L:735, says how without a syscall more than the write).
"""

import logging
import os
import platform
import select
import socket
import stat
import struct
import threading
import time

from ..devices.base import InlineRunner, serve_until_idle
from ..errors import GuestError, LauncherError
from . import polling
from .polling import DEFAULT_POLL_US, AdaptivePoll

log = logging.getLogger("lguest.vhost_user")

ONE = struct.pack("<Q", 1)
SEND_NOW = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL   # this send only: no wait, no SIGPIPE

#L:733 The rings are shared with a front-end running on other CPUs at the same time,
# and the ring code (L:220, L:230) has no memory barriers of its own: it relies on
# x86's ordering (loads are not reordered with loads, nor stores with stores), under
# which the order CPython makes its reads and writes is the order the other CPU sees
# them. On a weakly ordered CPU (arm64, POWER, RISC-V) a front-end could see the used
# index before the used entry, or we could read a descriptor before the avail index
# that published it. So until the barriers are written, we refuse to serve elsewhere.
X86_MACHINES = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")


def require_x86_host(machine=None):
    """LauncherError unless this host is x86 (L:733)."""
    machine = machine if machine is not None else platform.machine()
    if machine.lower() not in X86_MACHINES:
        raise LauncherError(f"this host is {machine or 'of an unknown architecture'}: the "
                            "ring code's memory ordering is correct on x86 hosts only, so "
                            "vhost-user rings are not served here")


class Vring:
    """What the front-end has told us about one ring, kept across stops and starts."""

    def __init__(self, index):
        self.index = index
        self.num = 0
        self.addr = None          # protocol.VringAddr, in the front-end's user addresses
        self.base = 0             # next avail index to serve (SET/GET_VRING_BASE)
        self.kick_fd = None
        self.call_fd = None
        self.err_fd = None
        self.started = False      # a kick fd arrived and GET_VRING_BASE has not stopped it
        self.enabled = False      # SET_VRING_ENABLE (or on by default, see L:722)
        self.broken = False       # the guest broke a rule on it: not served until re-set-up
        self.queue = None         # the Virtqueue while served
        self.call = Signaller(None)   # call(): the interrupt, through call_fd (L:735)
        # Held while signalling call_fd/err_fd and while replacing them (L:730).
        self.signal_lock = threading.Lock()

    @property
    def serving(self):
        return self.started and self.enabled and not self.broken

    def replace_fd(self, attribute, fd):
        old = getattr(self, attribute)
        setattr(self, attribute, fd)
        if attribute == "call_fd":
            self.call.close()
            self.call = Signaller(fd)
        if old is not None:
            os.close(old)

    def close_fds(self):
        for attribute in ("kick_fd", "call_fd", "err_fd"):
            self.replace_fd(attribute, None)


def signal_fd(fd):
    """Write a u64 1 to an eventfd or pipe; never block, never raise.

    The fd is the front-end's: its open file is shared with QEMU or virtio_uml, so we
    must not make it non-blocking (QEMU's own reads and writes would change under it).
    Instead we ask poll() first: POLLOUT on a pipe means room for PIPE_BUF bytes, and
    on an eventfd that the counter can take our 1, and nobody but us writes it, so the
    write that follows cannot block. Not writable means an interrupt is already pending
    (a full pipe, an eventfd nobody reads): one more adds nothing."""
    if fd is None:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        ready = poller.poll(0)
        if not ready or not ready[0][1] & select.POLLOUT:
            return
        os.write(fd, ONE)
    except BlockingIOError:
        pass
    except OSError as e:
        log.warning("vhost-user: cannot signal fd %d: %s", fd, e)


#L:735 An interrupt is on the path of every request: the guest waits for it. signal_fd
# costs a poll() before its write, so the call fd gets a Signaller made once per
# SET_VRING_CALL that knows which write cannot block. A front-end's fd that is already
# non-blocking (QEMU's and DPDK's eventfds) is written as it is: a full counter gives
# EAGAIN, not a wait. A socket -- virtio_uml's: UML's os_pipe() is a socketpair, not a
# pipe -- is sent to with MSG_DONTWAIT, non-blocking for that one call and no other.
# A pipe is opened again through /proc/self/fd: that is a second open file of the same
# pipe, ours alone, so we may make it non-blocking without changing the front-end's.
# Anything else -- a blocking eventfd, which cannot be reopened, a tty -- keeps
# signal_fd's poll-then-write, on a poll object registered once.
class Signaller:
    """call(): write a u64 1 to a front-end's fd; never block, never raise."""

    def __init__(self, fd):
        self.fd = fd
        self._own_fd = None           # our non-blocking reopening of a pipe
        self._socket = None           # a socket, to send() to without blocking
        self._poller = None           # for an fd we can only poll before writing
        self._warned = False          # a failing fd is said once, not per interrupt
        if fd is None:
            self.write_fd = None
            return
        self.write_fd = fd
        try:
            blocking = os.get_blocking(fd)
            mode = os.fstat(fd).st_mode if blocking else 0
            if stat.S_ISSOCK(mode):
                # A socket object of our own (a dup: closing it leaves the fd open).
                self._socket = socket.socket(fileno=os.dup(fd))
                blocking = False
            elif stat.S_ISFIFO(mode):
                self._own_fd = os.open(f"/proc/self/fd/{fd}",
                                       os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self.write_fd, blocking = self._own_fd, False
        except OSError:
            blocking = True           # no reader left, or no /proc: poll first
        if blocking:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLOUT)

    def __call__(self):
        fd = self.write_fd
        if fd is None:
            return
        try:
            if self._socket is not None:
                self._socket.send(ONE, SEND_NOW)
                return
            if self._poller is not None:
                ready = self._poller.poll(0)
                if not ready or not ready[0][1] & select.POLLOUT:
                    return
            os.write(fd, ONE)
        except BlockingIOError:
            pass                      # an interrupt is already pending
        except OSError as e:          # e.g. EPIPE: the front-end closed its end
            if not self._warned:
                self._warned = True
                log.warning("vhost-user: cannot signal fd %d: %s", self.fd, e)

    def close(self):
        if self._own_fd is not None:
            os.close(self._own_fd)
            self._own_fd = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.write_fd = None


class KickWatcher:
    """A thread serving one ring each time its kick fd fires, until stop().
    poll_us: how long to busy-poll the kick fd before sleeping on it (L:734)."""

    def __init__(self, vring, serve, on_error, poll_us=DEFAULT_POLL_US):
        if poll_us < 0:
            raise ValueError(f"poll_us must be >= 0, not {poll_us}")
        self.poll = AdaptivePoll(int(poll_us * 1000))
        self.polls = self.sleeps = 0     # waits that busy-polling answered / that slept
        self.vring = vring
        self._serve = serve            # serve(queue_index): the runner's kick
        self._on_error = on_error      # on_error(vring, exception)
        self._stop_r, self._stop_w = os.pipe()
        self._stop_asked = False       # read between serves; the pipe wakes a poll()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vhost-user-vq{vring.index}")

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop_asked = True
        os.write(self._stop_w, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)

    #L:731 A kick fd is meant to be an eventfd: readable once per kick, 8 bytes, and
    # drained by our read. A front-end may hand over anything -- a memfd or /dev/null
    # (always readable, read gives b""), a pipe whose writer closed (POLLHUP for ever)
    # -- and poll() would then wake us at once, every time: a thread at 100% CPU
    # serving an idle ring. Any of those signs means the fd will never kick properly,
    # so we say so once and stop watching it; the ring keeps its place, and a new
    # SET_VRING_KICK starts it again.
    def _run(self):
        poller = select.poll()
        poller.register(self.vring.kick_fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        # Buffers may already wait (a restarted ring, or a kick sent before the fd was
        # watched), so serve once before the first wait.
        if not self._serve_once():
            return
        while True:
            events = self._wait(poller)
            if self._stop_r in events:
                return
            flags = events.get(self.vring.kick_fd, 0)
            try:
                got = os.read(self.vring.kick_fd, 8) if flags & select.POLLIN else b""
            except BlockingIOError:
                got = None            # someone else drained it: nothing to say
            except OSError as e:
                log.warning("vhost-user: vq %d kick fd: %s; ring stopped", self.vring.index, e)
                return
            if got is not None and len(got) != 8:
                log.warning("vhost-user: vq %d kick fd is not an eventfd (poll %#x, read %d "
                            "bytes); no longer watched", self.vring.index, flags, len(got))
                return
            if not self._serve_once():
                return

    def _wait(self, poller):
        """The next events on the kick or stop fd: busy-polled for the ring's window
        (L:734), then asleep."""
        if not self.poll.max_ns:                  # polling off: no clock on the way
            self.sleeps += 1
            return dict(poller.poll())
        start = last = time.monotonic_ns()
        window = self.poll.usable_window(start)
        while window:
            events = poller.poll(0)
            now = time.monotonic_ns()
            if events:
                self.polls += 1
                self.poll.waited(now - start)
                return dict(events)
            if now - last > polling.POLL_PREEMPTED_NS:
                self.poll.preempted()             # someone else wanted this CPU
                break
            if now - start >= window:
                break
            last = now
        self.sleeps += 1
        events = dict(poller.poll())
        self.poll.waited(time.monotonic_ns() - start)
        return events

    def _serve_once(self):
        """Serve the ring, and again while a round was spent (L:221) and no stop came;
        False once the ring is broken."""
        try:
            while self._serve(self.vring.index) and not self._stop_asked:
                pass
            return not self.vring.broken      # a runner thread may have reported it
        except GuestError as e:
            self._on_error(self.vring, e)
        except Exception as e:        # a host error (disk gone, tap down): same treatment
            self._on_error(self.vring, e)
        return False


#L:732 For devices fed only by the guest (block, rng, console output) the kick
# watcher's thread is as good a queue thread as any, so the request is served
# right there -- no second wake-up, which is most of the cost of a 4 KiB request.
# It does the seed's notification dance as the threaded runner does (L:315): no
# kicks wanted while we drain, then ask again and look once more, so a chain added
# in between is never stranded (with EVENT_IDX a driver that is never told an
# avail_event would hardly kick at all). Devices with host input (a tty, a tap)
# use host/runner.py's ThreadedRunner, whose threads also watch the host fd.
class DirectRunner(InlineRunner):
    """Serve a kick on the thread that saw it: the KickWatcher's own thread."""

    def serve(self, queue_index):
        """Serve a kick; True if the ring has more for another round (L:221)."""
        device = self.device
        queue = device.queues[queue_index] if device is not None else None
        if queue is None:
            return False
        serve_until_idle(device, queue_index, self.interrupt)
        return queue.round_spent

    def kick(self, queue_index):
        return self.serve(queue_index) if self.device is not None else False
