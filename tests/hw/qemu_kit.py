"""A QEMU guest kit for the hw tests: Debian's cloud kernel and a busybox initramfs.

Everything comes from Debian packages at test time, cached under
~/.cache/lguest-py/qemu/ ($LGUEST_CACHE/qemu), never in the repository:
`linux-image-cloud-amd64` is a meta package whose one dependency is the versioned kernel
(linux-image-6.1.0-NN-cloud-amd64); we read that name from the meta package's control
file, download it, and take /boot/vmlinuz-* and the virtio modules from it. In the cloud
kernel virtio, virtio_pci, virtio_blk, virtio_net and virtio-rng are all modules
(CONFIG_VIRTIO_PCI=m), so each test's initramfs carries them and insmods them, in
dependency order (lguest/uml/modinfo.py), before the test's own script runs.
"""

import glob
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass

from lguest.errors import LauncherError
from lguest.uml import archive, kit as uml_kit

META_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_rng")
KIT_VERSION = 1

# What every test's /init starts with: mount the basics, load the virtio modules. The
# test's script follows; the last line powers the VM off (QEMU runs with -no-reboot).
INIT_HEAD = """#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/load-order); do
  insmod /lib/modules/$m.ko || echo "qemu-kit: insmod $m failed"
done
echo qemu-kit: modules loaded
"""
INIT_TAIL = "\necho qemu-kit: done\nsync\npoweroff -f\n"


@dataclass(frozen=True)
class QemuKit:
    kernel: str          # vmlinuz (bzImage)
    modules: tuple       # ((name, ELF bytes), ...) in load order
    busybox: str         # static busybox binary
    root: str            # the cache directory (images are written under it)


def root_dir():
    return os.path.join(uml_kit.cache_dir(), "qemu")


def _control_field(deb, field):
    """A field of a .deb's control file, read with the project's ar reader and tarfile."""
    with open(deb, "rb") as f:
        members = archive.read_ar(f.read())
    for name, body in members:
        if name.startswith("control.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("control"))
                text = tar.extractfile(member).read().decode()
            for line in text.splitlines():
                if line.startswith(field + ":"):
                    return line.split(":", 1)[1].strip()
    raise LauncherError(f"{deb}: no {field} in its control file")


def _download(debs, package):
    found = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if found:
        return found[-1]
    done = uml_kit._apt_download(debs, [package])
    found = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if done.returncode != 0 or not found:
        raise LauncherError(f"apt-get download {package} failed: {done.stderr.strip()[-200:]}")
    return found[-1]


def ensure_kit():
    """Fetch and unpack what is missing; return the QemuKit (LauncherError if we cannot)."""
    if not shutil.which("apt-get") and not os.path.isdir(root_dir()):
        raise LauncherError("apt-get is missing: the QEMU kit comes from Debian packages")
    root = root_dir()
    debs = os.path.join(root, "debs")
    os.makedirs(debs, exist_ok=True)
    meta = _download(debs, META_PACKAGE)
    # "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)" -> the package name
    versioned = _control_field(meta, "Depends").split(",")[0].split()[0]
    kernel_dir = uml_kit.unpack(_download(debs, versioned), os.path.join(root, "unpacked"),
                                progress=lambda m: None)
    vmlinuz = sorted(glob.glob(os.path.join(kernel_dir, "boot", "vmlinuz-*")))
    module_roots = sorted(glob.glob(os.path.join(kernel_dir, "lib", "modules", "*")))
    if not vmlinuz or not module_roots:
        raise LauncherError(f"{kernel_dir}: no /boot/vmlinuz-* or /lib/modules/*")
    from lguest.uml import modinfo
    modules = tuple(modinfo.resolve(module_roots[-1], MODULES))
    bb_dir = uml_kit.unpack(_download(debs, "busybox-static"), os.path.join(root, "unpacked"),
                            progress=lambda m: None)
    return QemuKit(kernel=vmlinuz[-1], modules=modules,
                   busybox=os.path.join(bb_dir, "bin", "busybox"), root=root)


def initramfs(kit, script):
    """Write (once) an initramfs whose /init runs `script` after INIT_HEAD; return its path."""
    init = INIT_HEAD + script + INIT_TAIL
    key = hashlib.sha256(repr((KIT_VERSION, kit.kernel, init)).encode()).hexdigest()[:16]
    path = os.path.join(kit.root, "images", f"initramfs-{key}.cpio.gz")
    if os.path.exists(path):
        return path
    cpio = archive.CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "mnt"):
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    with open(kit.busybox, "rb") as f:
        cpio.file("bin/busybox", f.read(), perm=0o755)
    cpio.symlink("bin/sh", "busybox")
    for name, elf in kit.modules:
        cpio.file(f"lib/modules/{name}.ko", elf)
    cpio.file("lib/modules/load-order", "".join(f"{n}\n" for n, _ in kit.modules).encode())
    cpio.file("init", init.encode(), perm=0o755)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    uml_kit._write_atomically(path, archive.gzip_bytes(cpio.finish()))
    return path
