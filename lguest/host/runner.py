"""The threaded DeviceRunner: one thread per virtqueue, woken by an eventfd.

#L:900 The seed's start_virtqueue(): at DRIVER_OK every enabled queue gets a thread of
# its own and an eventfd; a notify from the guest writes the eventfd; the thread wakes,
# serves what it can, and goes back to sleep. "Before we serviced each virtqueue in a
# separate thread, that was unacceptably slow: the Guest waits until the read is
# finished before running anything else, even if it could have been doing useful
# work." The seed's threads were clone()d processes killed with SIGTERM at reset; ours
# are Python threads that leave when a stop eventfd becomes readable, and are joined,
# so a reset returns only once no thread can touch the rings any more.
#
# The runner knows the device, its queues, one interrupt callable and kicks: nothing
# of PCI. The virtio-PCI transport and the vhost-user back-end both use it.
"""

import logging
import os
import select
import threading

from ..devices.base import DeviceRunner, serve_until_idle

log = logging.getLogger("lguest.runner")

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
EFD_FLAGS = os.EFD_CLOEXEC | os.EFD_NONBLOCK


class ThreadedRunner(DeviceRunner):
    """Serve each of a device's queues on its own thread.

    `wake_fds` maps a queue index to a host fd (stdin, a tap) that makes the queue's
    thread wake when it becomes readable, while the device says it wants host input
    (device.wants_host_input(qi)): the seed's input threads sat in readv() on it.
    `on_error(exc)` hears of a GuestError (or anything else) that stopped a queue's
    thread; without it the error is logged. The interrupt callable is called from the
    queue threads, so it must be thread-safe."""

    def __init__(self, wake_fds=None, on_error=None):
        self.wake_fds = dict(wake_fds or {})
        self.on_error = on_error
        # on_queue_error(qi, exc), if set, hears which queue stopped (vhost-user, L:730).
        self.on_queue_error = None
        self.device = None
        self.interrupt = None
        self.errors = []
        self._threads = []
        self._kick_fds = {}
        self._stop_fd = None
        self._lock = threading.Lock()

    def start(self, device, interrupt):
        self.stop()
        with self._lock:
            self.device, self.interrupt = device, interrupt
            if hasattr(device, "wake_queue"):
                # A device whose host input may start flowing without a kick (a net
                # queue pair turned on, L:385) asks for its queue's thread this way.
                device.wake_queue = self.kick
            self._stop_fd = os.eventfd(0, EFD_FLAGS)
            for qi, queue in enumerate(device.queues):
                if queue is None:
                    continue
                self._kick_fds[qi] = os.eventfd(0, EFD_FLAGS)
                # Everything the thread needs is handed over now: a stop() that runs
                # before the thread's first line clears self._stop_fd and self.device,
                # and a start() after it would give a late reader the next generation's.
                thread = threading.Thread(
                    target=self._serve,
                    args=(qi, queue, self._kick_fds[qi], device, interrupt, self._stop_fd),
                    name=f"{device.name}/{device.queue_names[qi]}", daemon=True)
                self._threads.append(thread)
            # A kick may come the moment DRIVER_OK is written; buffers already there are
            # served because each thread starts with a pass over its queue.
            for thread in self._threads:
                thread.start()

    def kick(self, queue_index):
        with self._lock:
            fd = self._kick_fds.get(queue_index)
            if fd is not None:
                os.eventfd_write(fd, 1)

    def kick_fd(self, queue_index):
        """The eventfd a kick writes (for an ioeventfd or a vhost-user kick fd)."""
        return self._kick_fds.get(queue_index)

    #L:901 Reset: wake every thread with the stop eventfd, wait for each to finish
    # the request it is serving (anything it acknowledged stays acknowledged; nothing
    # is left half-done), then close the eventfds. Only then may the transport let
    # the device forget its queues.
    def stop(self):
        with self._lock:
            threads, self._threads = self._threads, []
            fds = list(self._kick_fds.values())
            self._kick_fds = {}
            stop_fd, self._stop_fd = self._stop_fd, None
        if stop_fd is None:
            return
        os.eventfd_write(stop_fd, 1)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
        for fd in fds + [stop_fd]:
            os.close(fd)
        self.device = None
        self.interrupt = None

    @property
    def running(self):
        return bool(self._threads)

    # -- one queue's thread ------------------------------------------------------------
    def _serve(self, qi, queue, kick_fd, device, interrupt, stop_fd):
        wake_fd = self.wake_fds.get(qi)
        wants = getattr(device, "wants_host_input", None)
        poller = select.poll()
        poller.register(kick_fd, select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        watching = False
        hung_up = False
        try:
            while True:
                _drain(kick_fd)
                progress = serve_until_idle(device, qi, interrupt)   # L:315
                if queue.round_spent:
                    os.eventfd_write(kick_fd, 1)    # more to do: come back after a look at stop_fd
                if hung_up and not progress:
                    #L:903 A host fd that reports an error or hang-up and still gives
                    # the device nothing (a tap whose interface was deleted answers
                    # every read with EBADFD) would wake us for ever: a busy loop
                    # filling the log. Say so once and stop watching it; kicks are
                    # still served, so the guest's output goes on (and fails politely).
                    log.warning("%s vq %s: host fd %d hung up; no longer watched",
                                device.name, device.queue_names[qi], wake_fd)
                    if watching:
                        poller.unregister(wake_fd)
                        watching = False
                    wake_fd = None
                want = wake_fd is not None and wants is not None and wants(qi)
                if want and not watching:
                    poller.register(wake_fd, _READABLE)
                elif watching and not want:
                    poller.unregister(wake_fd)
                watching = want
                events = dict(poller.poll())
                if stop_fd in events:
                    return
                flags = events.get(wake_fd, 0) if wake_fd is not None else 0
                # Closed under us (POLLNVAL), or gone: checked after one more pass.
                hung_up = bool(flags & (select.POLLNVAL | select.POLLERR | select.POLLHUP))
        except Exception as exc:            # noqa: BLE001 - a queue thread must report, not vanish
            self._failed(device, qi, exc)

    def _failed(self, device, qi, exc):
        name = device.queue_names[qi] if device else qi
        if self.on_queue_error is not None:
            self.on_queue_error(qi, exc)
        elif self.on_error is not None:
            self.on_error(exc)
        else:
            log.error("%s vq %s stopped: %s", getattr(device, "name", "device"), name, exc,
                      exc_info=not hasattr(exc, "rule"))
        # The traceback's frames hold memoryviews of guest memory; keeping them would
        # stop the launcher from unmapping it at exit.
        exc.__traceback__ = None
        self.errors.append(exc)


def _drain(fd):
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
