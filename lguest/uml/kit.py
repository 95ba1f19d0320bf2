"""The guest image kit: a UML kernel and a busybox initramfs, built from Debian packages.

#L:803 Everything the guest needs comes from two Debian packages, fetched once with
# `apt-get download` into a cache directory outside the repository ($LGUEST_CACHE, or
# ~/.cache/lguest-py): `user-mode-linux` (the kernel as a host program, /usr/bin/linux.uml,
# plus its modules) and `busybox-static` (one static binary that is every command a small
# system needs). The kit unpacks them (L:800), picks the virtio modules and what they
# depend on (L:802), and writes an initramfs (L:801) with the /init of L:820. The image
# is cached under a key made of its inputs, so the second `lguest run` builds nothing.
"""

import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..errors import LauncherError
from . import archive
from .init_script import INIT_SCRIPT

PACKAGES = ("user-mode-linux", "busybox-static")
# The front-end drivers for the virtio devices UML's virtio_uml can carry (virtiofs
# brings fuse with it: a dependency in its .modinfo).
WANTED_MODULES = ("virtio_blk", "virtio_net", "virtio_console", "virtiofs")
# Bump when the image layout changes, so old cached images are not reused.
KIT_VERSION = 4


@dataclass(frozen=True)
class Kit:
    kernel: str        # the UML kernel, a host executable
    initrd: str        # cpio newc initramfs (uncompressed)
    modules: tuple     # module names in load order


# The kit's modules each kind of device needs (virtio ids), dependencies included.
DEVICE_MODULES = {1: ("failover", "net_failover", "virtio_net"), 2: ("virtio_blk",),
                  3: ("virtio_console",), 26: ("fuse", "virtiofs")}


def unused_modules(kit, device_ids):
    """The kit's modules no device of this boot needs: /init need not load them."""
    needed = {m for i in set(device_ids) for m in DEVICE_MODULES.get(i, ())}
    known = {m for mods in DEVICE_MODULES.values() for m in mods}
    return tuple(m for m in kit.modules if m in known and m not in needed)


def cache_dir():
    """$LGUEST_CACHE, else $XDG_CACHE_HOME/lguest-py, else ~/.cache/lguest-py."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("LGUEST_CACHE") or os.path.join(base, "lguest-py")


def unwritable_cache(root, error):
    """One clear line for a cache we cannot create or fill (e.g. a root-built one)."""
    where = error.filename or root
    return LauncherError(f"cannot write the guest kit cache {root} ({where}: "
                         f"{error.strerror}); "
                         "set LGUEST_CACHE (or XDG_CACHE_HOME) to a directory you can "
                         "write, or build the kit there once as its owner")


def say(message):
    print(f"lguest: {message}", file=sys.stderr, flush=True)


def _newest_deb(debs_dir, package):
    found = sorted(glob.glob(os.path.join(debs_dir, f"{package}_*.deb")))
    return found[-1] if found else None


# apt-get once sat idle for minutes here (in its gpgv method, on a loaded machine):
# bounded, the first run fails with a message instead of hanging.
APT_TIMEOUT = 600


def _apt(argv, cwd=None, timeout=APT_TIMEOUT):
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LauncherError(f"`{' '.join(argv)}` did not finish in {timeout} s (is the "
                            "package mirror reachable?)") from None


def _apt_download(debs_dir, packages):
    return _apt(["apt-get", "download", *packages], cwd=debs_dir)


def fetch_debs(debs_dir, progress=say):
    """Return {package: path of its .deb}, downloading the missing ones."""
    os.makedirs(debs_dir, exist_ok=True)
    missing = [p for p in PACKAGES if not _newest_deb(debs_dir, p)]
    if missing:
        progress(f"fetching {', '.join(missing)} with apt-get download into {debs_dir} "
                 "(about 45 MB, once)")
        try:
            done = _apt_download(debs_dir, missing)
            if done.returncode != 0 and os.geteuid() == 0:
                # A fresh machine may have no package lists yet.
                progress("apt-get download failed; running apt-get update and retrying")
                _apt(["apt-get", "update", "-qq"])
                done = _apt_download(debs_dir, missing)
        except FileNotFoundError:
            raise LauncherError("apt-get is missing: the UML kit needs a Debian-like host "
                                f"(or put {', '.join(missing)} .debs in {debs_dir})") from None
        if done.returncode != 0:
            raise LauncherError(f"apt-get download {' '.join(missing)} failed "
                                f"(try `sudo apt-get update`): {done.stderr.strip()[-300:]}")
    return {p: _newest_deb(debs_dir, p) for p in PACKAGES}


def unpack(deb, unpacked_root, progress=say):
    """Unpack a .deb once into unpacked_root/<deb name>/; return that directory."""
    dest = os.path.join(unpacked_root, os.path.basename(deb)[:-len(".deb")])
    if not os.path.isdir(dest):
        progress(f"unpacking {os.path.basename(deb)}")
        os.makedirs(unpacked_root, exist_ok=True)
        # Unpack beside, then rename: a half-unpacked tree is never mistaken for a whole
        # one, and two runs unpacking at once do not trip over each other.
        scratch = tempfile.mkdtemp(prefix=".unpacking-", dir=unpacked_root)
        try:
            archive.extract_deb(deb, scratch)
            # mkdtemp made it 0700: a cache built by root must be readable by everyone.
            os.chmod(scratch, 0o755)
            os.rename(scratch, dest)
        except OSError:
            if not os.path.isdir(dest):
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _modules_root(uml_dir):
    roots = sorted(glob.glob(os.path.join(uml_dir, "usr", "lib", "uml", "modules", "*")))
    if not roots:
        raise LauncherError(f"no UML modules under {uml_dir}/usr/lib/uml/modules")
    return roots[-1]


def build_initramfs(busybox, modules):
    """The image's bytes: busybox, the modules (in load order), and /init. Not
    compressed: UML reads the file from the host's page cache, and inflating 1.6 MB of
    gzip cost each boot ~0.2 s here (medians of 8 and 12 interleaved boots)."""
    cpio = archive.CpioWriter()
    # host: where the host's root is mounted (lguest/uml/shares.py), made here, not by a
    # mkdir process at each boot.
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root", "mnt",
              "host"):
        cpio.directory(d)
    # The kernel opens /dev/console for init before /init can mount devtmpfs.
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, perm=0o666)
    with open(busybox, "rb") as f:
        cpio.file("bin/busybox", f.read(), perm=0o755)
    cpio.symlink("bin/sh", "busybox")
    for name, elf in modules:
        cpio.file(f"lib/modules/{name}.ko", elf)
    cpio.file("lib/modules/load-order", "".join(f"{n}\n" for n, _ in modules).encode())
    cpio.file("init", INIT_SCRIPT.encode(), perm=0o755)
    return cpio.finish()


def _write_atomically(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@functools.lru_cache(maxsize=None)
def ensure_kit(root=None, progress=say):
    """Fetch, unpack and build what is missing; return the Kit. Cached per process."""
    root = root or cache_dir()
    try:
        return _ensure_kit(root, progress)
    except PermissionError as e:
        raise unwritable_cache(root, e) from None


def _ensure_kit(root, progress):
    debs = fetch_debs(os.path.join(root, "debs"), progress)
    key_text = repr((KIT_VERSION, sorted(os.path.basename(d) for d in debs.values()),
                     WANTED_MODULES, INIT_SCRIPT))
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    uml_dir = unpack(debs["user-mode-linux"], os.path.join(root, "unpacked"), progress)
    kernel = os.path.join(uml_dir, "usr", "bin", "linux.uml")
    image = os.path.join(root, "images", f"initramfs-{key}.cpio")
    order_file = image + ".modules"
    if not os.path.exists(image):
        from . import modinfo      # pyelftools: only needed when building
        bb_dir = unpack(debs["busybox-static"], os.path.join(root, "unpacked"), progress)
        modules = modinfo.resolve(_modules_root(uml_dir), WANTED_MODULES)
        os.makedirs(os.path.dirname(image), exist_ok=True)
        _write_atomically(order_file, "".join(f"{n}\n" for n, _ in modules).encode())
        _write_atomically(image, build_initramfs(os.path.join(bb_dir, "bin", "busybox"), modules))
        progress(f"built {image}")
    if not os.access(kernel, os.X_OK):
        raise LauncherError(f"{kernel} is missing or not executable")
    with open(order_file) as f:
        order = tuple(f.read().split())
    return Kit(kernel=kernel, initrd=image, modules=order)
