"""A real distribution bzImage through the loader (no boot: just the header and placement).

The kernel is looked for in $LGUEST_TEST_KERNEL, then in the lguest-py cache where a
Debian linux-image package was unpacked (by the KVM or QEMU kits, or by hand:
`apt-get download linux-image-6.1.0-*-cloud-amd64`, `dpkg-deb -x` into
<cache>/unpacked/<package>/), then /boot. Skipped, saying where it looked, if none.
"""

import glob
import os

import pytest

from lguest.errors import LauncherError
from lguest.loader import load_kernel, write_boot_params
from lguest.loader.mapping import ImageFile
from lguest.memory import GuestMemory
from lguest.uml.kit import cache_dir

MiB = 1 << 20


# Where the project's own kits unpack Debian's linux-image packages, under the cache
# ($LGUEST_CACHE, $XDG_CACHE_HOME/lguest-py or ~/.cache/lguest-py): the KVM test's
# kit (kvm-kernel/) and the QEMU front-end's (qemu/unpacked/), and unpacked/ by hand.
CACHE_PATTERNS = ("unpacked/linux-image-*/boot/vmlinuz-*",
                  "kvm-kernel/linux-image-*/boot/vmlinuz-*",
                  "qemu/unpacked/linux-image-*/boot/vmlinuz-*")


def find_kernel():
    candidates = [os.environ.get("LGUEST_TEST_KERNEL", "")]
    for pattern in CACHE_PATTERNS:
        candidates += sorted(glob.glob(os.path.join(cache_dir(), pattern)))
    candidates += sorted(glob.glob("/boot/vmlinuz-*"))
    for path in candidates:
        if path and os.access(path, os.R_OK):
            return path
    return None


@pytest.fixture
def bzimage():
    """Looked for when a test runs, not when the module is collected: on a fresh
    machine the KVM and QEMU kits fetch the kernel during the run (tests/hw, first)."""
    path = find_kernel()
    if path is None:
        pytest.skip("no x86-64 distribution bzImage: looked in $LGUEST_TEST_KERNEL, "
                    + ", ".join(os.path.join(cache_dir(), p) for p in CACHE_PATTERNS)
                    + " and /boot/vmlinuz-* (the lguest host's i386 bzImage has no 64-bit "
                    "entry, so it is not one)")
    return path


def test_a_distribution_bzimage_loads_with_64_bit_entry_and_pc_boot_params(bzimage):
    with GuestMemory(256 * MiB) as memory, ImageFile(bzimage) as source:
        kernel = load_kernel(source, memory)
        setup_sects = source.read(0x1F1, 1)[0] or 4
        payload = source.read((setup_sects + 1) * 512, 4096)
        assert memory.read(0x100000, 4096) == payload
        if (setup_sects + 1) * 512 % 4096 == 0:
            assert source.pages_mapped > 0
        boot = write_boot_params(memory, kernel, "pc", "console=ttyS0 earlyprintk=serial")
        zero_page = memory.read(boot.zero_page, 4096)
    assert kernel.kind == "bzimage" and kernel.protocol >= 0x20C
    assert (kernel.entry32, kernel.entry64) == (0x100000, 0x100200)
    assert kernel.end > 0x100000 + source.size - (setup_sects + 1) * 512    # init_size counted
    assert zero_page[0x202:0x206] == b"HdrS" and zero_page[0x210] == 0xFF


def test_a_distribution_bzimage_refuses_too_little_memory(bzimage):
    with GuestMemory(24 * MiB) as memory, ImageFile(bzimage) as source:
        with pytest.raises(LauncherError, match="kernel needs [0-9]+ MiB of guest memory, only 24"):
            load_kernel(source, memory)
