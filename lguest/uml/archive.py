"""The three archive formats the guest image kit meets: ar, .deb, and cpio "newc".

#L:800 The UML guest kit starts from two Debian packages and ends with one initramfs.
# A .deb is an `ar` archive (the 1970s Unix library format: a magic line, then 60-byte
# text headers each followed by the member's bytes, padded to an even length) holding
# `debian-binary`, `control.tar.*` and `data.tar.*`. We read ar ourselves (it is thirty
# lines), let tarfile unpack data.tar.{xz,gz,bz2}, and hand data.tar.zst to the `zstd`
# command (Debian has used xz for years; zstd is Ubuntu's choice, and Python 3.11 has no
# zstd). Building the image needs no root and writes nothing outside the cache.
"""

import gzip
import io
import shutil
import stat
import subprocess
import tarfile

from ..errors import LauncherError

AR_MAGIC = b"!<arch>\n"
AR_HEADER_SIZE = 60


def read_ar(data):
    """Parse an ar archive: return a list of (name, bytes) in archive order."""
    if not data.startswith(AR_MAGIC):
        raise LauncherError("not an ar archive (a .deb starts with '!<arch>')")
    members, pos = [], len(AR_MAGIC)
    while pos < len(data):
        header = data[pos:pos + AR_HEADER_SIZE]
        if len(header) < AR_HEADER_SIZE or header[58:60] != b"`\n":
            raise LauncherError(f"ar archive: bad member header at offset {pos}")
        name = header[0:16].decode("ascii", "replace").rstrip()
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise LauncherError(f"ar archive: bad member size at offset {pos}") from None
        start = pos + AR_HEADER_SIZE
        if start + size > len(data):
            raise LauncherError(f"ar archive: member {name!r} runs past the end")
        # GNU ar ends short names with '/'; dpkg writes them without.
        members.append((name.rstrip("/"), data[start:start + size]))
        pos = start + size + (size & 1)
    return members


def deb_data_tar(deb_bytes):
    """Return (member name, compressed bytes) of a .deb's data.tar.*."""
    for name, body in read_ar(deb_bytes):
        if name.startswith("data.tar"):
            return name, body
    raise LauncherError("the .deb has no data.tar member")


def _open_data_tar(name, body):
    if name.endswith(".zst"):
        if not shutil.which("zstd"):
            raise LauncherError("the .deb's data is zstd-compressed and the `zstd` command is missing")
        plain = subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout
        return tarfile.open(fileobj=io.BytesIO(plain), mode="r:")
    # tarfile sniffs xz, gz, bz2 and plain tar by itself.
    return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")


def extract_deb(deb_path, dest):
    """Unpack a .deb's files under dest (no root: owners and devices are not restored)."""
    with open(deb_path, "rb") as f:
        name, body = deb_data_tar(f.read())
    try:
        with _open_data_tar(name, body) as tar:
            # The "data" filter refuses absolute paths, '..', and links leaving dest.
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, subprocess.CalledProcessError, EOFError, OSError) as e:
        raise LauncherError(f"cannot unpack {deb_path}: {e}") from None


#L:801 The initramfs is a gzip'd cpio archive in the "newc" format (the kernel's
# Documentation/driver-api/early-userspace/buffer-format.rst): each entry is the magic
# "070701", thirteen 8-digit hex fields (ino, mode, uid, gid, nlink, mtime, filesize,
# devmajor, devminor, rdevmajor, rdevminor, namesize including its NUL, check), the name,
# NUL, padding to 4 bytes, then the data padded to 4. "TRAILER!!!" ends it. We write
# everything as root-owned with mtime 0, so the same inputs give the same bytes (and the
# same cache key). The kernel also accepts several archives concatenated.
class CpioWriter:
    """Write a cpio newc archive into a bytearray; directories are created on demand."""

    def __init__(self):
        self.out = bytearray()
        self._next_ino = 1
        self._dirs = {""}

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise LauncherError(f"cpio: bad entry name {name!r}")
        encoded = name.encode() + b"\0"
        fields = (self._next_ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0)
        self._next_ino += 1
        self.out += b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
        self._pad()
        self.out += data
        self._pad()

    def _pad(self):
        self.out += b"\0" * (-len(self.out) % 4)

    def _parents(self, name):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def directory(self, name, perm=0o755):
        name = name.strip("/")
        if name in self._dirs:
            return
        self._parents(name)
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFREG | perm, bytes(data))

    def symlink(self, name, target):
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name, major, minor, perm=0o600):
        name = name.strip("/")
        self._parents(name)
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self):
        """Add the trailer and return the archive's bytes."""
        self._entry("TRAILER!!!", 0, nlink=1)
        return bytes(self.out)


def gzip_bytes(data):
    # mtime=0 keeps the output a pure function of its input.
    return gzip.compress(data, compresslevel=6, mtime=0)


def read_cpio(data):
    """Parse a newc archive back into [(name, mode, bytes, (rdevmajor, rdevminor))].

    The kit does not need this; the tests use it to check what the writer wrote."""
    entries, pos = [], 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise LauncherError(f"cpio: bad magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body_start = name_start + namesize + (-(name_start + namesize) % 4)
        body = data[body_start:body_start + filesize]
        pos = body_start + filesize + (-(body_start + filesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, fields[1], body, (fields[9], fields[10])))


BUSYBOX_DIRS = ("bin", "sbin", "proc", "sys", "dev", "tmp")


def busybox_image(busybox, dirs=BUSYBOX_DIRS):
    """The start of a small busybox initramfs: `dirs`, /dev/console (the kernel opens it
    for init before /init can mount devtmpfs), /bin/busybox and /bin/sh. The caller adds
    /init and the rest, and calls finish()."""
    cpio = CpioWriter()
    for d in dirs:
        cpio.directory(d)
    cpio.char_device("dev/console", 5, 1)
    with open(busybox, "rb") as f:
        cpio.file("bin/busybox", f.read(), perm=0o755)
    cpio.symlink("bin/sh", "busybox")
    return cpio
