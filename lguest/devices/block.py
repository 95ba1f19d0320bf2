"""The virtio block device: requests read and write a "store" (a file, in the end).

#L:340 The Disk. It has one virtqueue, "request", and the guest puts a request on it
# as one chain: a 16-byte header it wrote (struct virtio_blk_outhdr: u32 type,
# u32 reserved, u64 sector), the data (written by the guest for a write, to be
# filled by us for a read), and one status byte for us to write at the very end.
# For historical reasons, block operations are expressed in 512-byte "sectors".
#
# The device knows nothing of files: it is handed a `store` with `size`,
# `readv_at(offset, views)`, `writev_at(offset, views)` and `flush()`, and passes it
# the guest's buffers as memoryviews, so the bytes go straight from guest memory to
# the file and back (host/block.py does it with preadv/pwritev) without a copy here.
"""

import logging
import struct

from ..errors import GuestError
from ..virtio import F_RING_INDIRECT_DESC, ID_BLOCK, bit
from .base import VirtioDevice, iov_length, iov_take

log = logging.getLogger("lguest.block")

SECTOR_SIZE = 512

# 5.2.3: Feature bits.
F_SEG_MAX = 2
F_RO = 5
F_FLUSH = 9
F_MQ = 12

# 5.2.6: Request types and status values.
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

OUTHDR = struct.Struct("<IIQ")          # type, reserved (ioprio), sector
ID_BYTES = 20                           # VIRTIO_BLK_ID_BYTES
QUEUE_SIZE = 256

# struct virtio_blk_config up to num_queues: capacity u64, size_max u32, seg_max u32,
# geometry (u16, u8, u8), blk_size u32, topology (u8, u8, u16, u32), writeback u8,
# unused u8, num_queues u16.
CONFIG_SIZE = 36
CONFIG_CAPACITY = 0
CONFIG_SEG_MAX = 12
CONFIG_NUM_QUEUES = 34
MAX_QUEUES = 64               # what we accept for num_queues: any vCPU count we will meet


class BlockDevice(VirtioDevice):
    """virtio-blk over an injected store. `serial` (up to 20 bytes) answers GET_ID."""

    device_id = ID_BLOCK
    queue_names = ("request",)
    queue_max_size = QUEUE_SIZE

    def __init__(self, store, *, read_only=False, serial=None, name="block", num_queues=1):
        super().__init__(name)
        #L:347 Multiqueue (5.2.3, VIRTIO_BLK_F_MQ): num_queues request queues, each
        # served on its own thread by the transport (a ring thread per queue over
        # vhost-user, L:730). Requests on different queues share nothing but the store,
        # whose preadv/pwritev at offsets need no lock. One queue keeps the seed's
        # layout (no MQ feature, queue "request") so traces and PCI stay as they were.
        if not 1 <= num_queues <= MAX_QUEUES:
            raise ValueError(f"num_queues must be 1..{MAX_QUEUES}, not {num_queues}")
        if num_queues > 1:
            self.queue_names = tuple(f"request{i}" for i in range(num_queues))
        self.store = store
        self.read_only = read_only
        self.serial = serial.encode()[:ID_BYTES] if isinstance(serial, str) else serial
        #L:341 The guest sees whole sectors only: a file whose length is not a multiple
        # of 512 has a tail the guest can neither read nor write. As in the seed we
        # tell the guest not to put more than queue size - 2 data buffers in a request:
        # two descriptors are taken by the header and the status byte. Beyond the
        # seed (which offered it for the network only) we take indirect descriptors:
        # a request of many segments then costs one slot of the ring, not 2 + segments.
        self.capacity = store.size // SECTOR_SIZE
        self.end = self.capacity * SECTOR_SIZE
        self.features = (bit(F_SEG_MAX) | bit(F_FLUSH) | bit(F_RING_INDIRECT_DESC)
                         | (bit(F_RO) if read_only else 0) | (bit(F_MQ) if num_queues > 1 else 0))
        self.config = bytearray(CONFIG_SIZE)
        struct.pack_into("<Q", self.config, CONFIG_CAPACITY, self.capacity)
        if num_queues > 1:        # "only exists if VIRTIO_BLK_F_MQ is set"
            struct.pack_into("<H", self.config, CONFIG_NUM_QUEUES, num_queues)
        struct.pack_into("<I", self.config, CONFIG_SEG_MAX, QUEUE_SIZE - 2)
        self.stats = {"read": 0, "write": 0, "flush": 0, "ioerr": 0}

    def set_seg_max(self, seg_max):
        """The most data buffers per request the driver may use (L:341): a transport
        that cannot know the ring's size yet says it (vhost-user, L:727)."""
        struct.pack_into("<I", self.config, CONFIG_SEG_MAX, seg_max)

    def process(self, queue_index):
        queue = self.queues[queue_index]
        used = False
        while (chain := queue.pop()) is not None:
            try:
                written = self.serve(chain)
            except GuestError as e:
                raise e.where(self.name, self.queue_names[queue_index])
            queue.push(chain.head, written)
            used = True
        return used

    def serve(self, chain):
        """Carry out one request; return the number of bytes written into the chain."""
        readable = chain.readable
        if readable and readable[0].nbytes == OUTHDR.size:
            header, data_out = readable[0], readable[1:]    # Linux's: a buffer of its own
        else:
            header, data_out = iov_take(readable, OUTHDR.size)
            if len(header) < OUTHDR.size:
                raise GuestError("iovec too short!", detail=f"block header of {len(header)} bytes")
        #L:342 The status byte is the last byte of the last writable buffer that has
        # any room, exactly as the seed finds it; the rest of the writable buffers are
        # the data of a read. No room at all is the guest's fault.
        status, data_in = split_status(chain.writable)
        if status is None:
            raise GuestError("Bad virtblk cmd with no room for status")
        kind, _, sector = OUTHDR.unpack_from(header)
        offset = sector * SECTOR_SIZE
        if kind == T_IN:
            code, n = self.read(offset, data_in)
        elif kind == T_OUT:
            code, n = self.write(offset, data_out), 0
        elif kind == T_FLUSH:
            code, n = self.flush(), 0
        elif kind == T_GET_ID:
            code, n = self.get_id(data_in)
        else:
            #L:343 The seed tested type bits (type & OUT meant write, anything else
            # without FLUSH was a read). We match types exactly and answer any type
            # we do not implement with VIRTIO_BLK_S_UNSUPP, which is what Linux's
            # virtio_blk turns into "operation not supported" for that request.
            code, n = S_UNSUPP, 0
        status[0] = code
        if code == S_IOERR:
            self.stats["ioerr"] += 1
        return n + 1

    def check_range(self, rule, offset, length):
        #L:344 A request reaching past the end of the disk is the guest's fault
        # ("Write past end" in the seed). The seed found out *after* writing and
        # truncated the file back; we check first, so the file is never extended and
        # nothing past the end is read.
        if offset + length > self.end:
            raise GuestError(rule, detail=f"{offset}+{length} > {self.end}")

    def read(self, offset, views):
        length = iov_length(views)
        self.check_range("Read past end", offset, length)
        try:
            n = self.store.readv_at(offset, views)
        except OSError as e:
            log.warning("%s: read of %d bytes at %d failed: %s", self.name, length, offset, str(e))
            return S_IOERR, 0
        self.stats["read"] += 1
        return S_OK, n

    def write(self, offset, views):
        length = iov_length(views)
        self.check_range("Write past end", offset, length)
        if self.read_only:
            #L:345 Beyond the seed: a read-only image. 5.2.6.2: "A device MUST set
            # the status byte to VIRTIO_BLK_S_IOERR for a write request if the
            # VIRTIO_BLK_F_RO feature if offered, and MUST NOT write any data."
            # The file was opened read-only too, so nothing can slip through.
            return S_IOERR
        try:
            self.store.writev_at(offset, views)
        except OSError as e:
            log.warning("%s: write of %d bytes at %d failed: %s", self.name, length, offset, str(e))
            return S_IOERR
        self.stats["write"] += 1
        return S_OK

    def flush(self):
        # Flush is fdatasync(): only then may the guest count on what it wrote.
        try:
            self.store.flush()
        except OSError as e:
            log.warning("%s: flush failed: %s", self.name, str(e))
            return S_IOERR
        self.stats["flush"] += 1
        return S_OK

    def get_id(self, views):
        #L:346 VIRTIO_BLK_T_GET_ID: the serial, 20 bytes (VIRTIO_BLK_ID_BYTES),
        # zero-padded, so a shorter serial reads as a NUL-terminated string and a
        # 20-byte one has no terminator, as Linux's serial attribute expects.
        if self.serial is None:
            return S_UNSUPP, 0
        ident = self.serial.ljust(ID_BYTES, b"\0")
        n = 0
        for v in views:
            chunk = ident[n:n + v.nbytes]
            v[:len(chunk)] = chunk
            n += len(chunk)
            if n == ID_BYTES:
                break
        return S_OK, n


def split_status(writable):
    """(one-byte view for the status, the writable buffers before it) or (None, [])."""
    if writable and writable[-1].nbytes == 1:         # Linux's: a buffer of its own
        return writable[-1], writable[:-1]
    for i in range(len(writable) - 1, -1, -1):
        v = writable[i]
        if v.nbytes > 0:
            return v[v.nbytes - 1:], writable[:i] + ([v[:v.nbytes - 1]] if v.nbytes > 1 else [])
    return None, []
