"""Real Linux behaviour without Linux: replay a recorded UML boot's device traffic (L:785).

tests/data/uml-boot-block-console.trace.gz was made by scripts/record-uml-trace.py: a
real User-Mode Linux kernel's virtio_blk and virtio_console driving our vhost-user
back-end. Replaying it rebuilds the devices over memory and checks every reply, chain,
push and interrupt; the tests below also show that a changed device is caught.
"""

import hashlib
import json
import os
import socket
import struct
import threading

import pytest

from lguest.backends import tracefile
from lguest.backends.tracefile import TraceDivergence, TraceError
from lguest.devices.block import BlockDevice, F_FLUSH, S_IOERR
from lguest.vhost_user import protocol as P
from lguest.devices.inmemory import MemoryStore
from lguest.vhost_user import trace, trace_replay
from lguest.vhost_user.backend import VhostUserTransport
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import serve_connection

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
STREAM = os.path.join(DATA, "uml-boot-block-console.trace.gz")


def keep_devices(store):
    def hook(name, device):
        store[name] = device
    return hook


def test_recorded_uml_boot_replays_exactly():
    devices = {}
    summary = trace_replay.replay(STREAM, device_hook=keep_devices(devices))
    header, records = tracefile.read_trace(STREAM, kind=trace.KIND)
    # The stream is what the script says: a real boot negotiating both devices.
    assert header["kind"] == "vhost-user" and header["config"]["devices"][0]["kind"] == "block"
    names = [r["name"] for r in records if r["type"] == "message"]
    for request in ("GET_FEATURES", "SET_FEATURES", "SET_MEM_TABLE", "SET_VRING_ADDR",
                    "SET_VRING_KICK", "SET_VRING_ENABLE", "GET_CONFIG"):
        assert request in names
    assert summary["messages"] == len(names)
    assert summary["pops"] == summary["pushes"] > 10 and summary["calls"] > 0
    # The replayed devices really did the guest's work: reads, the write and its FLUSH,
    # and the console printed what the guest's command printed.
    block, console = devices["vda"], devices["hvc0"]
    assert block.stats["read"] >= 8 and block.stats["write"] >= 1 and block.stats["flush"] >= 1
    assert b"hello from hvc0" in console.sink.data
    assert b"written by the guest" in console.sink.data


def test_replay_catches_a_block_device_that_stops_offering_flush():
    def no_flush(name, device):
        if isinstance(device, BlockDevice):
            device.features &= ~(1 << F_FLUSH)
    with pytest.raises(TraceDivergence) as e:
        trace_replay.replay(STREAM, device_hook=no_flush)
    text = str(e.value)
    assert "message GET_FEATURES" in text
    assert "bits only expected: 9 (FLUSH)" in text and "bits only got: none" in text


def test_replay_catches_a_changed_status_byte_with_a_byte_diff():
    def failing_flush(name, device):
        if isinstance(device, BlockDevice):
            device.flush = lambda: S_IOERR
    with pytest.raises(TraceDivergence) as e:
        trace_replay.replay(STREAM, device_hook=failing_flush)
    text = str(e.value)
    assert "kick vda/vq0" in text
    assert "expected push head" in text
    assert "first difference at byte 0 (of 1 expected, 1 got)" in text
    assert "expected 00\n" in text and "got 01" in text


def test_replay_catches_different_disk_content():
    def other_bytes(name, device):
        if isinstance(device, BlockDevice):
            device.store.data[3] ^= 0xFF        # Linux reads sector 0 first (partitions)
    with pytest.raises(TraceDivergence) as e:
        trace_replay.replay(STREAM, device_hook=other_bytes)
    assert "first difference at byte 3 (of 4097 expected, 4097 got)" in str(e.value)


def test_a_trap_reader_refuses_a_vhost_user_stream_and_old_streams_still_read():
    with pytest.raises(TraceError, match="'vhost-user' stream"):
        tracefile.read_trace(STREAM)
    header, records = tracefile.read_trace(os.path.join(DATA, "fake-console-ro-block.trace"))
    assert "kind" not in header and records[0]["type"] == "initialize"


# -- the recorder, without UML: a Python front-end, QEMU-style addresses ----------------------

def test_recorder_round_trip_with_the_python_front_end(tmp_path):
    spec = {"name": "vdb", "kind": "block", "size": 64 * 512, "seed": 7, "read_only": False}
    device = BlockDevice(MemoryStore(trace.make_image(spec["size"], spec["seed"])), name="vdb")
    backend = VhostUserTransport(device)
    recorder = trace.TraceRecorder()
    backend.recorder = recorder.device("vdb")
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=serve_connection, args=(backend, theirs), daemon=True)
    thread.start()
    # Two regions, user addresses unlike guest-physical ones: not UML's layout.
    fe = Frontend(ours, regions=((0, 2 << 20), (16 << 20, 1 << 20)))
    try:
        fe.negotiate()
        fe.set_mem_table()
        q = fe.setup_queue(0, 64)
        q.ring.add_buffer([struct.pack("<IIQ", 1, 0, 5), b"x" * 512], [1])       # write sector 5
        q.kick()
        q.wait_used()
        q.ring.add_buffer([struct.pack("<IIQ", 0, 0, 4)], [1024, 1])             # read 4-5
        q.kick()
        assert q.wait_used()[0].data[512:1024] == b"x" * 512
        fe.get_vring_base(0)
    finally:
        fe.close()
        thread.join(5)
    path = tmp_path / "fe.trace.gz"
    digest = hashlib.sha256(device.store.data).hexdigest()
    recorder.append({"type": "end", "dev": "vdb", "state": {"image_sha256": digest}})
    recorder.write(str(path), {"config": {"devices": [spec]}})
    summary = trace_replay.replay(str(path))
    assert summary["pops"] == summary["pushes"] == 2
    # And the stream is really checked: flip one recorded byte of the read's data.
    header, records = tracefile.read_trace(str(path), kind=trace.KIND)
    for record in records:
        for event in record.get("events", []):
            if event["e"] == "push" and event["written"] == 1025:
                event["data"] = "79" + event["data"][2:]
    tracefile.write_trace(str(path), header, records, kind=trace.KIND)
    with pytest.raises(TraceDivergence, match="first difference at byte 0"):
        trace_replay.replay(str(path))


def test_a_stream_records_messages_as_parsed_with_fd_placeholders():
    _, records = tracefile.read_trace(STREAM, kind=trace.KIND)
    addr = next(r for r in records if r["type"] == "message" and r["name"] == "SET_VRING_ADDR")
    assert set(addr["fields"]) >= {"index", "desc", "used", "avail"}
    kick = next(r for r in records if r["type"] == "message" and r["name"] == "SET_VRING_KICK")
    assert kick["fds"] == 1 and kick["fields"]["fd"] == "fd"
    table = next(r for r in records if r["type"] == "message" and r["name"] == "SET_MEM_TABLE")
    assert table["fields"]["regions"] and json.dumps(table)         # plain JSON, no live fds
