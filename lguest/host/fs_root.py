"""A host's root directory as a virtio-fs share: its kernel file systems show empty.

#L:396 Sharing "/" (the default root of `lguest run`, L:886) shares the host's /proc,
# /sys and /dev mount points too. The guest mounts its own over them, but what they hold
# must not be served even when nothing covers them (a guest's root can unmount its own):
# procfs files report size 0 over FUSE, and a read of /proc/kmsg or a sysfs attribute
# can block, and with it the queue thread serving every request of the share. So each
# of them that is a mount of its own (another st_dev than the root's) is shown as an
# empty directory: a LOOKUP inside it is ENOENT and its listing has only "." and "..".
"""

import errno
import os

from .fs import SharedDirectory

KERNEL_MOUNTS = ("proc", "sys", "dev")


class HostRoot(SharedDirectory):
    """SharedDirectory of a root directory, minus the contents of its kernel mounts."""

    def __init__(self, path="/", *, read_only=True, hidden=KERNEL_MOUNTS):
        super().__init__(path, read_only=read_only)
        self.hidden_devs = set()
        for name in hidden:
            try:
                st = os.stat(os.path.join(self.path, name))
            except OSError:
                continue
            if st.st_dev != self.root.key[0]:
                self.hidden_devs.add(st.st_dev)

    def lookup(self, parent, name):
        if self._dir(parent).key[0] in self.hidden_devs:
            raise OSError(errno.ENOENT, "the host's kernel file systems are not shared")
        return super().lookup(parent, name)

    def _list(self, fd):
        st = os.fstat(fd)
        if st.st_dev in self.hidden_devs:
            return [(b".", st.st_ino, 4), (b"..", 1, 4)]
        return SharedDirectory._list(fd)
