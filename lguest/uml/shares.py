"""Host directories in a UML guest over virtio-fs: the --share/--root options and the plan.

#L:886 Like virtme-ng, `lguest run` shows the guest the host's own files: by default the
# guest's root is the host's root (one virtio-fs share, served read-only and mounted
# read-only), with the current directory a second share, writable, at the same path, and
# the command runs there as the invoking user. The guest keeps its own kernel file
# systems: /proc, /sys, /dev (with /dev/pts and /dev/shm) and a tmpfs /tmp are mounted
# over the host's, so nothing in the guest reads the host's /proc over FUSE (where every
# file has size 0) or opens the host's device nodes. The busybox agent of L:821 stays in
# the initramfs; a setup command it runs once per boot mounts the shares under /host,
# and each command is wrapped to enter it: busybox `nsenter -r/host -w CWD -S UID -G
# GID` chroots, changes directory and drops to the user's ids in one exec (the host root
# holds no busybox, and once the ids are dropped chroot is no longer allowed), under
# `env -i` with PATH, HOME, TERM and LANG from the caller. `--root=initramfs` keeps the
# busybox guest as it was; its --share directories are mounted at their guest paths.
"""

import os
import shlex
from dataclasses import dataclass, field

from ..errors import LauncherError

ROOTS = ("host", "initramfs")
# Where the host's root is mounted in the guest, below the initramfs's own root.
HOST_MOUNT = "/host"
# The guest's own file systems: a share may not go there, and the host's are hidden.
GUEST_OWNED = ("/proc", "/sys", "/dev")
# Passed from the caller's environment to each command (when set).
PASSED_ENV = ("PATH", "HOME", "TERM", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# virtio_uml probes a device some time after boot; a mount before that finds no tag.
MOUNT_TRIES, MOUNT_PAUSE_US = 250, 20000


@dataclass(frozen=True)
class Share:
    host: str                  # an absolute, resolved host directory
    guest: str                 # an absolute, normalised path in the guest
    read_only: bool = False
    tag: str = ""              # the virtio-fs tag, given when planned


def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


def parse_share(text):
    """'HOST[:GUEST][,ro|,rw]' -> Share; HOST must be a directory, GUEST absolute."""
    spec, read_only = text, False
    head, sep, flag = text.rpartition(",")
    if sep and flag in ("ro", "rw"):
        spec, read_only = head, flag == "ro"
    host, sep, guest = spec.partition(":")
    if not host:
        raise LauncherError(f"--share {text}: no host directory (HOST[:GUEST][,ro])")
    if not os.path.isdir(host):
        raise LauncherError(f"--share {text}: {host} is not a directory on this host")
    host = os.path.realpath(host)
    guest = guest if sep else host
    if not guest.startswith("/"):
        raise LauncherError(f"--share {text}: the guest path {guest!r} must be absolute")
    guest = os.path.normpath(guest)
    guest = "/" + guest.lstrip("/")             # normpath keeps a leading "//"
    if guest == "/":
        raise LauncherError(f"--share {text}: the guest's / is its root (see --root)")
    if any(_under(guest, top) for top in GUEST_OWNED):
        raise LauncherError(f"--share {text}: {guest} is under the guest's own "
                            f"{', '.join(GUEST_OWNED)}")
    return Share(host, guest, read_only)


def _as_share(item):
    if isinstance(item, Share):
        return item
    if isinstance(item, str):
        return parse_share(item)
    host, guest, *ro = item                     # (host, guest[, read_only])
    return parse_share(f"{host}:{guest}" + (",ro" if ro and ro[0] else ""))


@dataclass
class Plan:
    """What one Guest's boot needs for its shares: devices, mounts, command wrapper."""

    root: str
    shares: list                                # Share, with tags; the host root first
    cwd: str | None = None                      # where commands run (host root only)
    user: tuple = (0, 0)
    env: dict = field(default_factory=dict)

    @property
    def served(self):
        """[(host directory, tag, read_only)] for the virtio-fs back-ends."""
        return [(s.host, s.tag, s.read_only) for s in self.shares]

    @property
    def host_root(self):
        return self.root == "host"

    def _mount_point(self, share):
        if share.guest == "/":
            return HOST_MOUNT
        return (HOST_MOUNT if self.host_root else "") + share.guest

    def setup_script(self):
        """The busybox script the agent runs once per boot, as root, to mount it all."""
        if not self.shares:
            return None
        lines = [_MOUNT_FUNCTION]
        for share in self.shares:
            point = shlex.quote(self._mount_point(share))
            opts = "ro" if share.read_only else "rw"
            # `[` is a shell builtin, mkdir a process: a fork costs ~10 ms in UML.
            lines.append(f"{{ [ -d {point} ] || mkdir -p {point}; }} && "
                         f"lg_mount {share.tag} {point} {opts} || exit 1")
            if share.guest == "/":
                lines.append(_GUEST_OWN_MOUNTS.format(top=HOST_MOUNT))
        return "\n".join(lines) + "\n"

    def wrap(self, command):
        """The shell line that runs `command` (a shell string) as planned."""
        if not self.host_root:
            return command
        env = [shlex.quote(f"{k}={v}") for k, v in self.env.items()]
        uid, gid = self.user
        return (f"exec /bin/busybox env -i {' '.join(env)} /bin/busybox nsenter -F "
                f"{shlex.quote('-r' + HOST_MOUNT)} {shlex.quote('-w' + HOST_MOUNT + self.cwd)} "
                f"-S {int(uid)} -G {int(gid)} /bin/sh -c {shlex.quote(command)}")


_MOUNT_FUNCTION = f"""lg_mount() {{
  n=0
  until mount -t virtiofs -o "$3" "$1" "$2" 2>/dev/null; do
    n=$((n+1))
    if [ $n -ge {MOUNT_TRIES} ]; then
      echo "lguest: cannot mount the share for $2 (tag $1):" >&2
      mount -t virtiofs -o "$3" "$1" "$2"
      return 1
    fi
    usleep {MOUNT_PAUSE_US}
  done
}}"""

# The guest's own /proc, /sys, /dev and /tmp over the host's (L:886).
_GUEST_OWN_MOUNTS = """[ -d /dev/pts ] && [ -d /dev/shm ] || mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null; mount -t tmpfs shm /dev/shm 2>/dev/null
mount -t proc proc {top}/proc && mount -t sysfs sys {top}/sys && \\
  mount --rbind /dev {top}/dev && mount --bind /tmp {top}/tmp || exit 1"""


def caller_env(environ=None):
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in PASSED_ENV if environ.get(k)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/")
    return env


def plan(shares=(), root="host", cwd=None, user=None, environ=None):
    """Check the options and make the Plan; LauncherError for anything wrong."""
    if root not in ROOTS:
        raise LauncherError(f"--root={root}: must be one of {', '.join(ROOTS)}")
    explicit = [_as_share(s) for s in shares]
    seen = {}
    for share in explicit:
        if share.guest in seen:
            raise LauncherError(f"--share: two shares for the guest path {share.guest} "
                                f"({seen[share.guest]} and {share.host})")
        seen[share.guest] = share.host
    if root == "initramfs":
        tagged = [Share(s.host, s.guest, s.read_only, f"lgshare{i}")
                  for i, s in enumerate(explicit)]
        return Plan(root, tagged)
    cwd = os.path.realpath(cwd or os.getcwd())
    implicit = []
    # The current directory is writable unless a --share already says what it is; "/"
    # or the guest's own directories are not shared again.
    if cwd not in seen and cwd != "/" and not any(_under(cwd, t) for t in GUEST_OWNED):
        implicit = [Share(cwd, cwd, False)]
    for share in explicit:
        if not (os.path.isdir(share.guest) or _under(share.guest, "/tmp")):
            raise LauncherError(f"--share {share.host}:{share.guest}: with the host's root "
                                f"(read-only) as the guest's, {share.guest} must be a "
                                "directory on this host, or under /tmp")
    ordered = sorted(implicit + explicit, key=lambda s: s.guest.count("/"))
    tagged = [Share("/", "/", True, "lgroot")] + [
        Share(s.host, s.guest, s.read_only, f"lgshare{i}") for i, s in enumerate(ordered)]
    if user is None:
        user = (os.getuid(), os.getgid())
    return Plan(root, tagged, cwd, tuple(user), caller_env(environ))
