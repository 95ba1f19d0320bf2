"""What a loader returns, and the in-memory image source the loaders read from.

#L:130 Loading the Kernel. The seed's load_kernel() read a file and poked guest memory
# in one breath; here the loaders (ELF in L:140, bzImage in L:150) read from an image
# *source* and return a KernelImage record: where the kernel went, where to enter it,
# and (for a bzImage) the setup header it carried. Building the boot parameters from
# that record is a separate step (L:170), as rust-vmm's linux-loader does it, so the
# same loaded kernel can be started by the lguest profile or the plain-PC (KVM) one.
# A source has `name`, `size`, `read(offset, length)` and `copy_to(memory, paddr,
# offset, length)`; ImageBytes below is the sans-I/O one, ImageFile in mapping.py is
# the real file, which maps pages privately into the guest where it can.
"""

import io
from dataclasses import dataclass, field

from ..errors import LauncherError

MiB = 1 << 20


@dataclass(frozen=True)
class KernelImage:
    """Where a kernel was loaded and how to enter it."""
    kind: str                    # "elf32", "elf64" or "bzimage"
    start: int                   # lowest guest-physical byte the kernel occupies
    end: int                     # one past the highest (bss and init_size included)
    entry32: int = None          # 32-bit protected-mode entry (ELF32 e_entry, code32_start)
    entry64: int = None          # 64-bit entry (ELF64 e_entry, bzImage load address + 0x200)
    setup_header: bytes = field(default=None, repr=False)  # bzImage: the header at 0x1f1
    protocol: int = 0            # bzImage boot protocol version (0x20c = 2.12); 0 for ELF
    load_address: int = None     # bzImage: where the protected-mode kernel was put
    cmdline_size: int = None     # longest command line the kernel accepts, if it says
    initrd_addr_max: int = None  # highest byte an initrd may occupy, if it says
    xloadflags: int = 0


def fits(memory, addr, length):
    """True if [addr, addr+length) lies inside guest memory (and does not wrap)."""
    return addr >= 0 and length >= 0 and addr + length <= memory.size


def require_fits(memory, addr, length, what):
    """The loaders' check_pointer(): a range outside guest RAM is the user's error
    (kernel too big for --mem, or a malformed image), never a stray write."""
    if not fits(memory, addr, length):
        raise LauncherError(
            f"{what} at {addr:#x}-{addr + length:#x} does not fit in "
            f"{memory.size // MiB} MiB of guest memory")


class ImageBytes:
    """An image held in memory: the loaders' sans-I/O source (tests, fuzzing)."""

    def __init__(self, data, name="<image>"):
        self.data = bytes(data)
        self.name = name
        self.size = len(self.data)

    def read(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise LauncherError(f"{self.name}: truncated (wanted {length} bytes at offset {offset})")
        return self.data[offset:offset + length]

    def stream(self):
        return io.BytesIO(self.data)

    def copy_to(self, memory, paddr, offset, length):
        require_fits(memory, paddr, length, f"{self.name} data")
        memory.write(paddr, self.read(offset, length))

    def close(self):
        pass
