"""An optional seccomp filter for after set-up, through Debian's python3-seccomp.

#L:980 Beyond the seed, as Firecracker and crosvm do: once every file, tap and device
# is open and privileges are dropped, the launcher needs only a short list of system
# calls -- moving bytes on fds it already holds, waiting, signalling, mapping memory,
# starting and joining its own threads, ioctl on the hypervisor fd. Anything else (open
# a file, make a socket, execve, ptrace, mount ...) is refused by the kernel, so a guest
# that found a bug in us would hold a process that can do little more than it did.
#
# libseccomp comes from Debian's python3-seccomp (a CPython 3.11 extension in
# /usr/lib/python3/dist-packages); we load that one file, not the whole directory, so
# no other system package leaks into the venv. Without it, available() says why and
# nothing is filtered. One cost: the filter survives execve, so a launcher under it
# cannot re-execute itself to reboot (L:004); install() therefore refuses execve, and
# a reboot request ends the launcher instead (its reexec fails with a LauncherError).
"""

import errno
import glob
import importlib.util
import sys

from .errors import LauncherError

DIST_PACKAGES = "/usr/lib/python3/dist-packages"

# What the launcher does after set-up: serve rings (read/write on fds, eventfds,
# polling), threads for queues (clone/futex/...), Python's own needs (mmap, signals,
# clocks), and the backends' ioctls on fds opened before.
ALLOWED = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "fsync", "fdatasync", "lseek", "close", "dup", "dup3", "fcntl",
    "fstat", "newfstatat", "statx", "ioctl",
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "eventfd2", "pipe2",
    "recvmsg", "sendmsg", "recvfrom", "sendto", "shutdown",
    "futex", "clone", "clone3", "set_robust_list", "rseq", "gettid", "getpid", "getppid",
    "tgkill", "madvise", "mmap", "munmap", "mremap", "mprotect", "brk",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "rt_sigtimedwait",
    "clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday", "getrandom",
    "sched_yield", "sched_getaffinity", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "prctl", "exit", "exit_group", "restart_syscall",
)


def _load():
    """The seccomp module, or the reason there is none."""
    try:
        import seccomp                     # noqa: F401 - a venv that has it
        return seccomp, None
    except ImportError:
        pass
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    found = glob.glob(f"{DIST_PACKAGES}/seccomp.{tag}-*.so")
    if not found:
        return None, (f"no libseccomp binding for Python {sys.version_info.major}."
                      f"{sys.version_info.minor} (apt-get install python3-seccomp)")
    spec = importlib.util.spec_from_file_location("seccomp", found[0])
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        return None, f"{found[0]}: {e}"
    return module, None


def available():
    """(True, None), or (False, why not)."""
    module, why = _load()
    return module is not None, why


def install(*, refuse_with=errno.EPERM, kill=False):
    """Allow ALLOWED from now on, for every thread of this process (TSYNC: threads
    already running are filtered too). Others fail with `refuse_with`, or kill the
    process if `kill` (Firecracker's choice; errno is kinder to a launcher's clean-up)."""
    module, why = _load()
    if module is None:
        raise LauncherError(f"seccomp: {why}")
    default = module.KILL_PROCESS if kill else module.ERRNO(refuse_with)
    flt = module.SyscallFilter(defaction=default)
    try:
        flt.set_attr(module.Attr.CTL_TSYNC, 1)
    except (AttributeError, OSError, ValueError):
        pass                                # older libseccomp: filter this thread (and later ones)
    for name in ALLOWED:
        try:
            flt.add_rule(module.ALLOW, name)
        except (RuntimeError, ValueError):
            pass                            # not a syscall on this architecture
    flt.load()
