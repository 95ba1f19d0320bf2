"""Placing the initial ram disk.

#L:180 An "initial ram disk" is a disk image loaded into memory along with the kernel
# which the kernel can use to boot from without needing any drivers. The seed maps it
# at the top of memory, page aligned (mmap wants that). Two limits the seed trusted to
# luck are enforced: the kernel's initrd_addr_max (the highest byte it can reach; the
# initrd goes below it when RAM extends further), and the kernel itself: an initrd
# that would overlap the kernel, its bss or its init_size is refused, with the sizes.
"""

import logging
from dataclasses import dataclass

from ..errors import LauncherError
from .image import MiB

log = logging.getLogger("lguest.loader")

PAGE_SIZE = 4096
NO_LIMIT = 0xFFFFFFFF               # ramdisk_image is a u32 unless the kernel says more


@dataclass(frozen=True)
class Initrd:
    addr: int
    size: int                       # the file's size, the kernel's ramdisk_size


def initrd_ceiling(memory_size, kernel):
    """One past the highest byte the initrd may use."""
    limit = kernel.initrd_addr_max if kernel.initrd_addr_max is not None else NO_LIMIT
    return min(memory_size, limit + 1) & ~(PAGE_SIZE - 1)


def place_initrd(source, memory, kernel):
    """Copy (or map) the initrd under the ceiling; return where it went."""
    size = source.size
    if size == 0:
        raise LauncherError(f"initrd {source.name} is empty")
    ceiling = initrd_ceiling(memory.size, kernel)
    addr = (ceiling - size) & ~(PAGE_SIZE - 1)
    if addr < kernel.end:
        raise LauncherError(
            f"initrd {source.name} ({size} bytes) does not fit between the kernel's end at "
            f"{kernel.end:#x} and {ceiling:#x} ({memory.size // MiB} MiB of memory)")
    source.copy_to(memory, addr, 0, size)
    log.debug("mapped initrd %s size=%d @ %#x", source.name, size, addr)
    return Initrd(addr, size)
