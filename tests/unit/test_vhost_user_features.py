"""Issue 15, what QEMU on its defaults needs from the back-end: EVENT_IDX and
INDIRECT_DESC offered by every device and honoured both ways, features set beyond
the offer taken (as libvhost-user does) rather than refused unheard, and a block
seg_max that fits QEMU's 128-entry ring, as qemu-storage-daemon reports."""

import struct
import time

import pytest

from lguest import virtio
from lguest.devices.block import CONFIG_SEG_MAX, QUEUE_SIZE, BlockDevice
from lguest.devices.console import ConsoleDevice
from lguest.devices.net import NetDevice
from lguest.devices.rng import RngDevice
from lguest.vhost_user import protocol as P
from lguest.vhost_user.backend import VhostUserBackend
from test_hostile_devices import FakeTap
from test_vhost_user_backend import SECTOR, Session, Urandom, disk  # noqa: F401 - fixtures

EVENT_IDX, INDIRECT = virtio.bit(virtio.F_RING_EVENT_IDX), virtio.bit(virtio.F_RING_INDIRECT_DESC)
# What QEMU 7.2's vhost-user-rng sent, unasked: VERSION_1, PROTOCOL_FEATURES, both ring features.
QEMU_RNG_FEATURES = 0x170000000


def devices(store):
    return {"block": BlockDevice(store), "rng": RngDevice(Urandom()),
            "console": ConsoleDevice(sink=None), "net": NetDevice(FakeTap())}


@pytest.mark.parametrize("kind", ["block", "rng", "console", "net"])
def test_every_device_offers_event_idx_and_indirect_descriptors(disk, kind):
    _, store, _ = disk
    backend = VhostUserBackend(devices(store)[kind])
    assert backend.offered_features() & (EVENT_IDX | INDIRECT) == EVENT_IDX | INDIRECT


def without_reply_ack(fe, features):
    """Negotiate as QEMU does: SET_FEATURES with no reply asked for."""
    fe.request(P.SET_OWNER)
    fe.ask_u64(P.GET_FEATURES)
    offered_pf = fe.ask_u64(P.GET_PROTOCOL_FEATURES)
    fe.request(P.SET_PROTOCOL_FEATURES, P.pack_u64(offered_pf & ~(1 << P.PROTOCOL_F_REPLY_ACK)))
    fe.send(P.SET_FEATURES, P.pack_u64(features))
    fe.features = features


def test_rng_on_qemus_features_serves_every_request():
    """Before: "over-accepted features", the ring ran without EVENT_IDX while the
    driver used it, never wrote avail_event, and the driver's second read never kicked."""
    with Session(VhostUserBackend(RngDevice(Urandom())), regions=((0, 1 << 20),)) as s:
        fe = s.fe
        without_reply_ack(fe, QEMU_RNG_FEATURES)
        fe.set_mem_table()
        q = fe.setup_queue(0, 8)
        for _ in range(5):
            q.ring.add_buffer([], [64])
            if q.ring.kick_prepare():          # the driver kicks only when asked to
                q.kick()
            (used,) = q.wait_used(timeout=3)
            assert used.len == 64
        assert s.backend.negotiated & EVENT_IDX


def test_event_idx_suppresses_interrupts_and_asks_for_the_next_kick(disk):
    _, store, pattern = disk
    with Session(VhostUserBackend(BlockDevice(store))) as s:
        fe = s.fe
        fe.negotiate()                                   # everything offered: EVENT_IDX too
        assert fe.features & EVENT_IDX
        fe.set_mem_table()
        q = fe.setup_queue(0, 8)
        ring = q.ring
        # Kicks: after serving, the device says "kick me when you pass index 1".
        ring.add_buffer([struct.pack("<IIQ", 0, 0, 0)], [SECTOR, 1])
        assert ring.kick_prepare()
        q.kick()
        assert q.wait_used()[0].data[:SECTOR] == pattern[:SECTOR]
        # The interrupt goes out before the device asks for kicks again (L:315), so the
        # used entry can be seen a moment before avail_event moves.
        deadline = time.monotonic() + 2
        while fe.memory.read_u16(ring.avail_event_addr) != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert fe.memory.read_u16(ring.avail_event_addr) == 1
        # The first request's interrupt, unless wait_used already took it (the used entry
        # can be there before wait_used looks): drained, so the check below sees only
        # the second request's.
        q.wait_call(0.3)
        # Interrupts: used_event three ahead -> the next request is used silently.
        fe.memory.write_u16(ring.used_event_addr, (ring.last_used_idx + 3) & 0xFFFF)
        ring.add_buffer([struct.pack("<IIQ", 0, 0, 1)], [SECTOR, 1])
        q.kick()
        assert not q.wait_call(0.3)
        assert fe.memory.read_u16(ring.used_addr + 2) == 2        # it was served
        assert [u.data[:SECTOR] for u in ring.collect()] == [pattern[SECTOR:2 * SECTOR]]


def test_features_beyond_the_offer_are_taken_and_logged_once(disk, caplog):
    _, store, _ = disk
    with Session(VhostUserBackend(BlockDevice(store))) as s:
        fe = s.fe
        without_reply_ack(fe, QEMU_RNG_FEATURES | 1 << 60)
        without_reply_ack(fe, QEMU_RNG_FEATURES | 1 << 60)
        assert fe.ask_u64(P.GET_QUEUE_NUM) >= 1            # the session goes on
        assert s.backend.features == QEMU_RNG_FEATURES | 1 << 60
        assert caplog.text.count("beyond our offer") == 1


def test_block_seg_max_fits_qemus_ring_over_vhost_user_only(disk):
    _, store, _ = disk
    s = Session(VhostUserBackend(BlockDevice(store)))
    try:
        s.fe.negotiate()
        seg_max, = struct.unpack("<I", s.fe.get_config(CONFIG_SEG_MAX, 4))
        assert seg_max == 128 - 2                          # qemu-storage-daemon's answer
    finally:
        s.close()
    assert struct.unpack_from("<I", BlockDevice(store).config, CONFIG_SEG_MAX)[0] == QUEUE_SIZE - 2


def test_block_requests_in_indirect_tables_longer_than_the_ring(disk):
    """Linux's tables of seg_max + 2 entries on a ring smaller than that (our test
    driver keeps to 2.7.5.3.1, so the table is laid out by hand, as Linux lays it)."""
    _, store, pattern = disk
    s = Session(VhostUserBackend(BlockDevice(store)))
    try:
        fe = s.fe
        fe.negotiate()
        fe.set_mem_table()
        q = fe.setup_queue(0, 16)
        ring, mem = q.ring, fe.memory
        segments, piece = 40, SECTOR // 8                  # 42 entries in a 16-entry ring
        table, header, data, status = 0x80000, 0x90000, 0xA0000, 0xB0000
        mem.write(header, struct.pack("<IIQ", 0, 0, 0))
        entries = [(header, 16, 0)] + [(data + piece * i, piece, virtio.VRING_DESC_F_WRITE)
                                       for i in range(segments)] + [(status, 1, virtio.VRING_DESC_F_WRITE)]
        for i, (addr, length, flags) in enumerate(entries):
            more = virtio.VRING_DESC_F_NEXT if i < len(entries) - 1 else 0
            mem.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags | more, i + 1))
        mem.write(ring.desc_addr, struct.pack("<QIHH", table, 16 * len(entries),
                                              virtio.VRING_DESC_F_INDIRECT, 0))
        ring._publish(0)
        q.kick()
        assert q.wait_call(3)
        assert mem.read_u16(ring.used_addr + 2) == 1
        assert struct.unpack("<II", mem.read(ring.used_addr + 4, 8)) == (0, segments * piece + 1)
        assert mem.read(data, segments * piece) == pattern[:segments * piece]
        assert mem.read(status, 1) == b"\0" and not s.backend.errors
    finally:
        s.close()


class GatedStore:
    """A store whose reads of sector 0 wait for a gate: one queue held up."""

    def __init__(self, inner):
        import threading
        self.inner, self.size = inner, inner.size
        self.gate = threading.Event()

    def readv_at(self, offset, views):
        if offset == 0:
            assert self.gate.wait(5)
        return self.inner.readv_at(offset, views)

    def writev_at(self, offset, views):
        return self.inner.writev_at(offset, views)

    def flush(self):
        self.inner.flush()


def test_block_multiqueue_serves_each_queue_on_its_own_thread(disk):
    """QEMU -smp 2 (num-queues 2): "The maximum number of queues supported by the
    backend is 1" before. Now GET_QUEUE_NUM says 2, and a request held up on one
    queue does not hold up the other."""
    _, store, pattern = disk
    gated = GatedStore(store)
    s = Session(VhostUserBackend(BlockDevice(gated, num_queues=2)))
    try:
        fe = s.fe
        fe.negotiate()
        assert fe.protocol_features & (1 << P.PROTOCOL_F_MQ)
        assert fe.ask_u64(P.GET_QUEUE_NUM) == 2
        assert fe.features & (1 << 12)                                    # VIRTIO_BLK_F_MQ
        assert struct.unpack("<H", fe.get_config(34, 2))[0] == 2          # num_queues
        fe.set_mem_table()
        q0, q1 = fe.setup_queue(0, 8), fe.setup_queue(1, 8)
        q0.ring.add_buffer([struct.pack("<IIQ", 0, 0, 0)], [SECTOR, 1])  # waits at the gate
        q0.kick()
        q1.ring.add_buffer([struct.pack("<IIQ", 0, 0, 1)], [SECTOR, 1])
        q1.kick()
        (used,) = q1.wait_used(timeout=3)
        assert used.data[:SECTOR] == pattern[SECTOR:2 * SECTOR]
        assert q0.ring.collect() == []                                    # still held
        gated.gate.set()
        (used,) = q0.wait_used(timeout=3)
        assert used.data[:SECTOR] == pattern[:SECTOR]
    finally:
        gated.gate.set()
        s.close()


def test_one_queue_block_keeps_the_seeds_layout(disk):
    _, store, _ = disk
    device = BlockDevice(store)
    assert device.queue_names == ("request",) and not device.features & (1 << 12)
    assert bytes(device.config[34:36]) == b"\0\0"
    with pytest.raises(ValueError):
        BlockDevice(store, num_queues=0)


def test_the_cli_offers_several_block_queues_by_default(tmp_path):
    from lguest.vhost_user import cli
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    args = cli.parse_args(["--socket", "/s", f"--block={image}"])
    (served,) = cli.build(args)
    try:
        assert len(served.device.queue_names) == cli.DEFAULT_BLOCK_QUEUES > 1
        assert VhostUserBackend(served.device).offered_protocol_features() & (1 << P.PROTOCOL_F_MQ)
    finally:
        served.close()
    (served,) = cli.build(cli.parse_args(["--socket", "/s", f"--block={image}", "--queues=1"]))
    assert served.device.queue_names == ("request",)
    served.close()
    with pytest.raises(SystemExit):
        cli.parse_args(["--socket", "/s", f"--block={image}", "--queues=0"])
