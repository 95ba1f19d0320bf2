"""The one loader module that touches the host: an image file, mapped or read.

#L:135 map_at(): the seed tries mmap first, because MAP_PRIVATE means a page of the
# kernel is not copied until someone writes to it, so untouched kernel pages are shared
# between Guests; it falls back to pread() when the file is not nicely page aligned
# (Plan 9's kernel). We map writable even for read-only segments: the kernel patches its
# own instructions. Two things the seed left to luck are checked here: the range must
# lie inside guest memory (a MAP_FIXED outside it would land on the launcher's own
# pages), and inside the file (touching a mapped page past EOF is SIGBUS). Only whole
# pages are mapped; a partial last page is read, so the bytes that follow a segment in
# the file never leak into the guest's bss.
"""

import ctypes
import mmap
import os

from ..errors import LauncherError
from .image import require_fits

PAGE_SIZE = mmap.PAGESIZE
MAP_FAILED = ctypes.c_void_p(-1).value
MAP_FIXED = 0x10                    # <sys/mman.h> on Linux; the mmap module does not export it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)


class ImageFile:
    """A kernel or initrd file; read with pread, mapped privately where aligned."""

    def __init__(self, path):
        self.name = str(path)
        try:
            self._file = open(path, "rb")
            self.size = os.fstat(self._file.fileno()).st_size
        except OSError as e:
            raise LauncherError(f"Failed to open {path}: {e.strerror}") from e
        self.fd = self._file.fileno()
        self.pages_mapped = 0          # how many pages went in by mmap (for tests, verbose)

    def read(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise LauncherError(f"{self.name}: truncated (wanted {length} bytes at offset {offset})")
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise LauncherError(f"Reading offset {offset} len {length} of {self.name} gave {len(data)}")
        return data

    def stream(self):
        self._file.seek(0)
        return self._file

    def copy_to(self, memory, paddr, offset, length):
        """Put file bytes [offset, offset+length) at guest-physical paddr."""
        require_fits(memory, paddr, length, f"{self.name} data")
        if offset < 0 or offset + length > self.size:
            raise LauncherError(f"{self.name}: data at offset {offset:#x}+{length:#x} is past the end of the file")
        mapped = self._map_whole_pages(memory, paddr, offset, length)
        if mapped < length:
            self._read_into(memory, paddr + mapped, offset + mapped, length - mapped)

    def _map_whole_pages(self, memory, paddr, offset, length):
        host = getattr(memory, "host_address", None)
        whole = length & ~(PAGE_SIZE - 1)
        if host is None or whole == 0 or (paddr | offset) & (PAGE_SIZE - 1):
            return 0
        got = _libc.mmap(host + paddr, whole, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | MAP_FIXED, self.fd, offset)
        if got in (None, MAP_FAILED) or got != host + paddr:
            return 0                   # the seed's fallback: read it instead
        self.pages_mapped += whole // PAGE_SIZE
        return whole

    def _read_into(self, memory, paddr, offset, length):
        view = memory.view(paddr, length)
        done = 0
        while done < length:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise LauncherError(f"Reading offset {offset + done} len {length - done} of {self.name} gave {got}")
            done += got

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
