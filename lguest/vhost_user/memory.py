"""The front-end's guest memory, mapped from the fds SET_MEM_TABLE passes.

#L:710 A vhost-user front-end describes its guest memory as up to eight regions, each
# a file (memfd, /dev/shm, hugetlbfs; for User-Mode Linux its physmem file) and four
# numbers: where the region starts in guest-physical space, how long it is, where the
# front-end itself has it mapped (its "user address"), and at which offset into the
# file it begins. We mmap each region shared, so the guest's buffers are our buffers:
# a block read lands in the guest with one preadv, no copy.
#
# Two address spaces come through the protocol. Descriptors carry guest-physical
# addresses, so this Memory answers in guest-physical terms and the split-ring code
# (L:200) needs no change. Ring addresses (SET_VRING_ADDR) are the front-end's user
# addresses; user_to_guest() turns them into guest-physical ones once, when the ring is
# set up. (virtio_uml sends user == guest-physical; QEMU's differ.)
#
# Everything is checked before it is mapped: a region must not be empty, must lie
# inside its file (mapping past a file's end would turn a guest access into SIGBUS in
# our process), and must not overlap another region in either address space.
#
#L:712 Inside its file at SET_MEM_TABLE is not inside it for ever: the front-end keeps
# the file and may shrink it later. Where the kernel can forbid that -- a memfd whose
# creator allowed sealing -- we add F_SEAL_SHRINK before measuring, so the size we
# check is final (QEMU's memfd back-end seals by default; then there is nothing to
# add). Other files (UML's memory is a plain temporary file) cannot be sealed: the
# standalone server's answer to those is a process per session (L:742).
"""

import errno
import fcntl
import mmap
import os
import stat

from ..errors import GuestMemoryError
from ..memory import Memory
from .protocol import RequestError

PAGE = mmap.ALLOCATIONGRANULARITY


class _Mapped:
    """One region: its numbers, its mapping and a view of exactly its bytes."""

    def __init__(self, region, fd):
        self.guest_addr, self.size, self.user_addr, self.mmap_offset = region
        self.guest_end = self.guest_addr + self.size
        self.user_end = self.user_addr + self.size
        # mmap offsets must be page aligned; map from the page below and skip the rest.
        aligned = self.mmap_offset - self.mmap_offset % PAGE
        skip = self.mmap_offset - aligned
        self._map = mmap.mmap(fd, self.size + skip, flags=mmap.MAP_SHARED,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=aligned)
        self._whole = memoryview(self._map)
        self.view = self._whole[skip:skip + self.size]

    def close(self):
        self.view.release()
        self._whole.release()
        try:
            self._map.close()
        except BufferError:
            # A chain's memoryview still points in; the mapping goes when it does.
            pass


def seal_against_shrinking(fd):
    """True if `fd` can no longer shrink: it was, or has now been, sealed (L:712)."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
            return True
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        return True
    except OSError as e:
        # EINVAL: not a memfd (or shmem); EPERM: sealing not allowed, or F_SEAL_SEAL.
        if e.errno in (errno.EINVAL, errno.EPERM, errno.EBADF):
            return False
        raise


def _check_region(region, fd, index):
    guest_addr, size, user_addr, offset = region
    if size == 0:
        raise RequestError("empty memory region", detail=f"region {index}")
    for name, start in (("guest", guest_addr), ("user", user_addr)):
        if start + size > 1 << 64:
            raise RequestError("memory region wraps around", detail=f"region {index} {name} {start:#x}+{size:#x}")
    try:
        seal_against_shrinking(fd)          # first, so the size below is final
        st = os.fstat(fd)
    except OSError as e:
        raise RequestError("bad memory region fd", detail=f"region {index}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise RequestError("memory region fd is not a file", detail=f"region {index}")
    if offset + size > st.st_size:
        raise RequestError("memory region outside its file",
                           detail=f"region {index}: {offset:#x}+{size:#x} > file size {st.st_size:#x}")


def _check_overlaps(regions):
    for key in (lambda r: (r.guest_addr, "guest"), lambda r: (r.user_addr, "user")):
        spans = sorted((key(r)[0], key(r)[0] + r.size) for r in regions)
        for (start_a, end_a), (start_b, _) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise RequestError("memory regions overlap",
                                   detail=f"{key(regions[0])[1]} {start_a:#x}-{end_a:#x} and {start_b:#x}")


class RegionMemory(Memory):
    """Guest memory made of the front-end's regions, addressed guest-physically."""

    def __init__(self, regions, fds):
        regions = list(regions)
        for i, (region, fd) in enumerate(zip(regions, fds)):
            _check_region(region, fd, i)
        _check_overlaps(regions)
        self.regions = []
        try:
            for region, fd in zip(regions, fds):
                self.regions.append(_Mapped(region, fd))
        except (OSError, ValueError) as e:
            self.close()
            raise RequestError("cannot map memory region", detail=str(e)) from e
        self.regions.sort(key=lambda r: r.guest_addr)
        self.size = max(r.guest_end for r in self.regions)
        self._last = self.regions[0]

    def _locate(self, addr, length):
        # Most accesses fall in the region the previous one did (usually there is one).
        r = self._last
        if r.guest_addr <= addr and addr + length <= r.guest_end and length >= 0:
            return r.view, addr - r.guest_addr
        for r in self.regions:
            if r.guest_addr <= addr and addr + length <= r.guest_end and length >= 0:
                self._last = r
                return r.view, addr - r.guest_addr
        raise GuestMemoryError("Invalid address", detail=f"{addr:#x}+{length:#x} is in no memory region")

    def span(self, addr):
        for r in self.regions:
            if r.guest_addr <= addr < r.guest_end:
                return r.view, r.guest_addr, r.guest_end
        return None

    def views(self, addr, length):
        """A range that runs through adjacent regions, as one view per region (L:231).
        QEMU splits guest RAM into regions that touch (below and above the PCI hole
        when it is small, or at each DIMM), and a driver's buffer may span the join."""
        views, at, end = [], addr, addr + length
        while at < end:
            for r in self.regions:
                if r.guest_addr <= at < r.guest_end:
                    n = min(end, r.guest_end) - at
                    views.append(r.view[at - r.guest_addr:at - r.guest_addr + n])
                    at += n
                    break
            else:
                for view in views:
                    view.release()
                raise GuestMemoryError("Invalid address", detail=f"{addr:#x}+{length:#x} is in no memory region")
        return views if views else [self.view(addr, length)]

    def read(self, addr, length):
        try:
            return super().read(addr, length)
        except GuestMemoryError:           # across adjacent regions, or really outside
            return b"".join(bytes(v) for v in self.views(addr, length))

    def user_to_guest(self, user_addr, length):
        """A front-end user address range -> guest-physical, or RequestError."""
        for r in self.regions:
            if r.user_addr <= user_addr and user_addr + length <= r.user_end:
                return user_addr - r.user_addr + r.guest_addr
        raise RequestError("ring outside guest memory",
                           detail=f"user address {user_addr:#x}+{length:#x} is in no memory region")

    def close(self):
        for r in self.regions:
            r.close()
        self.regions = []
