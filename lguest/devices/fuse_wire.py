"""The FUSE wire format, as Linux's virtiofs driver speaks it (include/uapi/linux/fuse.h).

#L:390 A FUSE request is a header the kernel wrote (struct fuse_in_header: its length,
# an opcode, a unique id, the node it is about, the caller's uid/gid/pid) followed by
# an opcode-specific struct and, for some opcodes, NUL-terminated names or data. The
# answer is struct fuse_out_header (length, a negative errno or 0, the same unique id)
# followed by the opcode's reply struct. Everything is little-endian on the machines we
# run on and padded to 64 bits. Only the structs virtiofs uses in normal life are here;
# the layouts are those of protocol 7.31 onwards (Linux 6.1 speaks 7.36/7.37: it sends
# the longer fuse_init_in with flags2 and accepts the 64-byte fuse_init_out).
"""

import struct

# Protocol version we speak. The kernel uses min(its minor, ours).
KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 31
ROOT_ID = 1

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC = 17, 18, 20
SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 27, 28, 29, 30
GETLK, SETLK, SETLKW, ACCESS, CREATE, INTERRUPT, BMAP, DESTROY = 31, 32, 33, 34, 35, 36, 37, 38
IOCTL, POLL, NOTIFY_REPLY, BATCH_FORGET, FALLOCATE, READDIRPLUS = 39, 40, 41, 42, 43, 44
RENAME2, LSEEK, COPY_FILE_RANGE, SETUPMAPPING, REMOVEMAPPING, SYNCFS = 45, 46, 47, 48, 49, 50

OPCODE_NAMES = {v: k for k, v in list(globals().items())
                if k.isupper() and isinstance(v, int) and 1 <= v <= 50
                and k not in ("KERNEL_VERSION", "KERNEL_MINOR_VERSION", "ROOT_ID")}

# INIT flags (fuse_init_in/out.flags).
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
# fuse_open_out.open_flags
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NOFLUSH = 1 << 5

# SETATTR valid bits.
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 16, 32, 64
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_LOCKOWNER, FATTR_CTIME = 128, 256, 512, 1024
FATTR_KILL_SUIDGID = 2048

GETATTR_FH = 1
FSYNC_FDATASYNC = 1
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4

# Headers.
IN_HEADER = struct.Struct("<IIQQIIIHH")      # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")           # len error unique

# Request bodies.
INIT_IN = struct.Struct("<IIII")             # major minor max_readahead flags (+flags2...)
FORGET_IN = struct.Struct("<Q")              # nlookup
BATCH_FORGET_IN = struct.Struct("<II")       # count dummy
FORGET_ONE = struct.Struct("<QQ")            # nodeid nlookup
GETATTR_IN = struct.Struct("<IIQ")           # getattr_flags dummy fh
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
# valid pad fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec
# mode unused4 uid gid unused5
MKNOD_IN = struct.Struct("<IIII")            # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")              # mode umask
RENAME_IN = struct.Struct("<Q")              # newdir
RENAME2_IN = struct.Struct("<QII")           # newdir flags padding
LINK_IN = struct.Struct("<Q")                # oldnodeid
OPEN_IN = struct.Struct("<II")               # flags open_flags
CREATE_IN = struct.Struct("<IIII")           # flags mode umask open_flags
READ_IN = struct.Struct("<QQIIQII")          # fh offset size read_flags lock_owner flags pad
WRITE_IN = struct.Struct("<QQIIQII")         # fh offset size write_flags lock_owner flags pad
RELEASE_IN = struct.Struct("<QIIQ")          # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")            # fh unused padding lock_owner
FSYNC_IN = struct.Struct("<QII")             # fh fsync_flags padding
ACCESS_IN = struct.Struct("<II")             # mask padding
FALLOCATE_IN = struct.Struct("<QQQII")       # fh offset length mode padding
LSEEK_IN = struct.Struct("<QQII")            # fh offset whence padding

# Replies. Those carrying a struct fuse_attr are packed in one go, from an os.stat_result.
_ATTR = "QQQqqqIIIIIIIIII"
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid
# rdev blksize flags; the seconds signed, as the kernel reads them (time64_t)
ATTR = struct.Struct("<" + _ATTR)
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")    # nodeid generation entry_valid attr_valid nsecs
ATTR_OUT_HEAD = struct.Struct("<QII")        # attr_valid attr_valid_nsec dummy
ENTRY_OUT = struct.Struct(ENTRY_OUT_HEAD.format + _ATTR)      # 128 bytes
ATTR_OUT = struct.Struct(ATTR_OUT_HEAD.format + _ATTR)        # 104 bytes
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # ... max_pages map_alignment flags2 unused[7]
OPEN_OUT = struct.Struct("<QII")             # fh open_flags padding
WRITE_OUT = struct.Struct("<II")             # size padding
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize
#                                              namelen frsize padding spare[6]
LSEEK_OUT = struct.Struct("<Q")
DIRENT_HEAD = struct.Struct("<QQII")         # ino off namelen type

ENTRY_OUT_SIZE = ENTRY_OUT.size
ATTR_OUT_SIZE = ATTR_OUT.size
NS = 1_000_000_000


def split_seconds(valid):
    """A time-out in seconds as the (seconds, nanoseconds) the replies carry."""
    return int(valid), int((valid % 1) * 1e9)


def attr_fields(st):
    """struct fuse_attr's fields from an os.stat_result. Its first ten items are mode,
    ino, dev, nlink, uid, gid, size and the whole seconds of atime, mtime, ctime (rounded
    down, as the kernel's tv_sec; the nanoseconds below are then never negative)."""
    mode, ino, _, nlink, uid, gid, size, atime, mtime, ctime = st
    return (ino, size, st.st_blocks, atime, mtime, ctime,
            st.st_atime_ns % NS, st.st_mtime_ns % NS, st.st_ctime_ns % NS,
            mode, nlink, uid, gid, st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0)


def pack_entry(nodeid, st, valid):
    """struct fuse_entry_out: a node id, its attributes, and how long both hold
    (valid: (seconds, nanoseconds), from split_seconds)."""
    secs, nsecs = valid
    return ENTRY_OUT.pack(nodeid, 0, secs, secs, nsecs, nsecs, *attr_fields(st))


def pack_negative_entry(valid):
    """A LOOKUP's "no such name" the guest may cache for `valid` (node id 0)."""
    secs, nsecs = valid
    return ENTRY_OUT_HEAD.pack(0, 0, secs, 0, nsecs, 0) + bytes(ATTR.size)


def pack_attr_out(st, valid):
    secs, nsecs = valid
    return ATTR_OUT.pack(secs, nsecs, 0, *attr_fields(st))


def dirent_size(name):
    """Bytes a struct fuse_dirent takes for `name`, padded to 8."""
    return (DIRENT_HEAD.size + len(name) + 7) & ~7


def pack_dirent(ino, next_offset, kind, name):
    raw = DIRENT_HEAD.pack(ino, next_offset, len(name), kind) + name
    return raw + bytes(-len(raw) % 8)


def split_names(data, count):
    """`count` NUL-terminated names from the start of data, as bytes; None if malformed."""
    names = []
    rest = data
    for _ in range(count):
        end = rest.find(b"\0")
        if end < 0:
            return None
        names.append(rest[:end])
        rest = rest[end + 1:]
    return names
