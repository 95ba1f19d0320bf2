"""The entropy device's source: /dev/urandom, read straight into guest buffers."""

import os

from ..errors import LauncherError


class UrandomSource:
    """readv(views) -> bytes read, as RngDevice wants (L:361 loops over short reads)."""

    def __init__(self, path="/dev/urandom"):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LauncherError(f"Failed to open {path}: {e.strerror}") from None

    def readv(self, views):
        return os.readv(self.fd, views)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
