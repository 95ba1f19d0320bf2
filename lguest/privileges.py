"""After set-up: chroot, drop privileges; and reboot by re-executing ourselves.

#L:970 If requested, chroot to a directory, then drop privileges: the seed's last steps
# before run_guest(). By then everything that needs root is open (/dev/lguest or
# /dev/kvm, the tap device, block files), and those fds keep working; what goes is the
# ability to open anything new outside the chroot, or to become root again. The order
# matters: supplementary groups, then the gid, then the uid (once the uid is gone we
# could no longer change groups). We look the user and their groups up *before* the
# chroot, because /etc/passwd and /etc/group are usually not inside it (the seed called
# initgroups() afterwards, reading the jail's /etc/group). Then we check that it took:
# setuid(0) must now fail.
"""

import logging
import os
import pwd
import sys

from .errors import LauncherError

log = logging.getLogger("lguest.privileges")

_main_args = None     # the seed's main_args: what reexec() runs again


def lookup_user(username):
    """(name, uid, gid, groups) for a user name; unknown user is a LauncherError."""
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise LauncherError(f"getpwnam failed, incorrect username? ({username})") from None
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError as e:
        raise LauncherError(f"initgroups failed for {username}: {e.strerror}") from e
    return entry.pw_name, entry.pw_uid, entry.pw_gid, groups


def drop(chroot=None, username=None):
    """chroot (then chdir "/") and/or become `username` for good."""
    user = lookup_user(username) if username else None
    if chroot:
        try:
            os.chroot(chroot)
        except OSError as e:
            raise LauncherError(f'chroot("{chroot}") failed: {e.strerror}') from e
        try:
            os.chdir("/")
        except OSError as e:
            raise LauncherError(f'chdir("/") failed: {e.strerror}') from e
        log.debug("chroot done")
    if user:
        _become(*user)
        log.debug("Dropping privileges completed")


def _become(name, uid, gid, groups):
    for what, call in (("initgroups", lambda: os.setgroups(groups)),
                       ("setresgid", lambda: os.setresgid(gid, gid, gid)),
                       ("setresuid", lambda: os.setresuid(uid, uid, uid))):
        try:
            call()
        except OSError as e:
            raise LauncherError(f"{what} failed for {name}: {e.strerror}") from e
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise LauncherError(f"dropping privileges to {name} did not take")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise LauncherError(f"still able to regain root after dropping privileges to {name}")


def remember_argv(argv):
    """The command line keeps its arguments here, as the seed's main() kept main_args."""
    global _main_args
    _main_args = list(argv)


def reexec(argv=None, command=None):
    #L:975 Reboot is pretty easy: clean up and exec() the Launcher afresh, with the same
    # arguments. The seed closed every fd beyond stderr first, since it did not track
    # them; Python opens everything close-on-exec already, and we make sure of the rest
    # (an fd someone marked inheritable) the same way, so nothing leaks into the new
    # launcher and, if exec fails, nothing here has been closed under anyone's feet.
    argv = list(argv if argv is not None else (_main_args or []))
    command = list(command or [sys.executable, "-m", "lguest"])
    close_on_exec_beyond_stderr()
    try:
        os.execv(command[0], command + argv)
    except OSError as e:
        raise LauncherError(f"Could not exec {command[0]}: {e.strerror}") from e


def close_on_exec_beyond_stderr():
    for fd in _open_fds():
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass                 # closed between listing and now


def _open_fds():
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return [int(name) for name in os.listdir(directory)]
        except OSError:
            continue
    # In a chroot without /proc: every fd number up to the limit, as the seed did.
    return range(3, min(os.sysconf("SC_OPEN_MAX"), 65536))
