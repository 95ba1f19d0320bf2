"""Device-level traces of the vhost-user back-end: record real traffic, replay it anywhere.

#L:785 A trap stream (L:560) replays a guest at the /dev/lguest wire. A real Linux
# guest here is User-Mode Linux, which drives our devices through vhost-user (L:720),
# so its stream is taken one level up: every message the front-end sent (as parsed,
# with our reply), and for every kick the chains the device popped (the descriptors
# and the bytes the guest had put in them), what it pushed back (head, length, bytes)
# and whether it interrupted. A `recorder` on VhostUserTransport sees all of that through
# four hooks: message(), queue() (wraps the ring a device will use), serving() (wraps a
# ring's kick) and call(). With no recorder each hook is one None check.
#
# Replaying rebuilds the device over in-memory resources (the disk from the seed the
# script made it from, the console into a buffer), feeds the messages to a fresh
# backend, and for each kick writes into guest memory exactly the chains that kick
# found -- lazily, one at each pop(), so the device meets them in the order it did --
# then checks every reply, pop, push, interrupt and call against the stream. The
# first difference stops the replay with a TraceDivergence naming the record and
# showing both sides. Real Linux behaviour becomes a unit test without Linux.
#
# Stream: kind "vhost-user" of the lguest-trace format (docs/trace-format.md).
# Recording is here; replaying is in trace_replay.py.
"""

import os
import struct
import threading

from .. import virtio
from ..backends.tracefile import write_trace
from ..errors import GuestError
from . import protocol as P

KIND = "vhost-user"
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")

# Feature bit names for diffs: the transport's, then each device kind's own.
FEATURE_NAMES = {**virtio.FEATURE_NAMES, P.F_PROTOCOL_FEATURES: "PROTOCOL_FEATURES"}
DEVICE_FEATURE_NAMES = {"block": virtio.DEVICE_FEATURE_NAMES[virtio.ID_BLOCK],
                        "console": virtio.DEVICE_FEATURE_NAMES[virtio.ID_CONSOLE]}


# -- what a message says, for people reading the stream ----------------------------------
def describe_message(request, payload, nfds):
    """The fields of a request, decoded (fds as placeholders); {} if it does not parse."""
    msg = P.Message(request, P.VERSION, payload, [-1 - i for i in range(nfds)])
    try:
        if request in (P.SET_FEATURES, P.SET_PROTOCOL_FEATURES):
            return {"value": hex(P.decode_u64(msg))}
        if request in (P.SET_VRING_NUM, P.SET_VRING_BASE, P.GET_VRING_BASE, P.SET_VRING_ENABLE):
            index, num = P.decode_state(msg)
            return {"index": index, "num": num}
        if request == P.SET_VRING_ADDR:
            return {k: (v if k in ("index", "flags") else hex(v))
                    for k, v in P.decode_vring_addr(msg)._asdict().items()}
        if request in (P.SET_VRING_KICK, P.SET_VRING_CALL, P.SET_VRING_ERR):
            index, fd = P.decode_vring_fd(msg)
            return {"index": index, "fd": None if fd is None else "fd"}
        if request == P.SET_MEM_TABLE:
            regions, _ = P.decode_mem_table(msg)
            return {"regions": [{k: hex(v) for k, v in r._asdict().items()} for r in regions]}
        if request in (P.GET_CONFIG, P.SET_CONFIG):
            a = P.decode_config(msg)
            return {"offset": a.offset, "size": a.size, "flags": a.flags, "data": a.data.hex()}
    except GuestError:
        pass
    return {}


def describe_error(error):
    return f"{type(error).__name__}: {error}"


# -- the chains a pop found, read straight from guest memory ---------------------------------
def walk_chain(queue, head):
    """(descriptor entries [[addr, hex]], readable [(addr, len)], writable [(addr, len)]).

    Only called on a chain pop() accepted, so it is well formed; the walk is bounded anyway."""
    memory = queue.memory
    table, size, index = queue.desc, queue.size, head
    entries, readable, writable = [], [], []
    for _ in range(2 * queue.size + 2):
        where = table + virtio.DESC_SIZE * index
        raw = memory.read(where, virtio.DESC_SIZE)
        addr, length, flags, nxt = DESC.unpack(raw)
        entries.append([where, bytes(raw).hex()])
        if flags & virtio.VRING_DESC_F_INDIRECT:
            table, size, index = addr, length // virtio.DESC_SIZE, 0
            continue
        (writable if flags & virtio.VRING_DESC_F_WRITE else readable).append((addr, length))
        if not flags & virtio.VRING_DESC_F_NEXT:
            break
        index = nxt
    return entries, readable, writable


def pop_event(queue, head, slot):
    entries, readable, writable = walk_chain(queue, head)
    return ({"e": "pop", "head": head, "slot": slot, "desc": entries,
             "data": [[a, bytes(queue.memory.read(a, n)).hex()] for a, n in readable],
             "writable": [[a, n] for a, n in writable]}, writable)


def push_event(queue, head, written, writable):
    """The first `written` bytes of the chain's writable buffers: what the device wrote."""
    data, left = bytearray(), written
    for addr, length in writable:
        n = min(length, left)
        data += queue.memory.read(addr, n)
        left -= n
        if not left:
            break
    return {"e": "push", "head": head, "written": written, "data": bytes(data).hex()}


def interrupt_fields(queue):
    """What the guest said about interrupts: avail flags, and used_event with EVENT_IDX."""
    fields = {"flags": U16.unpack(queue.memory.read(queue.avail, 2))[0]}
    if queue.features & virtio.bit(virtio.F_RING_EVENT_IDX):
        fields["used_event"] = U16.unpack(queue.memory.read(queue.avail + 4 + 2 * queue.size, 2))[0]
    return fields


# -- recording -------------------------------------------------------------------------------
class TraceRecorder:
    """Collects the records of every device of a run, in the order they happened.

    A kick's slot is taken when it starts and filled when it ends, and a message is
    recorded when it has been handled, so a message that stopped a ring (joining its
    thread) comes after the kick it waited for, as it did."""

    def __init__(self):
        self.records = []
        self._lock = threading.Lock()
        self.local = threading.local()

    def device(self, name):
        return DeviceRecorder(self, name)

    def append(self, record):
        with self._lock:
            self.records.append(record)

    def reserve(self):
        with self._lock:
            self.records.append(None)
            return len(self.records) - 1

    def fill(self, slot, record):
        with self._lock:
            self.records[slot] = record

    def write(self, path, header):
        write_trace(path, header, [r for r in self.records if r is not None], kind=KIND)


class DeviceRecorder:
    """The `recorder` of one VhostUserTransport (L:720)."""

    def __init__(self, trace, name):
        self.trace = trace
        self.name = name
        self._used_idx = {}

    def _emit(self, event, queue_index):
        events = getattr(self.trace.local, "events", None)
        if events is not None:
            events.append(event)
        elif event["e"] == "call":
            self.trace.append({"type": "call", "dev": self.name, "vq": queue_index})
        else:                  # served by a host-woken thread: recorded, not replayable
            self.trace.append({"type": "kick", "dev": self.name, "vq": queue_index,
                               "host": True, "events": [event]})

    def message(self, msg, handle):
        record = {"type": "message", "dev": self.name, "request": msg.request, "name": msg.name,
                  "flags": msg.flags, "payload": bytes(msg.payload).hex(), "fds": len(msg.fds),
                  "fields": describe_message(msg.request, msg.payload, len(msg.fds))}
        try:
            reply = handle(msg)
        except P.ProtocolError as e:
            record["error"] = e.rule
            self.trace.append(record)
            raise
        record["reply"] = None if reply is None else reply.hex()
        self.trace.append(record)
        return reply

    def queue(self, index, queue):
        self._used_idx[index] = queue.used_idx
        return RecordingQueue(self, index, queue)

    def serving(self, index, serve):
        state = {"start": True, "used_idx": self._used_idx.get(index, 0)}

        def recorded_serve(queue_index):
            kick = {"type": "kick", "dev": self.name, "vq": queue_index,
                    "start": state["start"], "events": []}
            if state["start"]:
                kick["used_idx"] = state["used_idx"]
            state["start"] = False
            slot = self.trace.reserve()
            self.trace.local.events = kick["events"]
            try:
                return serve(queue_index)      # True: another round wanted (L:221)
            except Exception as e:
                kick["events"].append({"e": "error", "error": describe_error(e)})
                raise
            finally:
                self.trace.local.events = None
                self.trace.fill(slot, kick)
        return recorded_serve

    def call(self, queue_index):
        self._emit({"e": "call", "vq": queue_index}, queue_index)


class QueueWrapper:
    """A Virtqueue seen through a wrapper: reads and writes of its fields reach the
    queue; the wrapper's own state has a leading underscore. The recorder's and the
    replay's wrappers (trace_replay.py) override pop() and push()."""

    def __init__(self, owner, index, queue):
        self._owner, self._index, self._queue = owner, index, queue
        self._writable = {}

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def __setattr__(self, name, value):
        # Writes reach the queue too: give_back() steps last_avail_idx back, and on
        # the wrapper alone that would lose the chain (recording changed behaviour).
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._queue, name, value)


class RecordingQueue(QueueWrapper):
    """A Virtqueue as the device sees it, telling the recorder what went through it."""

    @property
    def _recorder(self):
        return self._owner

    def _emit(self, event):
        self._recorder._emit(event, self._index)

    def pop(self):
        slot = self._queue.last_avail_idx
        try:
            chain = self._queue.pop()
        except GuestError as e:
            self._emit({"e": "pop", "error": e.rule})
            raise
        if chain is None:
            self._emit({"e": "pop", "head": None})
            return None
        event, self._writable[chain.head] = pop_event(self._queue, chain.head, slot)
        self._emit(event)
        return chain

    def push(self, head, written):
        self._queue.push(head, written)
        self._emit(push_event(self._queue, head, written, self._writable.pop(head, [])))

    def push_many(self, entries):
        for head, written in entries:
            self.push(head, written)

    def has_available(self):
        result = self._queue.has_available()
        self._emit({"e": "avail", "result": result})
        return result

    def should_interrupt(self):
        result = self._queue.should_interrupt()
        self._emit(dict(interrupt_fields(self._queue), e="interrupt", result=result))
        return result


# -- deterministic resources ---------------------------------------------------------------
def make_image(size, seed):
    """A disk image from a seed: each 512-byte sector a readable, distinct line, repeated."""
    out = bytearray()
    for sector in range(size // 512):
        line = f"lguest trace image seed {seed} sector {sector:6d} ".encode()
        out += (line * (512 // len(line) + 1))[:511] + b"\n"
    return bytes(out)
