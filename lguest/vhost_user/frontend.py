"""A vhost-user front-end in Python: plays QEMU or virtio_uml for tests and benchmarks.

#L:750 To test the back-end without a VMM we need the other side, honestly: guest
# memory in a memfd shared by fd (several regions of it, at file offsets, with user
# addresses that differ from guest-physical ones, as QEMU's do), the messages with
# their fds, rings laid out and filled by the same driver-side code the PCI tests use
# (L:280), kicks written to eventfds and interrupts read from them. Nothing here is
# used by the server; it only speaks the same protocol (L:700).
"""

import array
import os
import select
import socket

from ..driver.vring import DriverQueue, GuestAllocator
from ..errors import LguestError
from . import protocol as P
from .memory import RegionMemory
from .rings import ONE

USER_OFFSET = 0x7F00_0000_0000      # where "our process" has guest memory mapped


class FrontendError(LguestError):
    """The back-end answered wrongly, failed a request, or hung up."""


class FrontQueue:
    """A DriverQueue plus the two eventfds the back-end got for it."""

    def __init__(self, index, driver_queue):
        self.index = index
        self.ring = driver_queue
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def kick(self):
        os.write(self.kick_fd, ONE)

    def wait_call(self, timeout=5.0):
        """Wait for an interrupt; True if one came."""
        ready, _, _ = select.select([self.call_fd], [], [], timeout)
        if not ready:
            return False
        try:
            os.read(self.call_fd, 8)
        except BlockingIOError:
            return False
        return True

    def drain_calls(self):
        """Forget interrupts already signalled (their buffers may be collected)."""
        try:
            os.read(self.call_fd, 8)
        except BlockingIOError:
            pass

    def ring_wait(self, timeout=5.0):
        """The used buffers there are now, or after the next interrupt."""
        got = self.ring.collect()
        if not got and self.wait_call(timeout):
            got = self.ring.collect()
        return got

    def wait_used(self, count=1, timeout=5.0):
        """Collect `count` used buffers, waiting for interrupts as needed."""
        got = self.ring.collect()
        while len(got) < count:
            if not self.wait_call(timeout):
                raise FrontendError(f"vq {self.index}: {len(got)} of {count} buffers back "
                                    f"after {timeout} s")
            got += self.ring.collect()
        return got

    def close(self):
        os.close(self.kick_fd)
        os.close(self.call_fd)


class Frontend:
    """One connection to a back-end. `regions` are (guest address, size) pairs; they
    live in one memfd, back to back, each at its own file offset."""

    def __init__(self, sock, regions=((0, 4 << 20),), *, user_offset=USER_OFFSET):
        self.sock = sock
        self.memfd = os.memfd_create("vhost-user-guest", os.MFD_CLOEXEC)
        self.table, offset = [], 0
        for guest_addr, size in regions:
            self.table.append(P.MemRegion(guest_addr, size, guest_addr + user_offset, offset))
            offset += size
        os.ftruncate(self.memfd, offset)
        self.memory = RegionMemory(self.table, [self.memfd] * len(self.table))
        first = self.table[0]
        self.allocator = GuestAllocator(first.guest_addr, first.guest_addr + first.size)
        self.queues = {}
        self.protocol_features = 0

    @classmethod
    def connect(cls, path, **kw):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock, **kw)

    # -- messages ------------------------------------------------------------------------
    def send(self, request, payload=b"", fds=(), flags=P.VERSION):
        data = P.encode(request, payload, flags)
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendall(data)

    def receive(self, request):
        header = self._recv(P.HEADER.size)
        got, flags, size = P.HEADER.unpack(header)
        if got != request or flags != P.VERSION | P.FLAG_REPLY:
            raise FrontendError(f"reply {got} flags {flags:#x} to request {request}")
        return self._recv(size)

    def _recv(self, length):
        buf = b""
        while len(buf) < length:
            data = self.sock.recv(length - len(buf))
            if not data:
                raise FrontendError("back-end closed the connection")
            buf += data
        return buf

    def request(self, request, payload=b"", fds=()):
        """A request with no answer of its own: ask for an ack when REPLY_ACK is on."""
        ack = bool(self.protocol_features & (1 << P.PROTOCOL_F_REPLY_ACK))
        self.send(request, payload, fds, P.VERSION | (P.FLAG_NEED_REPLY if ack else 0))
        if ack:
            status = P.U64.unpack(self.receive(request))[0]
            if status:
                raise FrontendError(f"{P.REQUEST_NAMES.get(request, request)} failed: status {status}")

    def ask(self, request, payload=b""):
        self.send(request, payload)
        return self.receive(request)

    def ask_u64(self, request):
        return P.U64.unpack(self.ask(request))[0]

    # -- set-up --------------------------------------------------------------------------
    def negotiate(self, features=None, protocol_features=None, *, without=0):
        """SET_OWNER, features, protocol features: what virtio_uml's probe does.
        `without`: feature bits to leave out of the offer (as QEMU's qtests do)."""
        self.request(P.SET_OWNER)
        offered = self.ask_u64(P.GET_FEATURES)
        self.features = (offered & ~without) if features is None else features
        if offered & (1 << P.F_PROTOCOL_FEATURES):
            offered_pf = self.ask_u64(P.GET_PROTOCOL_FEATURES)
            wanted = offered_pf if protocol_features is None else protocol_features
            self.request(P.SET_PROTOCOL_FEATURES, P.pack_u64(wanted))
            self.protocol_features = wanted
        self.request(P.SET_FEATURES, P.pack_u64(self.features))
        return offered

    def set_mem_table(self, declared=P.MAX_MEM_REGIONS):
        self.request(P.SET_MEM_TABLE, P.pack_mem_table(self.table, declared),
                     [self.memfd] * len(self.table))

    def user_address(self, guest_addr):
        for r in self.table:
            if r.guest_addr <= guest_addr < r.guest_addr + r.size:
                return guest_addr - r.guest_addr + r.user_addr
        raise FrontendError(f"{guest_addr:#x} is not guest memory")

    def setup_queue(self, index, size=256, *, enable=True, base=0, ring_class=DriverQueue):
        """virtio_uml's order: CALL, NUM, BASE, ADDR, then KICK and ENABLE."""
        ring = ring_class(self.memory, self.allocator, size,
                           features=self.features, start_idx=base)
        queue = self.queues[index] = FrontQueue(index, ring)
        self.request(P.SET_VRING_CALL, P.pack_u64(index), [queue.call_fd])
        self.request(P.SET_VRING_NUM, P.pack_state(index, size))
        self.request(P.SET_VRING_BASE, P.pack_state(index, base))
        self.set_vring_addr(queue)
        self.request(P.SET_VRING_KICK, P.pack_u64(index), [queue.kick_fd])
        if enable:
            self.enable(index)
        return queue

    def set_vring_addr(self, queue):
        ring = queue.ring
        self.request(P.SET_VRING_ADDR, P.pack_vring_addr(
            queue.index, self.user_address(ring.desc_addr), self.user_address(ring.used_addr),
            self.user_address(ring.avail_addr)))

    def enable(self, index, on=True):
        self.request(P.SET_VRING_ENABLE, P.pack_state(index, int(on)))

    def get_vring_base(self, index):
        got_index, base = P.VRING_STATE.unpack(self.ask(P.GET_VRING_BASE, P.pack_state(index, 0)))
        if got_index != index:
            raise FrontendError(f"GET_VRING_BASE answered for vq {got_index}, not {index}")
        return base

    def get_config(self, offset, size):
        reply = self.ask(P.GET_CONFIG, P.pack_config(offset, bytes(size)))
        off, got, _ = P.CONFIG_HEAD.unpack_from(reply)
        if (off, got) != (offset, size) or len(reply) != P.CONFIG_HEAD.size + size:
            raise FrontendError(f"GET_CONFIG answered {off}+{got} for {offset}+{size}")
        return reply[P.CONFIG_HEAD.size:]

    def close(self):
        for queue in self.queues.values():
            queue.close()
        self.queues = {}
        self.sock.close()
        self.memory.close()
        os.close(self.memfd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
