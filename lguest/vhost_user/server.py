"""The socket side: accept a front-end, read its messages with their fds, reply.

#L:740 One front-end at a time, as vhost-user intends (a device has one driver); one
# that connects while another is served is refused at once (L:744). The
# socket thread reads a 12-byte header with recvmsg() -- a sender's SCM_RIGHTS fds
# arrive with the first byte of its message, so with the header -- then exactly the
# payload the header announces, hands the Message to the backend (L:720) and writes
# back any reply. Device work never happens here: rings are served on their own
# threads (L:730), so a slow disk cannot stall SET_VRING_* traffic.
#
# When the front-end hangs up, or sends something malformed, the connection closes
# and the backend forgets everything it was told (rings, memory, features), ready for
# the next front-end; a UML guest that reboots simply connects again. With
# isolate=True (the `lguest vhost-user` default) each session runs in a child process
# instead (L:742), so a front-end that crashes its session cannot take the server down.
"""

import array
import errno
import logging
import os
import select
import socket
import stat
import threading

from ..errors import LauncherError
from . import protocol as P
from .isolation import Session, describe

log = logging.getLogger("lguest.vhost_user")

_FD_SPACE = socket.CMSG_SPACE(P.MAX_FDS * array.array("i").itemsize)


class Disconnected(Exception):
    """The front-end closed its end."""


def _fds_from(ancdata, flags):
    fds = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise P.ProtocolError("too many file descriptors", detail=f"more than {P.MAX_FDS}")
    return fds


def _recv_exact(conn, length, fds):
    """Read exactly `length` bytes, collecting any fds that come along."""
    buf = bytearray()
    while len(buf) < length:
        data, ancdata, flags, _ = conn.recvmsg(length - len(buf), _FD_SPACE)
        fds.extend(_fds_from(ancdata, flags))
        if not data:
            if buf:
                raise P.ProtocolError("truncated message", detail=f"{len(buf)} of {length} bytes")
            raise Disconnected()
        buf += data
    return bytes(buf)


def read_message(conn):
    """One whole message from the socket; Disconnected at a clean end of stream."""
    fds = []
    try:
        request, flags, size = P.parse_header(_recv_exact(conn, P.HEADER.size, fds))
        payload = _recv_exact(conn, size, fds) if size else b""
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return P.Message(request, flags, payload, fds)


def serve_connection(backend, conn):
    """Run one front-end's session to its end; the backend is reset afterwards."""
    try:
        while True:
            try:
                msg = read_message(conn)
            except Disconnected:
                log.info("vhost-user %s: front-end disconnected", backend.device.name)
                return
            log.debug("vhost-user %s: <- %s %r", backend.device.name, msg.name, msg.payload[:40])
            reply = backend.handle(msg)
            if reply is not None:
                conn.sendall(reply)
    except P.ProtocolError as e:
        log.error("vhost-user %s: %s; closing the connection", backend.device.name, e)
    except OSError as e:
        log.error("vhost-user %s: connection error: %s", backend.device.name, e)
    finally:
        backend.disconnect()
        conn.close()


def _listen_at(path):
    """A listening unix socket that appears at `path` only once it listens.

    Front-ends (and scripts) wait for the path to exist and then connect; a socket
    bound there but not yet listening refuses them (ECONNREFUSED). So it is bound
    under a hidden name beside `path`, listens, and is then hard-linked at `path` in
    one step (link(), not rename(): link() fails on a file in the way, where rename()
    would clobber it) before the hidden name is dropped. Where that cannot be done --
    a path too long for the hidden name (sun_path is 108 bytes), a filesystem without
    hard links -- it is bound at `path` directly."""
    directory, name = os.path.split(path)
    hidden = os.path.join(directory, f".{name}.{os.getpid()}")
    if len(os.fsencode(hidden)) < 108:
        if os.path.exists(hidden):
            os.unlink(hidden)         # left by a server of this pid that was killed
        listener = _listening(hidden)
        try:
            os.link(hidden, path)
            return listener
        except OSError as e:
            listener.close()
            if e.errno == errno.EEXIST:
                raise
        finally:
            os.unlink(hidden)
    return _listening(path)


def _listening(address):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return listener


class VhostUserServer:
    """A unix socket serving one backend to one front-end at a time.

    isolate=True serves each front-end in a forked child process (L:742): the
    front-end can then crash its session, never the server. Off by default: in-process
    sessions are what library users (and `lguest run`'s console callback) rely on."""

    def __init__(self, backend, path, *, isolate=False):
        self.backend = backend
        self.path = path
        self.isolate = isolate
        self._stopping = threading.Event()
        self.connections = 0
        self._conn = None
        self._session = None
        # close() and the serving thread both reach for the live connection and child.
        self._lock = threading.Lock()
        self._thread = None
        self.listener = None
        try:
            if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)       # a stale socket from a previous run
            self.listener = _listen_at(path)
        except OSError as e:
            raise LauncherError(f"cannot listen on {path}: {e.strerror or e}") from None

    def serve_forever(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            while conn is not None:
                if self._stopping.is_set():
                    conn.close()
                    return
                conn = self._serve_refusing_others(conn)

    def _serve_refusing_others(self, conn):
        """Serve conn's session on this thread; meanwhile another thread refuses any
        other front-end (L:744). Returns a connection that came in as the session
        ended (its front-end hung up and came back), to be served next, or None."""
        self.connections += 1
        self._conn = conn
        log.info("vhost-user %s: front-end connected on %s", self.backend.device.name, self.path)
        done, handed = os.eventfd(0, os.EFD_CLOEXEC), []
        refuser = threading.Thread(target=_refuse_while_serving, args=(self, done, handed),
                                   daemon=True, name=f"vhost-user-refuse-{self.backend.device.name}")
        refuser.start()
        try:
            if self.isolate:
                self._serve_in_child(conn)
            else:
                serve_connection(self.backend, conn)
        finally:
            self._conn = None
            os.eventfd_write(done, 1)       # wakes the refuser's poll at once
            refuser.join()
            os.close(done)
        return handed[0] if handed else None

    def _serve_in_child(self, conn):
        """Fork (on this, the accepting thread), wait for the session to end, reap it."""
        session = self._start_session(conn)
        if session is not None:
            session.wait_exit()
            self._end_session(session, conn)

    def _start_session(self, conn):
        """Fork the session's process; None if refused (stopping, or fork failed)."""
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return None
            try:
                self._session = Session(conn, lambda: serve_connection(self.backend, conn))
            except OSError as e:          # EAGAIN, ENOMEM: refuse this one, keep serving
                log.error("vhost-user %s: cannot fork a session: %s", self.backend.device.name, e)
                conn.close()
                return None
            return self._session

    def _end_session(self, session, conn):
        with self._lock:
            status = session.reap()
            self._session = None
            # Only now does the front-end see the hang-up: our copy was the last one.
            conn.close()
        line = describe(status) if status is not None else None
        if line:
            log.error("vhost-user %s: %s", self.backend.device.name, line)

    def serve_in_thread(self, cpus=None):
        """Serve on a thread of its own; cpus: the CPUs it, and the ring threads and
        session processes it starts, may run on (None: any; lguest/uml/placement.py)."""
        def serve():
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            self.serve_forever()
        self._thread = threading.Thread(target=serve, daemon=True,
                                        name=f"vhost-user-{self.backend.device.name}")
        self._thread.start()
        return self._thread

    def close(self):
        self._stopping.set()
        with self._lock:
            conn = self._conn
            if conn is not None and conn.fileno() != -1:
                try:
                    conn.shutdown(socket.SHUT_RDWR)   # ends the session's recvmsg
                except OSError:
                    pass
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)     # the session's clean-up (L:740) has run when this returns
            if self._thread.is_alive() and self.isolate:
                with self._lock:      # a session process that would not stop
                    if self._session is not None:
                        self._session.kill()
                self._thread.join(5)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#L:744 `lguest vhost-user` with isolation serves all its sockets (two for --net=pair)
# from the one thread that calls this -- the main thread -- so that no fork() ever
# happens while another thread of ours runs: a thread holding a lock (logging's, a
# buffered stream's) at the moment of a fork leaves that lock held for ever in the
# child. One poll() watches every listener and, through a pidfd, every live session.
# A front-end that connects while another's session is live is refused at once, as
# qemu-storage-daemon does ("Only one vhost-user client is allowed"): it sees the socket
# close (QEMU: "Failed to read msg header", and it exits). Left queued in the backlog,
# a second QEMU sent GET_FEATURES and waited for ever, silently. A front-end that hung
# up and connects again at once is not refused: a newcomer waits up to REFUSE_GRACE
# for the live session to end, and is served if it does. (Deciding by whether the live
# session's peer had hung up raced: one cycle in ~1000 quick reconnects was refused.)
REFUSE_GRACE = 2.0     # seconds a new front-end waits for the live session to end


def _refuse_while_serving(server, done, handed):
    """serve_forever's helper thread: refuse other front-ends while a session is served,
    until the eventfd `done` fires; one that comes as the session ends is handed back."""
    poller = select.poll()
    poller.register(server.listener, select.POLLIN)
    poller.register(done, select.POLLIN)
    while True:
        try:
            ready = {fd for fd, _ in poller.poll()}
            if done in ready:
                return
            conn, _ = server.listener.accept()
        except OSError:
            return                      # the listener closed: the server is stopping
        # A front-end that hung up and came straight back may be here before its old
        # session has ended: give the session a moment to end, then serve it next.
        if select.select([done], [], [], REFUSE_GRACE)[0]:
            handed.append(conn)
            return
        _refuse_busy(server, conn)


def _ending_session(server, live):
    """The pidfd of server's live session if it ends within REFUSE_GRACE (a front-end
    that hung up and came straight back may be here before we have reaped its old
    session); None if it goes on."""
    for pidfd, (owner, _, _) in live.items():
        if owner is server:
            return pidfd if select.select([pidfd], [], [], REFUSE_GRACE)[0] else None
    return None


def _refuse_busy(server, conn):
    conn.close()
    log.warning("vhost-user %s: refused a second front-end on %s: one is connected "
                "(a socket serves one at a time)", server.backend.device.name, server.path)


def serve_isolated(servers, stop, interval=0.2):
    """Serve `servers` (isolate=True) on this thread until `stop` is set."""
    poller = select.poll()
    listening = {s.listener.fileno(): s for s in servers}
    live = {}                              # pidfd -> (server, session, conn)
    for fd in listening:
        poller.register(fd, select.POLLIN)
    try:
        def finish(pidfd):
            server, session, conn = live.pop(pidfd)
            poller.unregister(pidfd)
            os.close(pidfd)
            server._conn = None
            server._end_session(session, conn)

        while not stop.is_set():
            events = sorted(poller.poll(interval * 1000), key=lambda e: e[0] not in live)
            for fd, _ in events:
                if fd in live:
                    finish(fd)
                    continue
                server = listening[fd]
                conn, _ = server.listener.accept()
                if server._conn is not None:
                    ending = _ending_session(server, live)
                    if ending is None:
                        _refuse_busy(server, conn)
                        continue
                    finish(ending)
                server.connections += 1
                log.info("vhost-user %s: front-end connected on %s", server.backend.device.name, server.path)
                session = server._start_session(conn)
                if session is None:
                    continue
                server._conn = conn
                pidfd = os.pidfd_open(session.pid)
                live[pidfd] = (server, session, conn)
                poller.register(pidfd, select.POLLIN)
    finally:
        for pidfd, (server, session, conn) in live.items():
            try:
                conn.shutdown(socket.SHUT_RDWR)     # the session ends its rings in order
            except OSError:
                pass
            if not select.select([pidfd], [], [], 10)[0]:
                session.kill()
            os.close(pidfd)
            server._conn = None
            server._end_session(session, conn)
