"""A host directory shared with a guest: the file operations behind virtio-fs (L:391).

#L:393 Every inode the guest knows is an O_PATH file descriptor we hold, in a table
# keyed by the node id we gave it, and every name the guest sends is ONE path component
# resolved beneath the descriptor of its parent directory -- never a path. Names with
# '/', a NUL, or equal to "." or ".." are refused; symlinks are never followed (O_PATH
# | O_NOFOLLOW opens the link itself; its target is the guest's to resolve, in the
# guest). One component opened with O_NOFOLLOW relative to a held directory has no
# step to take outside it (open_beneath says why); anything longer would go through
# openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), or be refused without it. So "..",
# absolute or escaping symlinks, and names swapped for symlinks by a racing rename
# cannot lead outside the share: there is no path to walk out along. Files are opened
# for I/O through /proc/self/fd/N of their O_PATH descriptor, which names the inode, not
# a path. The same host inode always gets the same node id (keyed by st_dev, st_ino),
# counted up by each lookup and down by FORGET; at zero its descriptor is closed.
"""

import ctypes
import errno
import os
import resource
import stat
import threading
import time

SYS_OPENAT2 = 437
SYS_RENAMEAT2 = 316
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_FDCWD = -100
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
ROOT_ID = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# openat2 is on the path of every LOOKUP: a typed function and one struct open_how per
# set of flags keep the ctypes call cheap.
_openat2 = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_void_p, ctypes.c_size_t, use_errno=True)(("syscall", _libc))


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _check(result):
    if result < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return result


def _probe_openat2():
    how = OpenHow(os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_BENEATH)
    fd = _openat2(SYS_OPENAT2, AT_FDCWD, b".", ctypes.addressof(how), ctypes.sizeof(how))
    if fd < 0:
        return False
    os.close(fd)
    return True


HAVE_OPENAT2 = _probe_openat2()
_hows = {}


def _how(flags, mode):
    key = (flags, mode)
    how = _hows.get(key)
    if how is None:
        how = _hows[key] = OpenHow(flags, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    return how


def open_beneath(dirfd, name, flags, mode=0):
    """Open `name` beneath dirfd, never following a symlink, never leaving dirfd.

    One component that is not "." or ".." (every name check_name lets through, so every
    name a guest sends) cannot lead out of dirfd, so it is opened with plain openat: the
    kernel looks up that one name in the directory dirfd holds -- no path is walked, so
    there is nothing for RESOLVE_BENEATH to confine -- and O_NOFOLLOW stops at it if it
    is a symlink (O_PATH opens the link itself; any other open, O_CREAT included, fails
    with ELOOP), so no link, magic or not, is followed. That is what openat2 would
    check, without its ctypes call (~1.5 us of each LOOKUP). Anything else -- "..", ".",
    a name with '/', which no caller passes -- is confined by openat2's RESOLVE_BENEATH
    | RESOLVE_NO_MAGICLINKS, or refused with EXDEV where the kernel has no openat2.
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if b"/" not in name and name != b".." and name != b".":
        return os.open(name, flags, mode, dir_fd=dirfd)
    if not HAVE_OPENAT2:
        raise OSError(errno.EXDEV, "not one component, and no openat2 to confine it")
    how = _how(flags, mode if flags & os.O_CREAT else 0)
    fd = _openat2(SYS_OPENAT2, dirfd, name, ctypes.addressof(how), OPEN_HOW_SIZE)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


OPEN_HOW_SIZE = ctypes.sizeof(OpenHow)


def raise_fd_limit(ceiling=1 << 20):
    """Every inode the guest holds is an fd of ours: let the server have as many as the
    system allows (as virtiofsd does), not the usual soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = max(hard, min(int(f.read()), ceiling))
        except (OSError, ValueError):
            pass
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        except (OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_name(name):
    """A name FUSE may send: one component, not "." or ".."."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise OSError(errno.EINVAL, "invalid name")
    if len(name) > 255:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return name


def proc_path(fd):
    return f"/proc/self/fd/{fd}"


class Inode:
    __slots__ = ("fd", "key", "nlookup", "is_dir")

    def __init__(self, fd, key, is_dir):
        self.fd, self.key, self.nlookup, self.is_dir = fd, key, 0, is_dir


class SharedDirectory:
    """The `fs` of devices/fs.py: one host directory, optionally read-only."""

    def __init__(self, path, *, read_only=False):
        self.path = os.path.abspath(path)
        self.read_only = read_only
        root_fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(root_fd)
        self.root = Inode(root_fd, (st.st_dev, st.st_ino), True)
        self.as_root = os.geteuid() == 0
        current = os.umask(0)
        os.umask(current)
        self.umask = current
        self._lock = threading.Lock()
        self._inodes = {ROOT_ID: self.root}
        self._by_key = {self.root.key: ROOT_ID}
        self._next_id = ROOT_ID + 1
        self._handles = {}          # fh -> (fd, dir listing or None, node id)
        self._next_fh = 1

    # -- the inode table -----------------------------------------------------------------
    def _inode(self, nodeid):
        inode = self._inodes.get(nodeid)
        if inode is None:
            raise OSError(errno.EBADF, f"unknown node {nodeid}")
        return inode

    def _dir(self, nodeid):
        inode = self._inodes.get(nodeid)
        if inode is None or not inode.is_dir:
            self._inode(nodeid)                # EBADF if unknown
            raise OSError(errno.ENOTDIR, "not a directory")
        return inode

    def _remember(self, fd, st):
        """Count one lookup of the inode open at fd; return (node id, stat). Takes fd."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            nodeid = self._by_key.get(key)
            if nodeid is None:
                nodeid = self._next_id
                self._next_id += 1
                inode = self._inodes[nodeid] = Inode(fd, key, stat.S_ISDIR(st.st_mode))
                self._by_key[key] = nodeid
                fd = None
            else:
                inode = self._inodes[nodeid]
            inode.nlookup += 1
        if fd is not None:
            os.close(fd)                       # known already: a second descriptor
        return nodeid, st

    def lookup(self, parent, name):
        fd = open_beneath(self._dir(parent).fd, check_name(name), os.O_PATH)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        return self._remember(fd, st)

    def forget(self, nodeid, nlookup):
        with self._lock:
            inode = self._inodes.get(nodeid)
            if inode is None or nodeid == ROOT_ID:
                return
            inode.nlookup -= min(nlookup, inode.nlookup)
            if inode.nlookup == 0:
                del self._inodes[nodeid]
                del self._by_key[inode.key]
                os.close(inode.fd)

    def dir_node(self, fh):
        return self._handle(fh)[2]

    def reset(self):
        """A new FUSE session (INIT) or its end (DESTROY): forget every inode and handle."""
        with self._lock:
            for nodeid, inode in list(self._inodes.items()):
                if nodeid != ROOT_ID:
                    os.close(inode.fd)
            self._inodes = {ROOT_ID: self.root}
            self._by_key = {self.root.key: ROOT_ID}
            for fd, _, _ in self._handles.values():
                os.close(fd)
            self._handles = {}

    def close(self):
        """Close every descriptor; a second close does nothing (as the block file's):
        closing a number twice could close a descriptor someone else opened since."""
        if self.root.fd < 0:
            return
        self.reset()
        os.close(self.root.fd)
        self.root.fd = -1

    # -- attributes ----------------------------------------------------------------------
    def getattr(self, nodeid, fh=None):
        return os.fstat(self._inode(nodeid).fd)

    def _writable(self):
        if self.read_only:
            raise OSError(errno.EROFS, "read-only share")

    def setattr(self, nodeid, fh, changes):
        self._writable()
        inode = self._inode(nodeid)
        is_link = stat.S_ISLNK(os.fstat(inode.fd).st_mode)
        handle_fd = self._handle(fh)[0] if fh is not None else None
        if "mode" in changes:
            if is_link:
                raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
            os.chmod(proc_path(inode.fd), stat.S_IMODE(changes["mode"]))
        if "owner" in changes:
            uid, gid = changes["owner"]
            _check(_libc.fchownat(inode.fd, b"", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
        if "size" in changes:
            if handle_fd is not None:
                os.ftruncate(handle_fd, changes["size"])
            elif is_link:
                raise OSError(errno.EINVAL, "truncate of a symlink")
            else:
                os.truncate(proc_path(inode.fd), changes["size"])
        if "times" in changes:
            self._set_times(inode, is_link, *changes["times"])
        return os.fstat(inode.fd)

    def _set_times(self, inode, is_link, atime, mtime):
        """atime/mtime: None (keep), "now", or nanoseconds since the epoch."""
        if is_link:
            raise OSError(errno.EOPNOTSUPP, "times of a symlink")
        st = os.fstat(inode.fd)
        now = time.time_ns()
        pick = {None: None, "now": now}
        a = pick[atime] if atime in pick else atime
        m = pick[mtime] if mtime in pick else mtime
        os.utime(proc_path(inode.fd),
                 ns=(st.st_atime_ns if a is None else a, st.st_mtime_ns if m is None else m))

    def readlink(self, nodeid):
        return os.readlink(b"", dir_fd=self._inode(nodeid).fd)

    def statfs(self, nodeid):
        return os.fstatvfs(self._inode(nodeid).fd)

    def access(self, nodeid, mask, caller):
        st = os.fstat(self._inode(nodeid).fd)
        if mask & 2 and self.read_only:
            raise OSError(errno.EROFS, "read-only share")
        uid, gid = caller
        if uid == 0:
            if mask & 1 and not st.st_mode & 0o111 and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EACCES, "no execute bit")
            return
        shift = 6 if uid == st.st_uid else 3 if gid == st.st_gid else 0
        if (mask & 7) & ~((st.st_mode >> shift) & 7):
            raise OSError(errno.EACCES, "permission denied")

    # -- making and removing names ---------------------------------------------------------
    def _as_caller(self, caller, make):
        """Run make() with the caller's fsuid/fsgid when we are root, so what it makes
        belongs to the guest's user; our own ids otherwise."""
        if not self.as_root:
            return make()
        uid, gid = caller
        old_gid = _libc.setfsgid(gid)
        old_uid = _libc.setfsuid(uid)
        try:
            return make()
        finally:
            _libc.setfsuid(old_uid)
            _libc.setfsgid(old_gid)

    def _made(self, parent_fd, name, mode=None):
        fd = open_beneath(parent_fd, name, os.O_PATH)
        try:
            st = os.fstat(fd)
            if mode is not None and stat.S_IMODE(st.st_mode) != mode and not stat.S_ISLNK(st.st_mode):
                os.chmod(proc_path(fd), mode)          # our umask took bits the guest wanted
                st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        return self._remember(fd, st)

    def mkdir(self, parent, name, mode, caller):
        self._writable()
        pfd = self._dir(parent).fd
        check_name(name)
        self._as_caller(caller, lambda: os.mkdir(name, stat.S_IMODE(mode), dir_fd=pfd))
        return self._made(pfd, name, stat.S_IMODE(mode) if self.umask & mode else None)

    def mknod(self, parent, name, mode, rdev, caller):
        self._writable()
        pfd = self._dir(parent).fd
        check_name(name)
        self._as_caller(caller, lambda: os.mknod(name, mode, rdev, dir_fd=pfd))
        return self._made(pfd, name, stat.S_IMODE(mode) if self.umask & mode else None)

    def symlink(self, parent, name, target, caller):
        self._writable()
        pfd = self._dir(parent).fd
        check_name(name)
        if not target or b"\0" in target:
            raise OSError(errno.EINVAL, "invalid symlink target")
        self._as_caller(caller, lambda: os.symlink(target, name, dir_fd=pfd))
        return self._made(pfd, name)

    def link(self, nodeid, newparent, name):
        self._writable()
        inode = self._inode(nodeid)
        pfd = self._dir(newparent).fd
        check_name(name)
        if inode.is_dir:
            raise OSError(errno.EPERM, "hard link to a directory")
        if stat.S_ISLNK(os.fstat(inode.fd).st_mode):
            _check(_libc.linkat(inode.fd, b"", pfd, name, AT_EMPTY_PATH))
        else:
            os.link(proc_path(inode.fd), name, dst_dir_fd=pfd, follow_symlinks=True)
        return self._made(pfd, name)

    def unlink(self, parent, name):
        self._writable()
        os.unlink(check_name(name), dir_fd=self._dir(parent).fd)

    def rmdir(self, parent, name):
        self._writable()
        os.rmdir(check_name(name), dir_fd=self._dir(parent).fd)

    def rename(self, parent, name, newparent, newname, flags):
        self._writable()
        src, dst = self._dir(parent).fd, self._dir(newparent).fd
        check_name(name)
        check_name(newname)
        if flags:
            _check(_libc.syscall(SYS_RENAMEAT2, src, name, dst, newname, flags))
        else:
            os.rename(name, newname, src_dir_fd=src, dst_dir_fd=dst)

    # -- open files ------------------------------------------------------------------------
    def _new_handle(self, fd, listing, nodeid):
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = (fd, listing, nodeid)
        return fh

    def _handle(self, fh):
        entry = self._handles.get(fh)
        if entry is None:
            raise OSError(errno.EBADF, f"unknown file handle {fh}")
        return entry

    def _io_flags(self, flags):
        if flags & WRITE_FLAGS:
            self._writable()
        # O_CREAT/O_EXCL mean nothing on an existing inode; O_NOCTTY is ours to add.
        return (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW)) | os.O_CLOEXEC

    def open(self, nodeid, flags):
        #L:394 Only regular files are opened here. The guest's kernel opens its own
        # devices, FIFOs and sockets for special inodes and never sends OPEN for them;
        # a guest that did would have us open a *host* device (a node it made with
        # MKNOD), or block forever on a FIFO with no writer.
        inode = self._inode(nodeid)
        mode = os.fstat(inode.fd).st_mode
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "open of a symlink")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EPERM, "only regular files are opened through the share")
        fd = os.open(proc_path(inode.fd), self._io_flags(flags) | os.O_NOCTTY)
        return self._new_handle(fd, None, nodeid)

    def create(self, parent, name, flags, mode, caller):
        self._writable()
        pfd = self._dir(parent).fd
        check_name(name)
        perm = stat.S_IMODE(mode)
        # Without O_EXCL the name may already be a FIFO or a device (L:394): open
        # without blocking, look, and refuse anything but a regular file.
        io_flags = self._io_flags(flags)
        fd = self._as_caller(caller, lambda: open_beneath(
            pfd, name, io_flags | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY, perm))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EPERM, "only regular files are opened through the share")
            if not io_flags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
            nodeid, st = self._made(pfd, name, perm if self.umask & perm else None)
        except OSError:
            os.close(fd)
            raise
        return nodeid, st, self._new_handle(fd, None, nodeid)

    def read(self, fh, offset, views):
        if not views:
            return 0
        return os.preadv(self._handle(fh)[0], views, offset)

    def write(self, fh, offset, views):
        self._writable()
        if not views:
            return 0
        return os.pwritev(self._handle(fh)[0], views, offset)

    def release(self, fh):
        with self._lock:
            entry = self._handles.pop(fh, None)
        if entry is not None:
            os.close(entry[0])

    releasedir = release

    def flush(self, fh):
        self._handle(fh)

    def fsync(self, fh, datasync):
        fd = self._handle(fh)[0]
        (os.fdatasync if datasync else os.fsync)(fd)

    def fsyncdir(self, fh, datasync):
        self.fsync(fh, datasync)

    def syncfs(self):
        """FUSE_SYNCFS: write back the file system the share is on, as virtiofsd does
        (not those mounted inside it). Nothing to write back from a read-only share.
        syncfs(2) takes no O_PATH fd, so the root is opened for it, as opendir does."""
        if self.read_only:
            return
        fd = os.open(proc_path(self.root.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _check(_libc.syncfs(fd))
        finally:
            os.close(fd)

    def fallocate(self, fh, mode, offset, length):
        self._writable()
        fd = self._handle(fh)[0]
        _check(_libc.fallocate(fd, ctypes.c_int(mode), ctypes.c_int64(offset),
                               ctypes.c_int64(length)))

    def lseek(self, fh, offset, whence):
        if whence not in (os.SEEK_SET, os.SEEK_CUR, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "bad whence")
        return os.lseek(self._handle(fh)[0], offset, whence)

    # -- directories ---------------------------------------------------------------------
    def opendir(self, nodeid):
        inode = self._dir(nodeid)
        fd = os.open(proc_path(inode.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._new_handle(fd, [], nodeid)

    def readdir(self, fh, offset):
        """(offset of the next entry, name, ino, DT_ type) from `offset` on. The listing
        is read once, at offset 0, so offsets stay stable while the guest reads on."""
        fd, listing, nodeid = self._handle(fh)
        if offset == 0:
            listing[:] = self._list(fd)
        for i in range(offset, len(listing)):
            name, ino, kind = listing[i]
            yield i + 1, name, ino, kind

    @staticmethod
    def _list(fd):
        st = os.fstat(fd)
        # ".." gets a made-up inode number: its real one may be outside the share, and
        # readdir(3) hides entries whose inode number is 0.
        entries = [(b".", st.st_ino, 4), (b"..", 1, 4)]
        with os.scandir(fd) as it:
            for e in it:
                entries.append((os.fsencode(e.name), e.inode(), _dtype(e)))
        return entries


def _dtype(entry):
    if entry.is_symlink():
        return 10
    if entry.is_dir(follow_symlinks=False):
        return 4
    if entry.is_file(follow_symlinks=False):
        return 8
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return 0
    return {stat.S_IFCHR: 2, stat.S_IFBLK: 6, stat.S_IFIFO: 1,
            stat.S_IFSOCK: 12}.get(stat.S_IFMT(mode), 0)
