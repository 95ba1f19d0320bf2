"""The lguest-host kit: an i386 initramfs with busybox, Python 3.11 and (optionally) us.

A real lguest host is a 32-bit x86 Linux (lguest left Linux in 4.14), so here it runs
under qemu-system-i386 (see qemu.py). Everything it needs inside comes, at run time, from
Debian's i386 packages fetched with `apt-get download` into a cache outside the
repository ($LGUEST_CACHE or ~/.cache/lguest-py, then lguest-host/): busybox-static for
the shell and every small command, python3.11-minimal with libpython3.11-stdlib (the
minimal package alone lacks mmap, ctypes, termios, json) and the shared libraries their
extension modules link to. pytest, hypothesis and the other pure-Python test dependencies
come as wheels from PyPI (`pip download --no-deps`), unpacked into dist-packages.

The image is built from layers, each a gzip'd cpio archive, concatenated (the kernel
unpacks one after the other): the base (packages and wheels, cached by their names), the
project (lguest/, tests/, pyproject.toml, built afresh each time: it is small), then the
caller's files and /init. Python sources are precompiled with the build machine's
python3.11 as unchecked-hash .pyc: the cpio's mtimes are 0, so timestamp checks would
fail, and imports under TCG are ~40% faster compiled.
"""

import glob
import hashlib
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile

from ..errors import LauncherError
from ..uml import archive
from ..uml.kit import cache_dir, say

ARCH = "i386"
# The packages, then the libraries their ELF files need (from the packages' Depends,
# keeping those the interpreter and the modules the tests import link to: libssl3 for
# hashlib, libffi8 for ctypes, and so on; readline, sqlite, ncurses, tirpc are left out).
PACKAGES = (
    "busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "libgcc-s1", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5",
    "libssl3", "libcrypt1", "libuuid1",
)
# Pure-Python wheels for pytest and what the project's tests import.
PIP_PACKAGES = ("pytest", "pluggy", "iniconfig", "packaging", "pygments", "hypothesis", "attrs",
                "sortedcontainers", "pyelftools")
# Parts of the standard library no test needs: less to pack, unpack and keep in RAM.
STDLIB_PRUNE = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                "pydoc_data", "unittest/test", "distutils/tests")
PROJECT_PARTS = ("lguest", "tests", "pyproject.toml")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_PROJECT = "lguest-py"            # the project's place inside the host: /lguest-py
KIT_VERSION = 1
DEFAULT_KERNEL = "bzImage"


def kit_dir():
    return os.path.join(cache_dir(), "lguest-host")


def host_kernel():
    """The lguest host's bzImage: $LGUEST_HOST_KERNEL, or the kit's default place."""
    path = os.environ.get("LGUEST_HOST_KERNEL") or os.path.join(kit_dir(), DEFAULT_KERNEL)
    if not os.path.isfile(path):
        raise LauncherError(f"no lguest host kernel at {path}: it needs an i386 Linux "
                            "<= 4.13 with CONFIG_LGUEST=y (see docs/lguest-host.md); "
                            "set LGUEST_HOST_KERNEL to its bzImage")
    return path


# -- the packages ------------------------------------------------------------------------
def _newest(directory, pattern):
    found = sorted(glob.glob(os.path.join(directory, pattern)))
    return found[-1] if found else None


def _deb_of(debs_dir, package):
    return _newest(debs_dir, f"{package}_*_{ARCH}.deb") or _newest(debs_dir, f"{package}_*_all.deb")


# apt-get update once sat for 8 minutes here in its gpgv method, idle, on a loaded
# machine; bounded, it fails with a message instead of hanging the suite.
APT_TIMEOUT = 600


def _run(cmd, cwd=None, timeout=APT_TIMEOUT):
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise LauncherError(f"{cmd[0]} is missing: the lguest-host kit needs a Debian-like "
                            "host") from None
    except subprocess.TimeoutExpired:
        raise LauncherError(f"`{' '.join(cmd)}` did not finish in {timeout} s (is the "
                            "package mirror reachable?)") from None


def _enable_i386(progress):
    """`apt-get download pkg:i386` needs the architecture and its package lists, once."""
    if ARCH in _run(["dpkg", "--print-foreign-architectures"]).stdout.split():
        return False
    if os.geteuid() != 0:
        raise LauncherError("apt has no i386 architecture: run `sudo dpkg --add-architecture "
                            "i386 && sudo apt-get update` once")
    progress("adding the i386 architecture to dpkg and updating the package lists (once)")
    _run(["dpkg", "--add-architecture", ARCH])
    _run(["apt-get", "update", "-qq"])
    return True


def fetch_debs(progress=say):
    """Return {package: .deb path}, downloading the missing ones (about 20 MB, once)."""
    debs_dir = os.path.join(kit_dir(), "debs")
    os.makedirs(debs_dir, exist_ok=True)
    missing = [p for p in PACKAGES if not _deb_of(debs_dir, p)]
    if missing:
        updated = _enable_i386(progress)
        progress(f"fetching {len(missing)} i386 packages with apt-get download into {debs_dir}")
        wanted = [f"{p}:{ARCH}" for p in missing]
        done = _run(["apt-get", "download", *wanted], cwd=debs_dir)
        if done.returncode != 0 and not updated and os.geteuid() == 0:
            progress("apt-get download failed; running apt-get update and retrying")
            _run(["apt-get", "update", "-qq"])
            done = _run(["apt-get", "download", *wanted], cwd=debs_dir)
        if done.returncode != 0:
            raise LauncherError(f"apt-get download failed: {done.stderr.strip()[-300:]}")
    return {p: _deb_of(debs_dir, p) for p in PACKAGES}


def fetch_wheels(packages, progress=say):
    """Return the paths of pure-Python wheels for `packages`, downloading missing ones."""
    wheels_dir = os.path.join(kit_dir(), "wheels")
    os.makedirs(wheels_dir, exist_ok=True)

    def wheel_of(name):
        stem = name.replace("-", "_")
        return _newest(wheels_dir, f"{stem}-*-py3-none-any.whl") or \
            _newest(wheels_dir, f"{stem}-*-py2.py3-none-any.whl")
    missing = [p for p in packages if not wheel_of(p)]
    if missing:
        progress(f"fetching wheels {', '.join(missing)} with pip download")
        done = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                     "--only-binary=:all:", "--platform", "any", "--python-version", "3.11",
                     "-d", wheels_dir, *missing])
        if done.returncode != 0:
            raise LauncherError(f"pip download failed: {done.stderr.strip()[-300:]}")
    found = {p: wheel_of(p) for p in packages}
    absent = [p for p, w in found.items() if not w]
    if absent:
        raise LauncherError(f"no pure-Python wheel for {', '.join(absent)}")
    return sorted(found.values())


def unpack(deb, progress=say):
    """Unpack a .deb once under the kit's unpacked/ directory; return that directory.

    Not the UML kit's unpack: its "data" filter refuses absolute symlinks, and Debian's
    python ships some (sitecustomize.py -> /etc/python3.11/...). The "tar" filter keeps
    them (they are only ever followed inside the host) and still refuses '..' paths."""
    import io
    import tarfile
    root = os.path.join(kit_dir(), "unpacked")
    dest = os.path.join(root, os.path.basename(deb)[:-len(".deb")])
    if os.path.isdir(dest):
        return dest
    progress(f"unpacking {os.path.basename(deb)}")
    os.makedirs(root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".unpacking-", dir=root)
    try:
        with open(deb, "rb") as f:
            name, body = archive.deb_data_tar(f.read())
        if name.endswith(".zst"):
            body = subprocess.run(["zstd", "-dc"], input=body, capture_output=True,
                                  check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            tar.extractall(scratch, filter="tar")
        os.rename(scratch, dest)
    except (tarfile.TarError, subprocess.CalledProcessError, OSError) as e:
        if not os.path.isdir(dest):
            raise LauncherError(f"cannot unpack {deb}: {e}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


# -- building ----------------------------------------------------------------------------
def _compile_tree(tree):
    """Precompile every .py under `tree` for python3.11 (same bytecode on i386)."""
    if sys.version_info[:2] != (3, 11):
        return                          # another version's .pyc would be ignored anyway
    for dirpath, _, names in os.walk(tree):
        for name in names:
            if name.endswith(".py"):
                source = os.path.join(dirpath, name)
                rel = os.path.relpath(source, tree)
                try:
                    py_compile.compile(source, dfile="/" + rel, doraise=True,
                                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                except (py_compile.PyCompileError, SyntaxError, ValueError):
                    pass                # a file the interpreter will compile (or reject) itself


def _add_tree(cpio, tree, prefix=""):
    """Add a directory tree to the archive: directories, files (modes kept), symlinks."""
    for dirpath, dirnames, names in os.walk(tree):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, tree)
        base = prefix + ("" if rel_dir == "." else rel_dir.replace(os.sep, "/"))
        if base:
            cpio.directory(base)
        for name in sorted(names) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            guest = f"{base}/{name}" if base else name
            if os.path.islink(path):
                cpio.symlink(guest, os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    cpio.file(guest, f.read(), perm=os.stat(path).st_mode & 0o777)


def _build_base(debs, wheels, progress):
    with tempfile.TemporaryDirectory(prefix="lguest-host-") as stage:
        for package, deb in sorted(debs.items()):
            shutil.copytree(unpack(deb, progress), stage, symlinks=True,
                            dirs_exist_ok=True)
        stdlib = os.path.join(stage, "usr", "lib", "python3.11")
        for part in STDLIB_PRUNE:
            shutil.rmtree(os.path.join(stdlib, part), ignore_errors=True)
        for sub in ("usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale"):
            shutil.rmtree(os.path.join(stage, sub), ignore_errors=True)
        site = os.path.join(stage, "usr", "lib", "python3", "dist-packages")
        os.makedirs(site, exist_ok=True)
        for wheel in wheels:
            import zipfile
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
        progress("precompiling the standard library and the wheels")
        _compile_tree(stage)
        cpio = archive.CpioWriter()
        _add_tree(cpio, stage)
        cpio.symlink("usr/bin/python3", "python3.11")
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "mnt", "sbin", "usr/sbin"):
            cpio.directory(d)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3, perm=0o666)
        cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        cpio.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        return archive.gzip_bytes(cpio.finish())


def base_layer(pip_packages=PIP_PACKAGES, progress=say):
    """The cached base archive: busybox, python3.11 and the wheels."""
    debs = fetch_debs(progress)
    wheels = fetch_wheels(pip_packages, progress) if pip_packages else []
    key_text = repr((KIT_VERSION, sorted(os.path.basename(d) for d in debs.values()),
                     [os.path.basename(w) for w in wheels], STDLIB_PRUNE, sys.version_info[:2]))
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = os.path.join(kit_dir(), "images", f"base-{key}.cpio.gz")
    if not os.path.exists(path):
        progress("building the lguest-host base image (once)")
        data = _build_base(debs, wheels, progress)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def project_layer():
    """lguest/, tests/ and pyproject.toml under /lguest-py, precompiled."""
    with tempfile.TemporaryDirectory(prefix="lguest-host-project-") as stage:
        dest = os.path.join(stage, GUEST_PROJECT)
        os.makedirs(dest)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for part in PROJECT_PARTS:
            source = os.path.join(ROOT, part)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(dest, part), ignore=ignore)
            elif os.path.isfile(source):
                shutil.copy(source, dest)
        _compile_tree(stage)
        cpio = archive.CpioWriter()
        _add_tree(cpio, stage)
        return archive.gzip_bytes(cpio.finish())


def files_layer(init_script, files):
    cpio = archive.CpioWriter()
    for guest_path, content in sorted(files.items()):
        if isinstance(content, str):
            with open(content, "rb") as f:
                data = f.read()
            perm = os.stat(content).st_mode & 0o777
        else:
            data, perm = bytes(content), 0o644
        cpio.file(guest_path.lstrip("/"), data, perm=perm)
    cpio.file("init", init_script.encode(), perm=0o755)
    return archive.gzip_bytes(cpio.finish())


def build_initramfs(init_script, files=None, project=True, pip_packages=PIP_PACKAGES,
                    progress=say):
    """Return the path of a gzip'd cpio initramfs for the i386 lguest host.

    `init_script` becomes /init (a busybox sh script); `files` maps paths inside the host
    to host paths (their bytes and mode are copied) or to bytes. With `project`, the
    project is at /lguest-py with its test dependencies."""
    layers = [base_layer(pip_packages if project else (), progress)]
    out_dir = os.path.join(kit_dir(), "images")
    os.makedirs(out_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="host-", suffix=".cpio.gz", dir=out_dir)
    with os.fdopen(fd, "wb") as out:
        with open(layers[0], "rb") as f:
            shutil.copyfileobj(f, out)
        if project:
            out.write(project_layer())
        out.write(files_layer(init_script, dict(files or {})))
    return path
