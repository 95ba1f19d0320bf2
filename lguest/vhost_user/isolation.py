"""Each front-end's session in a process of its own, so no front-end can kill the server.

#L:742 A front-end hands us its guest memory as files we map shared (L:710). If it
# later shrinks such a file, our next access to the lost pages is SIGBUS: not an
# exception but the end of whichever process touched them. Python cannot recover from
# that (the handler would run after the faulting access, which would fault again), and
# sealing the file against shrinking (L:712) only works for memfds that allow it;
# User-Mode Linux's memory is a plain temporary file. So the standalone server
# (`lguest vhost-user`, L:770) forks right after accept() and the child serves the
# session: a SIGBUS -- or any other crash a front-end provokes -- ends that session
# only. The parent reaps the child, logs one line if a signal ended it, and accepts
# the next front-end. (Copying through pread/pwrite instead of mapping would survive a
# shrink too, but gives up the zero-copy path every request takes.)
#
# What the child inherits is what must outlive a session: the image's fd, the tap's
# fd, the other end of a guest-to-guest link. The device's in-memory state is the
# parent's, untouched by any session, so every session starts from it, as a
# reconnecting front-end expects (it sets everything up again). One such state is the
# block store's flush bookkeeping: a child always syncs on its first flush, which only
# errs on the safe side.
#
# Fork hazards, and why each is met: we fork in the thread that runs accept(), before
# the session has any thread of its own, so the child's only thread is the one that
# serves it. CPython's logging takes its module lock around fork() and re-creates its
# handlers' locks in the child. The child drops every stream socket it inherited but
# its own connection: the listeners (ours and other servers'), other sessions'
# connections, and any front-end living in this same process -- otherwise a copy in
# the child would keep such a socket open and its peer would never see the hang-up.
# Each is replaced by /dev/null rather than closed, so a Python object still holding
# the number can never close an unrelated file that reuses it. The child dies with
# its parent (PR_SET_PDEATHSIG): killing the server kills the back-end, as it did
# before. It ignores SIGINT: a terminal's ^C reaches the whole process group, and the
# parent ends the session in order (close() shuts the connection; the rings stop, a
# write in flight completes) rather than mid-request.
#
# Not for every caller: a device whose host side is a stream socket would lose it in
# the child; and a library user streaming console output into a Python callback
# (`lguest run`, lguest/uml/ours.py) needs the in-process server, which stays the default.
"""

import ctypes
import logging
import os
import signal
import socket
import stat

log = logging.getLogger("lguest.vhost_user")

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass                    # no prctl: the session ends when its front-end leaves
    if os.getppid() != parent:  # the parent died before the prctl took
        os._exit(1)


def _drop_other_stream_sockets(keep):
    """Point every inherited stream socket but `keep` at /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd in (0, 1, 2, keep, null):
                continue
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                probe = socket.socket(fileno=fd)
                try:
                    kind = probe.type
                finally:
                    probe.detach()
                if kind == socket.SOCK_STREAM:
                    os.dup2(null, fd)
            except OSError:
                pass            # the listing's own fd, gone by now
    finally:
        os.close(null)


def _child(conn, serve, parent):
    code = 1
    try:
        _die_with_parent(parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _drop_other_stream_sockets(conn.fileno())
        serve()
        code = 0
    except BaseException:
        log.exception("vhost-user session process failed")
    finally:
        for handler in logging.getLogger().handlers + log.handlers:
            try:
                handler.flush()
            except Exception:
                pass
        os._exit(code)


def describe(status):
    """One line for how a session process ended, or None if it ended normally."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = " (did the front-end shrink its memory?)" if sig == signal.SIGBUS else ""
        return f"front-end session ended by {name}{hint}"
    code = os.waitstatus_to_exitcode(status)
    return f"front-end session process exited with status {code}" if code else None


class Session:
    """The parent's side of one session process."""

    def __init__(self, conn, serve):
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            _child(conn, serve, parent)       # never returns
        self.reaped = False

    def wait_exit(self):
        """Block until the child has ended, without reaping it: until reap() its pid
        stays ours, so kill() can never signal a stranger who reused it."""
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass

    def reap(self):
        """Collect the ended child; its exit status (None if someone else reaped it)."""
        self.reaped = True
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None

    def kill(self):
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)
