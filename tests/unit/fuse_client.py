"""A FUSE client for the virtio-fs device tests: it packs requests as Linux's virtiofs
driver does, puts each on a GuestRing (test_dev_rings.py) and unpacks the reply."""


from lguest.devices import fuse_wire as W
from lguest.devices.fs import FsDevice
from lguest.host.fs import SharedDirectory
from lguest.memory import GuestMemory
from test_dev_rings import GuestRing

HEAP = 0x10000


class Reply:
    def __init__(self, raw, written):
        self.raw = raw
        self.written = written
        self.length, self.error, self.unique = W.OUT_HEADER.unpack_from(raw) if written >= 16 \
            else (0, None, None)
        self.body = raw[16:self.length] if written >= 16 else b""

    def entry(self):
        head = W.ENTRY_OUT_HEAD.unpack_from(self.body)
        return head[0], W.ATTR.unpack_from(self.body, W.ENTRY_OUT_HEAD.size)

    def attr(self):
        return W.ATTR.unpack_from(self.body, W.ATTR_OUT_HEAD.size)


def attr_mode(attr):
    return attr[9]


class FuseClient:
    def __init__(self, path, read_only=False, tag="share", uid=0, gid=0):
        self.fs = SharedDirectory(path, read_only=read_only)
        self.dev = FsDevice(self.fs, tag)
        self.ring = GuestRing(GuestMemory(8 << 20), size=64, heap=HEAP)
        self.hiprio = GuestRing(GuestMemory(1 << 20), size=64, heap=HEAP)
        self.dev.activate([self.hiprio.queue, self.ring.queue], 0)
        self.unique = 0
        self.uid, self.gid = uid, gid

    def close(self):
        self.dev.close()

    def header(self, opcode, nodeid, args_length):
        self.unique += 2
        return W.IN_HEADER.pack(W.IN_HEADER.size + args_length, opcode, self.unique, nodeid,
                                self.uid, self.gid, 4242, 0, 0)

    def raw(self, readable, out_size=4096, queue=1):
        """Send readable byte strings; return Reply."""
        ring = self.ring if queue == 1 else self.hiprio
        ring.heap = HEAP
        head, outs = ring.add(readable, [out_size] if out_size else [], indirect=True)
        self.dev.process(queue)
        (used,) = ring.used_entries()
        assert used[0] == head
        raw = ring.memory.read(outs[0], out_size) if out_size else b""
        return Reply(raw, used[1])

    def call(self, opcode, nodeid=1, args=b"", data=b"", out_size=4096, queue=1):
        readable = [self.header(opcode, nodeid, len(args) + len(data)) + args]
        if data:
            readable.append(data)
        return self.raw(readable, out_size, queue)

    # -- conveniences ------------------------------------------------------------------
    def init(self, minor=36, flags=0xFFFFFFFF):
        r = self.call(W.INIT, 0, W.INIT_IN.pack(7, minor, 1 << 17, flags) + bytes(48))
        assert r.error == 0, r.error
        return r

    def lookup(self, name, parent=1):
        return self.call(W.LOOKUP, parent, name + b"\0")

    def node(self, name, parent=1):
        r = self.lookup(name, parent)
        assert r.error == 0, (name, r.error)
        return r.entry()[0]

    def create(self, name, parent=1, flags=0o2 | 0o100, mode=0o100644, umask=0o022):
        r = self.call(W.CREATE, parent, W.CREATE_IN.pack(flags, mode, umask, 0) + name + b"\0")
        if r.error:
            return r, None, None
        nodeid = r.entry()[0]
        fh = W.OPEN_OUT.unpack_from(r.body, W.ENTRY_OUT_SIZE)[0]
        return r, nodeid, fh

    def open(self, nodeid, flags=0):
        r = self.call(W.OPEN, nodeid, W.OPEN_IN.pack(flags, 0))
        return r, (W.OPEN_OUT.unpack_from(r.body)[0] if r.error == 0 else None)

    def write(self, nodeid, fh, offset, data):
        return self.call(W.WRITE, nodeid, W.WRITE_IN.pack(fh, offset, len(data), 0, 0, 0, 0),
                         data=data)

    def read(self, nodeid, fh, offset, size):
        return self.call(W.READ, nodeid, W.READ_IN.pack(fh, offset, size, 0, 0, 0, 0),
                         out_size=size + 16)

    def release(self, nodeid, fh):
        return self.call(W.RELEASE, nodeid, W.RELEASE_IN.pack(fh, 0, 0, 0))

    def mkdir(self, name, parent=1, mode=0o755):
        return self.call(W.MKDIR, parent, W.MKDIR_IN.pack(mode, 0) + name + b"\0")

    def symlink(self, name, target, parent=1):
        return self.call(W.SYMLINK, parent, name + b"\0" + target + b"\0")

    def getattr(self, nodeid):
        return self.call(W.GETATTR, nodeid, W.GETATTR_IN.pack(0, 0, 0))

    def forget(self, nodeid, n):
        return self.call(W.FORGET, nodeid, W.FORGET_IN.pack(n), out_size=0, queue=0)

    def readdir(self, nodeid, plus=False, size=4096):
        r, fh = None, W.OPEN_OUT.unpack_from(
            self.call(W.OPENDIR, nodeid, W.OPEN_IN.pack(0, 0)).body)[0]
        names, offset = [], 0
        while True:
            r = self.call(W.READDIRPLUS if plus else W.READDIR, nodeid,
                          W.READ_IN.pack(fh, offset, size, 0, 0, 0, 0), out_size=size + 16)
            assert r.error == 0, r.error
            if not r.body:
                break
            pos = 0
            while pos < len(r.body):
                nodeid_seen = None
                if plus:
                    nodeid_seen = W.ENTRY_OUT_HEAD.unpack_from(r.body, pos)[0]
                    pos += W.ENTRY_OUT_SIZE
                ino, offset, namelen, kind = W.DIRENT_HEAD.unpack_from(r.body, pos)
                name = r.body[pos + 24:pos + 24 + namelen]
                names.append((name, kind, nodeid_seen))
                pos += W.dirent_size(name)
        self.call(W.RELEASEDIR, nodeid, W.RELEASE_IN.pack(fh, 0, 0, 0))
        return names


