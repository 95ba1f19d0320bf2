"""Kernel loading and boot parameters: from image files to a guest ready to enter.

#L:170 Putting it together, as the seed's main() did after option parsing: load the
# kernel (L:140 or L:150), map the initrd at the top of memory (L:180), then write
# boot_params and the command line where the profile says. For lguest, boot information
# is stashed at physical address 0 and the command line follows it at 0x1000, exactly
# as the seed. For a plain PC (KVM) the zero page goes at 0x7000 and the command line
# at 0x20000, clear of the real-mode IVT and BIOS data, as Firecracker places them.
# The command line may be no longer than the kernel's cmdline_size (2.06+; 255 before;
# 2047 for a vmlinux, COMMAND_LINE_SIZE - 1 on x86), and none of these pieces may
# overlap the kernel: each mistake is a LauncherError, never a corrupted guest.
"""

import logging
from dataclasses import dataclass

from ..errors import LauncherError
from .bootparams import BOOT_PARAMS_SIZE, lguest_profile, pc_profile
from .bzimage import load_bzimage, looks_like_bzimage
from .elf import is_elf, load_elf
from .image import ImageBytes, KernelImage, require_fits
from .initrd import Initrd, place_initrd

__all__ = ["BootSetup", "ImageBytes", "Initrd", "KernelImage", "load_kernel", "prepare_boot",
           "write_boot_params", "PROFILES"]

log = logging.getLogger("lguest.loader")

# profile -> (zero page address, command line address)
PROFILES = {"lguest": (0, BOOT_PARAMS_SIZE), "pc": (0x7000, 0x20000)}
DEFAULT_CMDLINE_SIZE = 2047


@dataclass(frozen=True)
class BootSetup:
    """Everything a backend needs to start the guest."""
    kernel: KernelImage
    profile: str
    zero_page: int                  # guest-physical address of struct boot_params
    cmdline_addr: int
    initrd: Initrd = None

    @property
    def entry32(self):
        return self.kernel.entry32

    @property
    def entry64(self):
        return self.kernel.entry64


def load_kernel(source, memory):
    """The seed's load_kernel(): ELF if it starts with \\177ELF, else a bzImage."""
    head = source.read(0, min(source.size, 0x400))
    if is_elf(head):
        return load_elf(source, memory)
    if len(head) < 0x206 or not looks_like_bzimage(head):
        raise LauncherError(f"{source.name}: This doesn't look like a bzImage to me "
                            f"(nor an ELF vmlinux)")
    return load_bzimage(source, memory)


def write_boot_params(memory, kernel, profile, cmdline, initrd=None, reserved=()):
    """Write boot_params and the command line for an already-loaded kernel."""
    if profile not in PROFILES:
        raise LauncherError(f"unknown boot profile {profile!r} (lguest or pc)")
    zero_page, cmdline_addr = PROFILES[profile]
    text = cmdline.encode() + b"\0"
    limit = kernel.cmdline_size if kernel.cmdline_size is not None else DEFAULT_CMDLINE_SIZE
    if len(text) - 1 > limit:
        raise LauncherError(f"kernel command line is {len(text) - 1} bytes; the kernel accepts {limit}")
    _require_clear(memory, kernel, zero_page, BOOT_PARAMS_SIZE, "boot_params")
    _require_clear(memory, kernel, cmdline_addr, len(text), "command line")
    where = (initrd.addr, initrd.size) if initrd else None
    if profile == "lguest":
        params = lguest_profile(memory.size, cmdline_addr, where)
    else:
        params = pc_profile(kernel, memory.size, cmdline_addr, where, reserved)
    memory.write(zero_page, bytes(params.data))
    memory.write(cmdline_addr, text)
    return BootSetup(kernel, profile, zero_page, cmdline_addr, initrd)


def _require_clear(memory, kernel, addr, length, what):
    require_fits(memory, addr, length, what)
    if addr < kernel.end and kernel.start < addr + length:
        raise LauncherError(f"{what} at {addr:#x}+{length:#x} would overlap the kernel "
                            f"({kernel.start:#x}-{kernel.end:#x})")


def prepare_boot(memory, kernel_path, cmdline="", initrd_path=None, profile="lguest", reserved=()):
    """Load kernel and initrd files and write the boot parameters: the whole of it."""
    from .mapping import ImageFile
    with ImageFile(kernel_path) as source:
        kernel = load_kernel(source, memory)
    log.debug("kernel %s: %s at %#x-%#x, entry32 %s, entry64 %s", kernel_path, kernel.kind,
              kernel.start, kernel.end, _hex(kernel.entry32), _hex(kernel.entry64))
    initrd = None
    if initrd_path:
        with ImageFile(initrd_path) as source:
            initrd = place_initrd(source, memory, kernel)
    return write_boot_params(memory, kernel, profile, cmdline, initrd, reserved)


def _hex(value):
    return "none" if value is None else f"{value:#x}"
