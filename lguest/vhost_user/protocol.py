"""The vhost-user wire format: message headers and payloads, packed and parsed.

#L:700 vhost-user moves a virtio device out of the VMM and into another process. The
# front-end (QEMU, Cloud Hypervisor, crosvm, or User-Mode Linux's virtio_uml driver)
# keeps the guest; the back-end (us) keeps the device. They talk over a unix socket in
# small messages, each a 12-byte header -- request, flags, payload size, all u32
# little-endian -- and a payload whose shape the request fixes. File descriptors (the
# guest's memory, the kick and call eventfds) travel beside the bytes as SCM_RIGHTS.
# The guest's memory is shared, not copied: the front-end sends its regions' fds once
# (SET_MEM_TABLE) and afterwards only addresses, exactly as a PCI guest only writes
# ring addresses to registers. So from the ring onwards everything is the code the
# PCI transport uses (L:200, L:300); what this package adds is the transport.
#
# This module is sans-I/O: bytes in, typed values out, and the reverse for replies and
# for the test front-end. Every size is checked here, so the message handlers (L:720)
# never see a short or oversized payload.
"""

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import GuestError

# Header flags (vhost-user.rst, "Header"): bits 0-1 the version, which must be 1;
# bit 2 marks a reply; bit 3 asks for a reply (REPLY_ACK).
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

# Front-end requests.
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SET_BACKEND_REQ_FD = 21
GET_CONFIG = 24
SET_CONFIG = 25
RESET_DEVICE = 34
GET_MAX_MEM_SLOTS = 36

REQUEST_NAMES = {number: name for name, number in (
    ("GET_FEATURES", 1), ("SET_FEATURES", 2), ("SET_OWNER", 3), ("RESET_OWNER", 4),
    ("SET_MEM_TABLE", 5), ("SET_LOG_BASE", 6), ("SET_LOG_FD", 7), ("SET_VRING_NUM", 8),
    ("SET_VRING_ADDR", 9), ("SET_VRING_BASE", 10), ("GET_VRING_BASE", 11),
    ("SET_VRING_KICK", 12), ("SET_VRING_CALL", 13), ("SET_VRING_ERR", 14),
    ("GET_PROTOCOL_FEATURES", 15), ("SET_PROTOCOL_FEATURES", 16), ("GET_QUEUE_NUM", 17),
    ("SET_VRING_ENABLE", 18), ("SET_BACKEND_REQ_FD", 21), ("GET_CONFIG", 24),
    ("SET_CONFIG", 25), ("RESET_DEVICE", 34), ("GET_MAX_MEM_SLOTS", 36))}

# Back-end requests (on the channel SET_BACKEND_REQ_FD hands us).
BACKEND_CONFIG_CHANGE_MSG = 2

# Virtio feature bit 30, unused by virtio itself: "this back-end speaks protocol features".
F_PROTOCOL_FEATURES = 30

# Protocol feature bits.
PROTOCOL_F_MQ = 0
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_BACKEND_REQ = 5
PROTOCOL_F_CONFIG = 9
PROTOCOL_F_RESET_DEVICE = 13

# The u64 of SET_VRING_KICK/CALL/ERR: bits 0-7 the ring, bit 8 "no fd follows".
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

MAX_MEM_REGIONS = 8          # VHOST_MEMORY_BASELINE_NREGIONS
MAX_CONFIG_SIZE = 256        # VHOST_USER_MAX_CONFIG_SIZE
MAX_PAYLOAD = 4096           # larger than any message we accept; a bigger size is garbage
MAX_FDS = MAX_MEM_REGIONS

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")     # index, flags, desc, used, avail, log
MEM_TABLE_HEAD = struct.Struct("<II")     # nregions, padding
MEM_REGION = struct.Struct("<QQQQ")       # guest_addr, size, user_addr, mmap_offset
CONFIG_HEAD = struct.Struct("<III")       # offset, size, flags


class ProtocolError(GuestError):
    """The front-end sent something that is not a well-formed message: the connection
    can no longer be trusted to be in step, so it is closed."""


class RequestError(GuestError):
    """A well-formed request we cannot honour (bad ring index, memory that does not
    map, ...). Reported with a failure status when the front-end asked for a reply."""


@dataclass
class Message:
    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list = field(default_factory=list)

    @property
    def name(self):
        return REQUEST_NAMES.get(self.request, f"request {self.request}")

    @property
    def need_reply(self):
        return bool(self.flags & FLAG_NEED_REPLY)


class MemRegion(NamedTuple):
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int


class VringAddr(NamedTuple):
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


class ConfigAccess(NamedTuple):
    offset: int
    size: int
    flags: int
    data: bytes


def parse_header(raw):
    """(request, flags, size) from 12 bytes, checking the version and the size."""
    request, flags, size = HEADER.unpack(raw)
    if flags & VERSION_MASK != VERSION:
        raise ProtocolError("unsupported vhost-user version", detail=f"flags {flags:#x}")
    if size > MAX_PAYLOAD:
        raise ProtocolError("message too large", detail=f"payload of {size} bytes")
    return request, flags, size


def _exact(msg, layout):
    if len(msg.payload) != layout.size:
        raise ProtocolError("bad message size",
                            detail=f"{msg.name}: {len(msg.payload)} bytes, expected {layout.size}")
    return layout.unpack(msg.payload)


def decode_u64(msg):
    return _exact(msg, U64)[0]


def decode_state(msg):
    """SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE: (index, num)."""
    return _exact(msg, VRING_STATE)


def decode_vring_addr(msg):
    return VringAddr(*_exact(msg, VRING_ADDR))


def decode_vring_fd(msg):
    """SET_VRING_KICK/CALL/ERR: (index, fd or None). The fd is taken out of msg.fds."""
    value = decode_u64(msg)
    if value & ~(VRING_INDEX_MASK | VRING_NOFD_MASK):
        raise ProtocolError("bad vring fd message", detail=f"{msg.name}: u64 {value:#x}")
    index = value & VRING_INDEX_MASK
    if value & VRING_NOFD_MASK:
        return index, None
    return index, take_fd(msg)


def take_fd(msg):
    if not msg.fds:
        raise ProtocolError("missing file descriptor", detail=msg.name)
    return msg.fds.pop(0)


def decode_mem_table(msg):
    """SET_MEM_TABLE: the regions, one fd per region in msg.fds.

    virtio_uml declares room for 2 regions and QEMU for 8, so the payload may be
    longer than the regions in use, but never shorter, and never past 8."""
    if len(msg.payload) < MEM_TABLE_HEAD.size:
        raise ProtocolError("bad message size", detail=f"{msg.name}: {len(msg.payload)} bytes")
    count, _ = MEM_TABLE_HEAD.unpack_from(msg.payload)
    needed = MEM_TABLE_HEAD.size + count * MEM_REGION.size
    if not 1 <= count <= MAX_MEM_REGIONS or len(msg.payload) < needed \
            or len(msg.payload) > MEM_TABLE_HEAD.size + MAX_MEM_REGIONS * MEM_REGION.size:
        raise ProtocolError("bad memory table", detail=f"{count} regions in {len(msg.payload)} bytes")
    if len(msg.fds) < count:
        raise ProtocolError("missing file descriptor",
                            detail=f"{msg.name}: {count} regions, {len(msg.fds)} fds")
    regions = [MemRegion(*MEM_REGION.unpack_from(msg.payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size))
               for i in range(count)]
    fds, msg.fds[:] = msg.fds[:count], msg.fds[count:]
    return regions, fds


def decode_config(msg):
    """GET_CONFIG/SET_CONFIG: offset, size, flags, then `size` bytes."""
    if len(msg.payload) < CONFIG_HEAD.size:
        raise ProtocolError("bad message size", detail=f"{msg.name}: {len(msg.payload)} bytes")
    offset, size, flags = CONFIG_HEAD.unpack_from(msg.payload)
    data = msg.payload[CONFIG_HEAD.size:]
    if size > MAX_CONFIG_SIZE or len(data) != size:
        raise ProtocolError("bad config message", detail=f"size {size}, {len(data)} bytes follow")
    return ConfigAccess(offset, size, flags, bytes(data))


# -- building messages (replies, and requests for the test front-end) ------------------

def encode(request, payload=b"", flags=VERSION):
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request, payload=b""):
    return encode(request, payload, VERSION | FLAG_REPLY)


def pack_u64(value):
    return U64.pack(value)


def pack_state(index, num):
    return VRING_STATE.pack(index, num)


def pack_vring_addr(index, desc, used, avail, flags=0, log=0):
    return VRING_ADDR.pack(index, flags, desc, used, avail, log)


def pack_mem_table(regions, declared=MAX_MEM_REGIONS):
    """`declared` slots of room, as the sender's struct has (virtio_uml: 2, QEMU: 8)."""
    body = b"".join(MEM_REGION.pack(*r) for r in regions)
    body += bytes(MEM_REGION.size * max(0, declared - len(regions)))
    return MEM_TABLE_HEAD.pack(len(regions), 0) + body


def pack_config(offset, data, flags=0, size=None):
    size = len(data) if size is None else size
    return CONFIG_HEAD.pack(offset, size, flags) + bytes(data)
