"""The virtio file system device: FUSE requests on virtqueues, answered by a host directory.

#L:391 virtio-fs (virtio 1.2, 5.11) carries FUSE (L:390) over virtqueues instead of
# /dev/fuse. Queue 0, "hiprio", brings FORGET and BATCH_FORGET, which have no reply;
# queues 1..N bring every other request. Each request is one chain: the readable part
# is the fuse_in_header and the opcode's arguments (for WRITE, then the data), the
# writable part has room for the fuse_out_header and the reply (for READ, the data).
# The config space is the tag the guest mounts by (36 bytes, NUL-padded) and the number
# of request queues (le32): `mount -t virtiofs TAG /mnt`.
#
# The device only parses and packs: what a request *does* is the business of an
# injected `fs` (host/fs.py: a directory shared by file descriptors), which returns
# Python values or raises OSError. An OSError becomes the reply's negative errno; a
# request we cannot parse gets EINVAL, an opcode we do not implement ENOSYS, and a
# surprise in our own code EIO (logged). A guest can make a request fail, never the
# ring: the only GuestErrors here are the ring's own (bad descriptors, L:200).
"""

import errno
import logging
import struct

from ..virtio import F_RING_INDIRECT_DESC, ID_FS, bit
from . import fuse_wire as W
from .base import VirtioDevice, iov_length, iov_skip, iov_take, iov_write

log = logging.getLogger("lguest.fs")

TAG_SIZE = 36
QUEUE_SIZE = 1024
# What we tell the kernel it may send in one WRITE (and ask in one READ): 1 MiB,
# 256 pages. Indirect descriptors keep such a request to one ring slot.
MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // 4096
# How long the guest may trust a name or attributes without asking again (virtiofsd's
# cache=auto uses the same second).
VALID_SECONDS = 1.0
VALID = W.split_seconds(VALID_SECONDS)
# The largest arguments a request other than WRITE may have: two names of PATH_MAX.
MAX_ARGS = 3 * 4096 + 256

COUNTERS = ("requests", "errors", "enosys", "malformed", "bugs")
DT_BY_MODE = {0o010000: 1, 0o020000: 2, 0o040000: 4, 0o060000: 6,
              0o100000: 8, 0o120000: 10, 0o140000: 12}


class Request:
    """One parsed FUSE request: header fields, argument bytes, and the chain's buffers."""

    __slots__ = ("opcode", "unique", "nodeid", "uid", "gid", "pid", "args", "data", "writable")

    def __init__(self, header, args, data, writable):
        _, self.opcode, self.unique, self.nodeid, self.uid, self.gid, self.pid, _, _ = header
        self.args = args          # bytes after the header (for WRITE, only write_in)
        self.data = data          # WRITE: the data buffers (memoryviews); else []
        self.writable = writable  # the chain's writable buffers, out header first

    @property
    def out(self):
        """The writable buffers after the out header: where READ's data goes."""
        return iov_skip(self.writable, W.OUT_HEADER.size)

    def body(self, layout):
        """Unpack the fixed struct at the start of the arguments; BadRequest if short."""
        if len(self.args) < layout.size:
            raise BadRequest(f"{W.OPCODE_NAMES.get(self.opcode)} arguments of "
                             f"{len(self.args)} bytes, want {layout.size}")
        return layout.unpack_from(self.args)

    def name(self, offset=0):
        """The NUL-terminated name at `offset` of the arguments."""
        end = self.args.find(b"\0", offset)
        if end < 0:
            raise BadRequest("name not NUL-terminated")
        return self.args[offset:end]

    def names(self, offset, count):
        names = W.split_names(self.args[offset:], count)
        if names is None:
            raise BadRequest("name not NUL-terminated")
        return names

    @property
    def caller(self):
        return (self.uid, self.gid)


class BadRequest(Exception):
    """A request we cannot parse: answered with EINVAL."""


class FsDevice(VirtioDevice):
    """virtio-fs over an injected `fs` (see host/fs.py for the methods it must have)."""

    device_id = ID_FS
    queue_max_size = QUEUE_SIZE

    def __init__(self, fs, tag, *, request_queues=1, name="fs"):
        super().__init__(name)
        raw = tag.encode() if isinstance(tag, str) else bytes(tag)
        if not raw or len(raw) > TAG_SIZE or b"\0" in raw:
            raise ValueError(f"virtio-fs tag must be 1-{TAG_SIZE} bytes without NUL")
        self.fs = fs
        self.tag = raw
        self.queue_names = ("hiprio",) + tuple(f"request{i}" for i in range(request_queues))
        self.features = bit(F_RING_INDIRECT_DESC)
        self.config = bytearray(raw.ljust(TAG_SIZE, b"\0") + struct.pack("<I", request_queues))
        self.minor = W.KERNEL_MINOR_VERSION
        # Counted for tests and diagnostics, per queue: each queue is served by one
        # thread at a time, so its counters need no lock.
        self._counts = [dict.fromkeys(COUNTERS, 0) for _ in self.queue_names]
        self._handlers = {
            W.INIT: self.do_init, W.DESTROY: self.do_destroy,
            W.LOOKUP: self.do_lookup, W.FORGET: self.do_forget,
            W.BATCH_FORGET: self.do_batch_forget, W.GETATTR: self.do_getattr,
            W.SETATTR: self.do_setattr, W.READLINK: self.do_readlink,
            W.SYMLINK: self.do_symlink, W.MKNOD: self.do_mknod, W.MKDIR: self.do_mkdir,
            W.UNLINK: self.do_unlink, W.RMDIR: self.do_rmdir, W.RENAME: self.do_rename,
            W.RENAME2: self.do_rename2, W.LINK: self.do_link, W.OPEN: self.do_open,
            W.READ: self.do_read, W.WRITE: self.do_write, W.STATFS: self.do_statfs,
            W.RELEASE: self.do_release, W.FSYNC: self.do_fsync, W.FLUSH: self.do_flush,
            W.OPENDIR: self.do_opendir, W.READDIR: self.do_readdir,
            W.READDIRPLUS: self.do_readdirplus, W.RELEASEDIR: self.do_releasedir,
            W.FSYNCDIR: self.do_fsyncdir, W.CREATE: self.do_create, W.ACCESS: self.do_access,
            W.FALLOCATE: self.do_fallocate, W.LSEEK: self.do_lseek, W.SYNCFS: self.do_syncfs,
        }

    def close(self):
        self.fs.close()

    # -- the queues ----------------------------------------------------------------------
    def activate(self, queues, negotiated):
        super().activate(queues, negotiated)
        # A READ's pages that touch in guest memory come as one buffer (L:236): every
        # request here is parsed through the iov helpers, whatever its buffers' shape.
        for queue in self.queues:
            if queue is not None:
                queue.coalesce = True

    def process(self, queue_index):
        queue = self.queues[queue_index]
        used = False
        counts = self._counts[queue_index]
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self.serve(chain.readable, chain.writable, counts))
            used = True
        return used

    def serve(self, readable, writable, counts):
        """Answer one request; return the number of bytes written into `writable`.
        counts: the serving queue's counters."""
        total_in = iov_length(readable)
        if total_in < W.IN_HEADER.size:
            counts["malformed"] += 1
            return 0                      # not even a unique id to answer to
        # Requests but WRITE are small: one copy of the whole readable part. A WRITE's
        # header is copied and its data left in guest memory for pwritev.
        if total_in <= W.IN_HEADER.size + MAX_ARGS:
            raw = b"".join(readable)
            data = []
        else:
            raw, data = iov_take(readable, W.IN_HEADER.size + W.WRITE_IN.size)
        header = W.IN_HEADER.unpack_from(raw)
        length, opcode, unique = header[0], header[1], header[2]
        counts["requests"] += 1
        if length != total_in:
            reply = -errno.EINVAL
            counts["malformed"] += 1
        elif opcode == W.WRITE and not data:
            raw, data = iov_take(readable, W.IN_HEADER.size + W.WRITE_IN.size)
            reply = self._dispatch(header, opcode, raw[W.IN_HEADER.size:], data, writable, counts)
        elif data and opcode != W.WRITE:
            counts["malformed"] += 1
            reply = -errno.EINVAL         # arguments too long for anything but WRITE
        else:
            reply = self._dispatch(header, opcode, raw[W.IN_HEADER.size:], data, writable, counts)
        if reply is None:
            return 0                      # FORGET: no reply
        room = iov_length(writable) - W.OUT_HEADER.size
        if room < 0:
            return 0                      # nowhere to put one
        if isinstance(reply, int):
            if reply < 0:
                counts["errors"] += 1
                return write_reply(writable, unique, reply, b"")
            return write_header(writable, unique, 0, reply)   # READ: the data is in place
        if len(reply) > room:
            counts["errors"] += 1
            return write_reply(writable, unique, -errno.EIO, b"")
        return write_reply(writable, unique, 0, reply)

    def _dispatch(self, header, opcode, args, data, writable, counts):
        handler = self._handlers.get(opcode)
        if handler is None:
            counts["enosys"] += 1
            return -errno.ENOSYS
        try:
            return handler(Request(header, args, data, writable))
        except BadRequest as e:
            counts["malformed"] += 1
            log.info("%s: malformed request: %s", self.name, e)
            return -errno.EINVAL
        except OSError as e:
            return -(e.errno or errno.EIO)
        except (ValueError, OverflowError, KeyError) as e:
            # e.g. a name with a NUL the os module refuses, an offset past 2**63.
            counts["malformed"] += 1
            log.info("%s: %s refused: %s", self.name, W.OPCODE_NAMES.get(opcode), e)
            return -errno.EINVAL
        except Exception:
            counts["bugs"] += 1
            log.exception("%s: %s failed", self.name, W.OPCODE_NAMES.get(opcode))
            return -errno.EIO

    @property
    def read_only(self):
        return bool(getattr(self.fs, "read_only", False))

    @property
    def stats(self):
        """The counters of every queue, added up."""
        return {key: sum(c[key] for c in self._counts) for key in COUNTERS}

    # -- session ---------------------------------------------------------------------------
    def do_init(self, req):
        major, minor, max_readahead, flags = req.body(W.INIT_IN)
        if major != W.KERNEL_VERSION:
            # "If the kernel supports a larger major version, then userspace shall reply
            # with the major version it supports": the kernel then gives up or retries.
            return W.INIT_OUT.pack(W.KERNEL_VERSION, W.KERNEL_MINOR_VERSION, 0, 0,
                                   0, 0, 0, 0, 0, 0, 0)[:24]
        self.minor = min(minor, W.KERNEL_MINOR_VERSION)
        self.fs.reset()
        # AUTO_INVAL_DATA: the guest drops a file's cached pages when it sees its mtime
        # or size change, which is what lets OPEN keep the cache (do_open).
        wanted = (W.ASYNC_READ | W.ATOMIC_O_TRUNC | W.BIG_WRITES | W.DO_READDIRPLUS
                  | W.READDIRPLUS_AUTO | W.PARALLEL_DIROPS | W.MAX_PAGES | W.AUTO_INVAL_DATA)
        return W.INIT_OUT.pack(W.KERNEL_VERSION, self.minor, max_readahead, flags & wanted,
                               16, 12, MAX_WRITE, 1, MAX_PAGES, 0, 0)

    def do_destroy(self, req):
        self.fs.reset()
        return b""

    # -- names -----------------------------------------------------------------------------
    def do_lookup(self, req):
        try:
            return W.pack_entry(*self.fs.lookup(req.nodeid, req.name()), VALID)
        except FileNotFoundError:
            if not self.read_only:
                raise
            # Python's imports and the dynamic loader probe many names that are not
            # there: on a read-only share the guest may remember that, as it does a name
            # that is (VALID_SECONDS), instead of asking again.
            return W.pack_negative_entry(VALID)

    def do_forget(self, req):
        (nlookup,) = req.body(W.FORGET_IN)
        self.fs.forget(req.nodeid, nlookup)
        return None

    def do_batch_forget(self, req):
        count, _ = req.body(W.BATCH_FORGET_IN)
        start = W.BATCH_FORGET_IN.size
        count = min(count, (len(req.args) - start) // W.FORGET_ONE.size)
        for i in range(count):
            nodeid, nlookup = W.FORGET_ONE.unpack_from(req.args, start + i * W.FORGET_ONE.size)
            self.fs.forget(nodeid, nlookup)
        return None

    def do_getattr(self, req):
        flags, _, fh = req.body(W.GETATTR_IN)
        st = self.fs.getattr(req.nodeid, fh if flags & W.GETATTR_FH else None)
        return W.pack_attr_out(st, VALID)

    def do_setattr(self, req):
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _,
         mode, _, uid, gid, _) = req.body(W.SETATTR_IN)
        changes = {}
        if valid & W.FATTR_MODE:
            changes["mode"] = mode
        if valid & (W.FATTR_UID | W.FATTR_GID):
            changes["owner"] = (uid if valid & W.FATTR_UID else -1,
                                gid if valid & W.FATTR_GID else -1)
        if valid & W.FATTR_SIZE:
            changes["size"] = size
        if valid & (W.FATTR_ATIME | W.FATTR_MTIME):
            changes["times"] = (time_spec(valid, W.FATTR_ATIME, W.FATTR_ATIME_NOW, atime, atimensec),
                                time_spec(valid, W.FATTR_MTIME, W.FATTR_MTIME_NOW, mtime, mtimensec))
        st = self.fs.setattr(req.nodeid, fh if valid & W.FATTR_FH else None, changes)
        return W.pack_attr_out(st, VALID)

    def do_readlink(self, req):
        return self.fs.readlink(req.nodeid)

    def do_symlink(self, req):
        name, target = req.names(0, 2)
        return W.pack_entry(*self.fs.symlink(req.nodeid, name, target, req.caller), VALID)

    def do_mknod(self, req):
        mode, rdev, umask, _ = req.body(W.MKNOD_IN)
        name = req.name(W.MKNOD_IN.size)
        return W.pack_entry(*self.fs.mknod(req.nodeid, name, mode, rdev, req.caller), VALID)

    def do_mkdir(self, req):
        mode, umask = req.body(W.MKDIR_IN)
        name = req.name(W.MKDIR_IN.size)
        return W.pack_entry(*self.fs.mkdir(req.nodeid, name, mode, req.caller), VALID)

    def do_unlink(self, req):
        name = req.name()
        self.fs.unlink(req.nodeid, name)
        return b""

    def do_rmdir(self, req):
        name = req.name()
        self.fs.rmdir(req.nodeid, name)
        return b""

    def do_rename(self, req):
        (newdir,) = req.body(W.RENAME_IN)
        old, new = req.names(W.RENAME_IN.size, 2)
        self.fs.rename(req.nodeid, old, newdir, new, 0)
        return b""

    def do_rename2(self, req):
        newdir, flags, _ = req.body(W.RENAME2_IN)
        old, new = req.names(W.RENAME2_IN.size, 2)
        self.fs.rename(req.nodeid, old, newdir, new, flags)
        return b""

    def do_link(self, req):
        (oldnode,) = req.body(W.LINK_IN)
        name = req.name(W.LINK_IN.size)
        return W.pack_entry(*self.fs.link(oldnode, req.nodeid, name), VALID)

    # -- files ------------------------------------------------------------------------------
    def do_open(self, req):
        flags, _ = req.body(W.OPEN_IN)
        # Without KEEP_CACHE every open drops the file's pages in the guest, so each
        # command of a warm guest reads libc and Python again. A read-only share's files
        # change only from the host, which AUTO_INVAL_DATA (do_init) notices. NOFLUSH:
        # nothing written, nothing to flush, so close() need not wait on a FLUSH.
        keep = W.FOPEN_KEEP_CACHE | W.FOPEN_NOFLUSH if self.read_only else 0
        return W.OPEN_OUT.pack(self.fs.open(req.nodeid, flags), keep, 0)

    def do_create(self, req):
        flags, mode, umask, _ = req.body(W.CREATE_IN)
        name = req.name(W.CREATE_IN.size)
        nodeid, st, fh = self.fs.create(req.nodeid, name, flags, mode, req.caller)
        return W.pack_entry(nodeid, st, VALID) + W.OPEN_OUT.pack(fh, 0, 0)

    def do_read(self, req):
        fh, offset, size, *_ = req.body(W.READ_IN)
        views = trim(req.out, min(size, MAX_WRITE))
        return self.fs.read(fh, offset, views)

    def do_write(self, req):
        fh, offset, size, *_ = req.body(W.WRITE_IN)
        if size > iov_length(req.data) or size > MAX_WRITE:
            raise BadRequest(f"WRITE of {size} bytes with {iov_length(req.data)} of data")
        written = self.fs.write(fh, offset, trim(req.data, size))
        return W.WRITE_OUT.pack(written, 0)

    def do_statfs(self, req):
        s = self.fs.statfs(req.nodeid)
        return W.STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                                 s.f_bsize, s.f_namemax, s.f_frsize, 0)

    def do_release(self, req):
        fh, *_ = req.body(W.RELEASE_IN)
        self.fs.release(fh)
        return b""

    def do_flush(self, req):
        fh, *_ = req.body(W.FLUSH_IN)
        self.fs.flush(fh)
        return b""

    def do_fsync(self, req):
        fh, flags, _ = req.body(W.FSYNC_IN)
        self.fs.fsync(fh, bool(flags & W.FSYNC_FDATASYNC))
        return b""

    def do_fallocate(self, req):
        fh, offset, length, mode, _ = req.body(W.FALLOCATE_IN)
        self.fs.fallocate(fh, mode, offset, length)
        return b""

    def do_lseek(self, req):
        fh, offset, whence, _ = req.body(W.LSEEK_IN)
        return W.LSEEK_OUT.pack(self.fs.lseek(fh, offset, whence))

    def do_access(self, req):
        mask, _ = req.body(W.ACCESS_IN)
        self.fs.access(req.nodeid, mask, req.caller)
        return b""

    # -- directories -----------------------------------------------------------------------
    def do_opendir(self, req):
        req.body(W.OPEN_IN)
        return W.OPEN_OUT.pack(self.fs.opendir(req.nodeid), 0, 0)

    def do_releasedir(self, req):
        fh, *_ = req.body(W.RELEASE_IN)
        self.fs.releasedir(fh)
        return b""

    def do_fsyncdir(self, req):
        fh, flags, _ = req.body(W.FSYNC_IN)
        self.fs.fsyncdir(fh, bool(flags & W.FSYNC_FDATASYNC))
        return b""

    def do_syncfs(self, req):
        # The guest's sync(1) (Linux 5.15 on): what it wrote reaches the host's disk.
        self.fs.syncfs()
        return b""

    def do_readdir(self, req):
        return self._readdir(req, plus=False)

    def do_readdirplus(self, req):
        return self._readdir(req, plus=True)

    def _readdir(self, req, plus):
        #L:392 Entries go out while they fit in the size the kernel asked for; each
        # carries the offset of the one after it, which the next READDIR starts from.
        # With READDIRPLUS each entry also carries a lookup (and its nlookup count), so
        # only entries that fit are looked up: one the kernel never sees must not be
        # counted, or its inode could never be forgotten. "." and ".." go with node id
        # 0, which the kernel lists but does not cache; so does an entry we could not
        # look up just now (out of file descriptors, say): the kernel asks again later.
        fh, offset, size, *_ = req.body(W.READ_IN)
        room = min(size, iov_length(req.out))
        reply = bytearray()
        parent = self.fs.dir_node(fh) if plus else None
        for next_offset, name, ino, kind in self.fs.readdir(fh, offset):
            need = W.dirent_size(name) + (W.ENTRY_OUT_SIZE if plus else 0)
            if len(reply) + need > room:
                break
            if plus:
                found = None
                if name not in (b".", b".."):
                    try:
                        found = self.fs.lookup(parent, name)
                    except FileNotFoundError:
                        continue          # gone since the listing: skip it
                    except OSError:
                        pass              # e.g. out of fds: listed, looked up later
                if found is None:
                    reply += bytes(W.ENTRY_OUT_SIZE)
                else:
                    reply += W.pack_entry(*found, VALID)
                    st = found[1]
                    ino, kind = st.st_ino, DT_BY_MODE.get(st.st_mode & 0o170000, 0)
            reply += W.pack_dirent(ino, next_offset, kind, name)
        return bytes(reply)


def time_spec(valid, set_bit, now_bit, seconds, nanoseconds):
    """A SETATTR time: None (leave it), "now", or nanoseconds since the epoch."""
    if valid & now_bit:
        return "now"
    if valid & set_bit:
        return seconds * 1_000_000_000 + nanoseconds
    return None


def trim(views, n):
    """The first n bytes of a list of buffers: the buffers that fit whole, as they are
    (a READ's pages usually all do: slicing each one cost ~0.4 us of 32), and a slice
    of the one that does not."""
    out = []
    for v in views:
        size = v.nbytes
        if size >= n:
            if n > 0:
                out.append(v if size == n else v[:n])
            break
        out.append(v)
        n -= size
    return out


def write_header(writable, unique, error, payload_length):
    total = W.OUT_HEADER.size + payload_length
    iov_write(writable, W.OUT_HEADER.pack(total, error, unique))
    return total


def write_reply(writable, unique, error, payload):
    total = W.OUT_HEADER.size + len(payload)
    header = W.OUT_HEADER.pack(total, error, unique)
    first = writable[0]
    if first.nbytes == W.OUT_HEADER.size and (not payload or writable[1].nbytes >= len(payload)):
        # The usual shape (Linux puts the out header in a buffer of its own): two copies.
        first[:] = header
        if payload:
            writable[1][:len(payload)] = payload
        return total
    iov_write(writable, payload, W.OUT_HEADER.size)
    iov_write(writable, header)
    return total
