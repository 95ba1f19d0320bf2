"""Linux on the KVM backend: the Debian cloud kernel, fetched with apt and cached.

Here /dev/kvm is KVM-PVM (guest ring 0 emulated): the early-boot test runs, bounded,
as far as the banner and our command line; the full boot skips, saying why.
"""

import glob
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import sys
import threading

import pytest

from lguest.backends.base import GuestDied
from lguest.uml.kit import cache_dir

CACHE = os.path.join(cache_dir(), "kvm-kernel")     # the kit's cache: $LGUEST_CACHE or ~/.cache/lguest-py
APT_ARCHIVES = "/var/cache/apt/archives"
PACKAGE = "linux-image-*-cloud-amd64_*.deb"
BANNER_BOUND = 90           # seconds: "Linux version" took ~23 s here as a vmlinux

if not os.access("/dev/kvm", os.R_OK | os.W_OK):
    pytest.skip("no usable /dev/kvm on this host", allow_module_level=True)


def _hardware_virtualization():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    return (" vmx" in flags or " svm" in flags) and not os.path.exists("/sys/module/kvm_pvm")


def _kernel_deb():
    for where in (CACHE, APT_ARCHIVES):
        found = sorted(glob.glob(os.path.join(where, PACKAGE)))
        if found:
            return found[-1]
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get to fetch linux-image-cloud-amd64")
    os.makedirs(CACHE, exist_ok=True)
    result = subprocess.run(["apt-get", "download", "linux-image-cloud-amd64"], cwd=CACHE,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        # A fresh machine may have no package lists yet: fetch them once and retry.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        result = subprocess.run(["apt-get", "download", "linux-image-cloud-amd64"], cwd=CACHE,
                                capture_output=True, text=True, timeout=300)
    # The metapackage depends on the versioned image, which holds the kernel.
    version = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                             capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in version.splitlines() if "Depends" in line]
    for name in names:
        subprocess.run(["apt-get", "download", name], cwd=CACHE, capture_output=True, timeout=300)
    found = sorted(glob.glob(os.path.join(CACHE, PACKAGE)))
    if not found:
        pytest.skip(f"could not fetch the Debian cloud kernel: {result.stderr.strip()[:200]}")
    return found[-1]


def _decompress(payload):
    if payload.startswith(b"\xFD7zXZ\x00"):
        return lzma.decompress(payload, format=lzma.FORMAT_XZ)
    if payload.startswith(b"\x1F\x8B"):
        return gzip.decompress(payload)
    if payload.startswith(b"\x28\xB5\x2F\xFD") and shutil.which("zstd"):
        return subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    if payload.startswith(b"\x02\x21\x4C\x18") and shutil.which("lz4"):
        # LZ4 legacy frame (Debian's kernels); trailing bytes after the frame are fine.
        return subprocess.run(["lz4", "-dc"], input=payload, capture_output=True).stdout
    pytest.skip(f"cannot decompress this kernel's payload (magic {payload[:4].hex()})")


@pytest.fixture(scope="module")
def kernel():
    """(bzImage path, vmlinux path): the vmlinux is the bzImage's payload, unpacked once,
    because the guest's own decompressor runs at ~250 KB/s on KVM-PVM."""
    deb = _kernel_deb()
    root = os.path.join(CACHE, os.path.basename(deb)[:-4])
    if not glob.glob(os.path.join(root, "boot", "vmlinuz-*")):
        os.makedirs(root, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True, timeout=300)
    bzimage = sorted(glob.glob(os.path.join(root, "boot", "vmlinuz-*")))[-1]
    vmlinux = os.path.join(root, "vmlinux")
    if not os.path.exists(vmlinux):
        with open(bzimage, "rb") as f:
            image = f.read()
        setup_sects = image[0x1F1] or 4
        offset, length = struct.unpack_from("<II", image, 0x248)
        start = (setup_sects + 1) * 512 + offset
        data = _decompress(image[start:start + length])
        with open(vmlinux + ".tmp", "wb") as f:
            f.write(data)
        os.replace(vmlinux + ".tmp", vmlinux)
    return bzimage, vmlinux


def test_debian_kernel_prints_banner_and_our_command_line(kernel):
    from lguest.backends.kvm import KvmBackend
    from lguest.launcher import run_guest
    from lguest.loader import prepare_boot
    from lguest.memory import GuestMemory
    from lguest.pci.bus import PciBus
    # The PVM emulator gaps, and the switches that got past them (this-machine.md).
    cmdline = "console=ttyS0 earlyprintk=ttyS0 noxsave clearcpuid=308,151 lguest.kvm.test=42"
    console = bytearray()
    memory = GuestMemory(256 << 20)
    setup = prepare_boot(memory, kernel[1], cmdline, profile="pc")
    bus = PciBus(memory)
    backend = KvmBackend(quiet=True, console=console.extend)

    def seen_enough(data):
        console.extend(data)
        if b"Kernel command line:" in console and console.endswith(b"\n"):
            backend.stop()            # we have what we came for
    backend.serial.sink = seen_enough
    timer = threading.Timer(BANNER_BOUND, backend.stop)
    try:
        backend.attach_bus(bus)
        backend.initialize(memory, setup.entry64, boot_params=setup.zero_page,
                           mmio_limit=bus.mmio_limit)
        timer.start()
        end = run_guest(backend, bus)
    finally:
        timer.cancel()
        backend.close()
        memory.close()
    text = console.decode("latin-1")
    if "Linux version" not in text and backend.pvm:
        pytest.skip(f"KVM-PVM too slow: no banner within {BANNER_BOUND} s ({end})")
    assert "Linux version" in text, (end, text[-2000:])
    assert "lguest.kvm.test=42" in text, (end, text[-2000:])
    # It read our e820 map: RAM from 1 MiB to the top of the 256 MiB we gave it.
    assert "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable" in text, text[:3000]
    sys.stdout.write(text[-600:])


@pytest.mark.skipif(not _hardware_virtualization(),
                    reason="needs hardware virtualization (vmx/svm and not KVM-PVM): here the "
                           "guest's ring 0 is emulated and a full Linux boot takes many minutes")
def test_full_boot_console_block_rng_net_and_exit_status(kernel, tmp_path):
    """Boot the Debian kernel with a busybox initramfs through `lguest --backend=kvm`:
    the init script checks the block device's bytes, reads the hwrng, brings eth0 up,
    then writes its verdict to the exit-status port (0x501, L:623) via /dev/port."""
    busybox = shutil.which("busybox")
    if busybox is None or b"statically linked" not in subprocess.run(
            ["file", busybox], capture_output=True).stdout:
        pytest.skip("needs a static busybox (Debian's busybox-static)")
    from lguest.uml import archive
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"lguest-kvm-disk!" * 512)
    init = "\n".join([
        "#!/bin/sh", "mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev",
        "ok=0",
        "[ \"$(head -c 16 /dev/vda)\" = lguest-kvm-disk! ] || ok=1",
        "head -c 16 /dev/hwrng | od -x | grep -q . || ok=$((ok|2))",
        "ip link set eth0 up || ok=$((ok|4))",
        "echo lguest-kvm-verdict $ok",
        "printf \"\\\\$(printf %o $ok)\" | dd of=/dev/port bs=1 seek=1281 count=1", ""])
    cpio = archive.busybox_image(busybox)
    cpio.file("init", init.encode(), perm=0o755)
    initrd = tmp_path / "init.cpio.gz"
    initrd.write_bytes(archive.gzip_bytes(cpio.finish()))
    result = subprocess.run(
        [sys.executable, "-m", "lguest", "--backend=kvm", f"--block={disk}", "--rng",
         "--tunnet=192.168.19.1", f"--initrd={initrd}", "256", kernel[0],
         "console=ttyS0", "rdinit=/init", "quiet"],
        capture_output=True, text=True, timeout=120)
    assert "lguest-kvm-verdict 0" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0
