"""Host directories in a UML guest over virtio-fs: the --share/--root options and the plan.

#L:886 Like virtme-ng, `lguest run` shows the guest the host's own files: by default the
# guest's root is the host's root (one virtio-fs share, served read-only and mounted
# read-only), with the current directory a second share, writable, at the same path, and
# the command runs there as the invoking user. The guest keeps its own kernel file
# systems: /proc, /sys, /dev (with /dev/pts and /dev/shm) and a tmpfs /tmp are mounted
# over the host's, so nothing in the guest reads the host's /proc over FUSE (where every
# file has size 0) or opens the host's device nodes. The busybox agent of L:821 stays in
# the initramfs; a setup command it runs once per boot mounts the shares under /host,
# and each command is wrapped to enter it: busybox `nsenter -r/host -w/host/CWD -S UID -G
# GID` chroots, changes directory (its -w is opened before the chroot) and drops to the
# user's ids in one exec (the host root holds no busybox, and once the ids are dropped
# chroot is no longer allowed), with an environment of PATH, HOME, TERM and LANG from
# the caller. busybox cannot set supplementary groups, and the guest's kernel checks
# a file's mode against them (virtiofs mounts with default_permissions): a user whose
# files are readable through a second group would be refused in the guest what the host
# allows. So when the user has groups beyond their gid, nsenter stays root and execs the
# host's own util-linux setpriv (it is in the guest's root: the host's), which drops to
# the ids with those groups; one more exec, for those users only. `--root=initramfs`
# keeps the busybox guest as it was; its --share directories are mounted at their guest
# paths.
"""

import os
import shlex
from dataclasses import dataclass, field

from ..errors import LauncherError
from .kit import say

ROOTS = ("host", "initramfs")
# Where the host's root is mounted in the guest, below the initramfs's own root.
HOST_MOUNT = "/host"
# The guest's own file systems: a share may not go there, and the host's are hidden.
GUEST_OWNED = ("/proc", "/sys", "/dev")
# Passed from the caller's environment to each command (when set).
PASSED_ENV = ("PATH", "HOME", "TERM", "LANG")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# util-linux's, on the host root (which is the guest's): sets supplementary groups.
SETPRIV = "/usr/bin/setpriv"
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
    host, sep, guest = _split_share(spec)
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


def _split_share(spec):
    """HOST[:GUEST] -> (host, sep, guest). A host directory's name may hold ':' (the
    whole spec naming a directory is a HOST alone); else the GUEST is what follows the
    last ':/', as a guest path is absolute."""
    if os.path.isdir(spec):
        return spec, "", ""
    at = spec.rfind(":/")
    if at > 0:
        return spec[:at], ":", spec[at + 1:]
    return spec.partition(":")


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
    groups: tuple = ()                          # supplementary groups, as getgroups()

    @property
    def served(self):
        """[(host directory, tag, read_only)] for the virtio-fs back-ends."""
        return [(s.host, s.tag, s.read_only) for s in self.shares]

    @property
    def host_root(self):
        return self.root == "host"

    def hidden_from_guest(self, path):
        """The guest directory that hides host `path` from the guest's commands (its own
        /tmp, /proc, /sys or /dev over the host's), or None if the guest sees it."""
        if not self.host_root:
            return None
        path = os.path.abspath(path)
        for top in ("/tmp",) + GUEST_OWNED:
            if _under(path, top):
                shared = any(_under(path, s.guest) for s in self.shares if s.guest != "/")
                return None if shared else top
        return None

    def _mount_point(self, share):
        if share.guest == "/":
            return HOST_MOUNT
        return (HOST_MOUNT if self.host_root else "") + share.guest

    def _container(self, share):
        """The deepest other share holding this one's guest path (None: the initramfs)."""
        holders = [o for o in self.shares
                   if o.guest != share.guest and _under(share.guest, o.guest)]
        return max(holders, key=lambda o: len(o.guest), default=None)

    def mount_points_to_make(self):
        """Directories to mkdir before mounting, as the initramfs sees them; LauncherError
        for a guest path nothing can hold (on the read-only root, or inside another share:
        it must be there already)."""
        made = []
        for share in self.shares:
            if share.guest == "/":
                continue
            holder = self._container(share)
            if holder is None or (holder.guest == "/" and _under(share.guest, "/tmp")):
                made.append(share.guest)        # the initramfs's own root, or its /tmp
                continue
            inside = os.path.join(holder.host, os.path.relpath(share.guest, holder.guest))
            if not os.path.isdir(inside):
                where = ("the host's root (read-only)" if holder.guest == "/"
                         else f"the share at {holder.guest}")
                raise LauncherError(f"--share {share.host}:{share.guest}: {share.guest} is in "
                                    f"{where} but {inside} is not a directory there; with "
                                    "--root=host a guest path must exist, or be under /tmp")
        return made

    def _fstab(self):
        """The mounts after the first, parents first, as fstab(5) lines."""
        lines = []
        for share in self.shares[1:]:
            lines.append((share.tag, self._mount_point(share), "virtiofs",
                          "ro" if share.read_only else "rw"))
        if self.host_root:
            lines[:0] = [(src, point.format(top=HOST_MOUNT), kind, opts)
                         for src, point, kind, opts in _GUEST_OWN]
        return "".join(" ".join(_fstab_escape(f) for f in line) + " 0 0\n" for line in lines)

    def setup_script(self):
        """The busybox script the agent runs once per boot, as root, to mount it all:
        one `mount` (retried until virtio_uml has probed the tag) and one `mount -a` (a
        fork costs ~10-30 ms in UML, so not one per mount)."""
        if not self.shares:
            return None
        first = self.shares[0]
        lines = [_MOUNT_FUNCTION]
        made = self.mount_points_to_make()
        if self.host_root:
            # The kit's initramfs has /host; `[` is a builtin, mkdir would be a process.
            lines.append(f"[ -d {HOST_MOUNT} ] || mkdir {HOST_MOUNT} || exit 1")
        if made:
            lines.append("mkdir -p " + " ".join(shlex.quote(d) for d in made) + " || exit 1")
        lines.append(f"lg_mount {first.tag} {shlex.quote(self._mount_point(first))} "
                     f"{'ro' if first.read_only else 'rw'} || exit 1")
        fstab = self._fstab()
        if fstab:
            # In the initramfs's root, which the commands (chrooted) never see.
            lines.append(f"printf '%s' {shlex.quote(fstab)} > /lguest.fstab")
            lines.append("mount -a -T /lguest.fstab || exit 1")
        return "\n".join(lines) + "\n"

    def wrap(self, command):
        """The shell line that runs `command` (a shell string) as planned."""
        if not self.host_root:
            return command
        env = [shlex.quote(f"{k}={v}") for k, v in self.env.items()]
        uid, gid = self.user
        if set(self.groups) - {gid}:
            # Root in the chroot, then the host's setpriv drops to the ids and groups.
            ids = (f"{SETPRIV} --reuid={int(uid)} --regid={int(gid)} "
                   f"--groups={','.join(str(int(g)) for g in self.groups)}")
        else:
            ids = f"-S {int(uid)} -G {int(gid)}"
        # The agent's shell exports PATH and HOME only (L:821), and PWD, SHLVL of its
        # own: `unset` and `export` are builtins, where `env -i` would be one more exec.
        return (f"unset PWD OLDPWD SHLVL; export {' '.join(env)}; exec /bin/busybox nsenter -F "
                f"{shlex.quote('-r' + HOST_MOUNT)} {shlex.quote('-w' + HOST_MOUNT + self.cwd)} "
                f"{ids} /bin/sh -c {shlex.quote(command)}")


def supplementary_groups(gid, groups, setpriv=SETPRIV):
    """The groups a command can be given: all of them where the host has setpriv;
    without it, none beyond gid (said once, on stderr: the command may be refused a
    file its user could read through one of them)."""
    groups = tuple(dict.fromkeys(int(g) for g in groups))
    if not set(groups) - {gid} or os.access(setpriv, os.X_OK):
        return groups
    say(f"no {setpriv} on this host: the command runs without the supplementary groups "
        f"{','.join(str(g) for g in groups if g != gid)}")
    return ()


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

# The guest's own /proc, /sys, /dev and /tmp over the host's (L:886), as fstab fields.
_GUEST_OWN = (("devpts", "/dev/pts", "devpts", "defaults"),
              ("shm", "/dev/shm", "tmpfs", "defaults"),
              ("proc", "{top}/proc", "proc", "defaults"),
              ("sys", "{top}/sys", "sysfs", "defaults"),
              ("/dev", "{top}/dev", "none", "rbind"),
              ("/tmp", "{top}/tmp", "none", "bind"))


def _fstab_escape(field):
    """fstab's octal escapes (getmntent decodes them) for what would split a field."""
    return "".join({" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}.get(c, c)
                   for c in field)


def caller_env(environ=None, terminal=False):
    """PATH, HOME, TERM, LANG from the caller. The guest's stdout is a UML console
    line, a tty whatever ours is: unless ours is a terminal too, TERM=dumb, so programs
    that colour a tty (pytest, ls, git) do not put escape codes into a pipe or a file."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in PASSED_ENV if environ.get(k)}
    if not terminal:
        env["TERM"] = "dumb"
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/")
    return env


def plan(shares=(), root="host", cwd=None, user=None, environ=None, terminal=False):
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
        made = Plan(root, tagged)
        made.mount_points_to_make()             # a guest path no share can hold: say so now
        return made
    cwd = os.path.realpath(cwd or os.getcwd())
    if not os.path.isdir(cwd):
        raise LauncherError(f"the working directory {cwd} is not a directory on this host")
    implicit = []
    # The current directory is writable unless a --share already says what it is; "/"
    # or the guest's own directories are not shared again.
    if cwd not in seen and cwd != "/" and not any(_under(cwd, t) for t in GUEST_OWNED):
        implicit = [Share(cwd, cwd, False)]
    ordered = sorted(implicit + explicit, key=lambda s: s.guest.count("/"))
    tagged = [Share("/", "/", True, "lgroot")] + [
        Share(s.host, s.guest, s.read_only, f"lgshare{i}") for i, s in enumerate(ordered)]
    if user is None:
        user = (os.getuid(), os.getgid(), os.getgroups())
    uid, gid, *groups = user                    # (uid, gid[, supplementary groups])
    groups = supplementary_groups(gid, groups[0]) if groups else ()
    made = Plan(root, tagged, cwd, (uid, gid), caller_env(environ, terminal), groups)
    made.mount_points_to_make()
    return made
