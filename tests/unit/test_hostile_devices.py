"""Hostile device requests through the PCI transport: block requests of any type, at
any sector (past the end, overflowing 64-bit byte offsets), with any buffer layout
(no status byte, zero-length buffers, huge reads); net frames of every size in both
directions; console floods. Strict: only GuestError; lenient: never an exception and
the device needs a reset. Always: no host access past the image's end, the image never
grows, every status byte one of the spec's.

test_dev_block.py checks a model of legal mixes; test_virtqueue_hostile.py random ring
bytes; this fills the device-request gap."""

import gc
import os
import struct
import tempfile

from hypothesis import example, given, settings, strategies as st
from hypothesis_budget import examples

from lguest.devices.block import BlockDevice
from lguest.devices.console import ConsoleDevice
from lguest.devices.net import NetDevice
from lguest.driver.vring import DriverError
from lguest.errors import GuestError
from lguest.host.block import FileStore
from lguest.virtio import STATUS_DEVICE_NEEDS_RESET
from test_dev_transport import Guest

# CI: 100 per property; scripts/fuzz-campaign (HYPOTHESIS_PROFILE=long): 5,000.
EXAMPLES = examples(100)          # the long profile's 5,000 in a campaign
SECTORS = 32
SECTOR = 512


class GuardedStore(FileStore):
    """A FileStore that fails the test on any host access past the image's end."""

    def readv_at(self, offset, views):
        self._guard(offset, views)
        return super().readv_at(offset, views)

    def writev_at(self, offset, views):
        self._guard(offset, views)
        return super().writev_at(offset, views)

    def _guard(self, offset, views):
        length = sum(v.nbytes for v in views)
        if offset < 0 or offset + length > self.size:
            raise AssertionError(f"host access {offset}+{length} past the image ({self.size})")


_image_dir = tempfile.mkdtemp(prefix="hostile-")
IMAGE = os.path.join(_image_dir, "disk.img")
with open(IMAGE, "wb") as _f:
    _f.write(bytes(SECTORS * SECTOR))

sectors = st.one_of(st.integers(0, SECTORS + 2),
                    st.sampled_from([SECTORS - 1, SECTORS, (1 << 64) - 1, (1 << 55),
                                     (1 << 64) // SECTOR, (1 << 64) // SECTOR - 1]),
                    st.integers(0, (1 << 64) - 1))
kinds = st.one_of(st.sampled_from([0, 1, 4, 8, 11, 13]), st.integers(0, (1 << 32) - 1))
lengths = st.one_of(st.integers(0, 1100), st.sampled_from([SECTOR, SECTOR + 1, 4096, 16400]))
request = st.tuples(kinds, sectors, st.integers(0, 1200),
                    st.lists(lengths, max_size=4), st.booleans())


def serve(guest, handle, qi, readable, writable, token=None):
    """Add one chain and kick; return what the device used (this chain or earlier ones),
    or None if our test driver refused the chain."""
    queue = handle.queue(qi)
    try:
        queue.add_buffer(readable, writable, token=token)
    except DriverError:
        return None                     # our test driver refuses (no buffers at all)
    handle.kick(qi)
    return queue.collect()


def bring_back(handle):
    handle.negotiate()
    handle.setup_queues()
    handle.driver_ok()


@settings(max_examples=EXAMPLES)
@given(st.lists(request, min_size=1, max_size=8), st.booleans())
def test_hostile_block_requests(reqs, lenient):
    store = GuardedStore(IMAGE)
    guest = Guest(BlockDevice(store, serial="hostile"))
    transport = guest.transports[0]
    transport.set_lenient(lenient)
    (h,) = guest.handles
    try:
        for kind, sector, data_len, writable, short_header in reqs:
            header = struct.pack("<IIQ", kind & 0xFFFFFFFF, 0, sector)
            if short_header:
                header = header[:data_len % 16]
            readable = [header] + ([bytes(data_len)] if data_len else [])
            try:
                used = serve(guest, h, 0, readable, writable, token=tuple(writable))
            except GuestError:
                assert not lenient, "lenient mode let a GuestError out"
                bring_back(h)
                continue
            if transport.broken is not None:
                assert lenient and h.get_status() & STATUS_DEVICE_NEEDS_RESET
                bring_back(h)
                continue
            for u in used or ():
                # The device wrote no more than the guest offered (status included).
                assert 1 <= u.len <= sum(u.token), (u.len, u.token)
    finally:
        gc.collect()        # a caught strict GuestError's frames may still hold guest views
        guest.close()
        store.close()
    assert os.path.getsize(IMAGE) == SECTORS * SECTOR


class FakeTap:
    """A tap in memory: frames queued for the guest, frames the guest sent."""

    def __init__(self, frames=()):
        self.incoming = list(frames)
        self.sent = []

    def will_block(self):
        return not self.incoming

    def readv(self, views):
        frame = self.incoming.pop(0)
        n = 0
        for v in views:
            chunk = frame[n:n + v.nbytes]
            v[:len(chunk)] = chunk
            n += len(chunk)
        return n

    def writev(self, views):
        self.sent.append(b"".join(bytes(v) for v in views))
        return len(self.sent[-1])

    def close(self):
        pass


frame_sizes = st.one_of(st.integers(0, 1600), st.sampled_from([0, 1, 11, 12, 13, 1514, 1526,
                                                               9000, 65535, 65550]))


@settings(max_examples=EXAMPLES)
@given(st.lists(frame_sizes, max_size=6), st.lists(st.lists(st.integers(0, 2000), max_size=3),
                                                     max_size=6),
       st.lists(frame_sizes, max_size=6), st.booleans())
# Found by CI's random seed: an empty host frame makes the first rx chain go back
# unused; the next kick fills it, so its used entry arrives with the second chain's.
@example(tx_sizes=[], rx_layouts=[[1], [0]], host_sizes=[0, 1], lenient=False)
def test_hostile_net_frames_of_every_size(tx_sizes, rx_layouts, host_sizes, lenient):
    tap = FakeTap([bytes([n & 0xFF]) * n for n in host_sizes])
    guest = Guest(NetDevice(tap, mac="52:54:00:00:00:09"))
    transport = guest.transports[0]
    transport.set_lenient(lenient)
    (h,) = guest.handles
    try:
        for n in tx_sizes:
            try:
                used = serve(guest, h, 1, [bytes(n)] if n else [], [])
            except GuestError:
                assert not lenient
                bring_back(h)
                continue
            if used:
                assert tap.sent[-1] == bytes(n)
        for i, layout in enumerate(rx_layouts):
            try:
                used = serve(guest, h, 0, [], layout, token=i)
            except GuestError:
                assert not lenient
                bring_back(h)
                continue
            # A chain given back for want of a frame may be used by a later kick:
            # each used buffer is checked against its own chain.
            for u in used or ():
                assert u.len <= sum(rx_layouts[u.token]), (u, rx_layouts[u.token])
    finally:
        gc.collect()
        guest.close()


class Sink:
    def __init__(self):
        self.bytes = 0

    def write(self, views):
        self.bytes += sum(v.nbytes for v in views)


@settings(max_examples=examples(50, long=1000))
@given(st.lists(st.integers(0, 70000), min_size=1, max_size=40))
def test_console_flood(sizes):
    sink = Sink()
    guest = Guest(ConsoleDevice(sink))
    (h,) = guest.handles
    queue = h.queue(1)
    sent = 0
    try:
        for n in sizes:
            if n == 0 or queue.num_free == 0:
                continue
            queue.add_buffer([bytes(n)], [])
            sent += n
        h.kick(1)
        queue.collect()
    finally:
        guest.close()
    assert sink.bytes == sent
