"""The block device's store: a file (or block device) read and written in place.

#L:910 The disk's host side. We open the file and store its length, as the seed
# did; every request then goes straight between guest memory and the file with
# os.preadv/os.pwritev on the chain's memoryviews: positioned, so no lseek and no
# shared file offset between threads, and no copy of the data in between. A flush is
# fdatasync(). A read-only image is opened O_RDONLY, so even a bug of ours could not
# write to it.
#
# A flush with nothing written since the last one that succeeded is answered without
# the fdatasync (QEMU's block layer does the same: write_gen == flushed_gen): Linux
# sends a flush on every fsync of the disk, and on a clean file fdatasync still costs
# milliseconds here, which made our flush ~100x slower than qemu-storage-daemon's.
"""

import errno
import itertools
import os

from ..devices.base import iov_length, iov_skip
from ..errors import LauncherError

IOV_MAX = 1024          # os.preadv refuses more buffers than this in one call


class FileStore:
    """size, readv_at, writev_at, flush, close: the store interface of BlockDevice."""

    def __init__(self, path, read_only=False):
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise LauncherError(f"Failed to open {path}: {e.strerror}") from None
        self.path = path
        self.read_only = read_only
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        # After each write completes it stores a fresh number (drawn then, from a
        # counter whose next() is atomic, so threads need no lock); flush() remembers
        # the number it saw before its fdatasync. A write that completed before that
        # look is covered; one completing after stores a newer number, so the next
        # flush syncs again.
        self._gens = itertools.count(1)
        self.write_gen = next(self._gens)
        self.flushed_gen = 0

    def readv_at(self, offset, views):
        return self._transfer(os.preadv, offset, views)

    def writev_at(self, offset, views):
        if self.read_only:
            raise OSError(errno.EBADF, "image is read-only")
        try:
            return self._transfer(os.pwritev, offset, views)
        finally:
            self.write_gen = next(self._gens)     # even a partial write dirtied the file

    def _transfer(self, call, offset, views):
        """preadv/pwritev until every buffer is done: both may stop short."""
        total = 0
        if len(views) <= IOV_MAX:
            # Nearly always one call does it all; only a short one needs the loop.
            want = iov_length(views)
            total = call(self.fd, views, offset) if want else 0
            if total == want:
                return total
            if total <= 0:
                raise OSError(errno.EIO, f"{self.path}: unexpected end of file at {offset}")
            offset += total
            views = iov_skip(views, total)
        else:
            views = iov_skip(views, 0)      # drops empty buffers
        while views:
            n = call(self.fd, views[:IOV_MAX], offset)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: unexpected end of file at {offset}")
            total += n
            offset += n
            views = iov_skip(views, n)
        return total

    def flush(self):
        gen = self.write_gen
        if gen == self.flushed_gen:
            return
        os.fdatasync(self.fd)
        self.flushed_gen = gen

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
