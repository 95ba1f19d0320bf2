"""Host resources that live in memory: a disk in a bytearray, a counting entropy
source, a console sink that keeps everything. They have the same narrow interfaces as
the real ones in lguest/host/ (L:300), so simulations, trace replays and property tests
run devices deterministically without touching a file."""


class MemoryStore:
    """A disk image in a bytearray, with BlockDevice's store interface."""

    def __init__(self, data, read_only=False):
        self.data = bytearray(data)
        self.size = len(self.data)
        self.read_only = read_only

    def readv_at(self, offset, views):
        total = 0
        for v in views:
            chunk = self.data[offset + total:offset + total + len(v)]
            v[:len(chunk)] = chunk
            total += len(chunk)
        return total

    def writev_at(self, offset, views):
        total = 0
        for v in views:
            self.data[offset + total:offset + total + len(v)] = v
            total += len(v)
        return total

    def flush(self):
        pass

    def close(self):
        pass


class CountingEntropy:
    """A predictable entropy source (bytes counting up), so runs can be replayed."""

    def __init__(self):
        self.next = 0

    def readv(self, views):
        total = 0
        for v in views:
            v[:] = bytes((self.next + i) & 0xFF for i in range(len(v)))
            self.next += len(v)
            total += len(v)
        return total

    def close(self):
        pass


class BufferSink:
    """A console sink that keeps everything written, in order (and may pass it on)."""

    def __init__(self, callback=None):
        self.data = bytearray()
        self.callback = callback

    def write(self, views):
        total = 0
        for v in views:
            self.data += v
            if self.callback:
                self.callback(bytes(v))
            total += len(v)
        return total

    def close(self):
        pass
