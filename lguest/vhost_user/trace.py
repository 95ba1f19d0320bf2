"""Device-level traces of the vhost-user back-end: record real traffic, replay it anywhere.

#L:785 A trap stream (L:560) replays a guest at the /dev/lguest wire. A real Linux
# guest here is User-Mode Linux, which drives our devices through vhost-user (L:720),
# so its stream is taken one level up: every message the front-end sent (as parsed,
# with our reply), and for every kick the chains the device popped (the descriptors
# and the bytes the guest had put in them), what it pushed back (head, length, bytes)
# and whether it interrupted. A `recorder` on VhostUserBackend sees all of that through
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
"""

import hashlib
import os
import socket
import struct
import tempfile
import threading

from .. import virtio
from ..backends.tracefile import TraceDivergence, TraceError, read_trace, write_trace
from ..errors import GuestError
from . import protocol as P

KIND = "vhost-user"
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")

# Feature bit names for diffs: the transport's, then each device kind's own.
FEATURE_NAMES = {28: "RING_INDIRECT_DESC", 29: "RING_EVENT_IDX", 30: "PROTOCOL_FEATURES",
                 32: "VERSION_1"}
DEVICE_FEATURE_NAMES = {"block": {2: "SEG_MAX", 5: "RO", 9: "FLUSH"},
                        "console": {0: "SIZE", 1: "MULTIPORT", 2: "EMERG_WRITE"}}


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
    """The `recorder` of one VhostUserBackend (L:720)."""

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
                serve(queue_index)
            except Exception as e:
                kick["events"].append({"e": "error", "error": describe_error(e)})
                raise
            finally:
                self.trace.local.events = None
                self.trace.fill(slot, kick)
        return recorded_serve

    def call(self, queue_index):
        self._emit({"e": "call", "vq": queue_index}, queue_index)


class RecordingQueue:
    """A Virtqueue as the device sees it, telling the recorder what went through it."""

    def __init__(self, recorder, index, queue):
        self._recorder, self._index, self._queue = recorder, index, queue
        self._writable = {}

    def __getattr__(self, name):
        return getattr(self._queue, name)

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


class ImageStore:
    """A disk image in a bytearray, with BlockDevice's store interface (L:340). (The
    launcher has one too, but it sits above this package: DESIGN.md's layers.)"""

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


class BufferSink:
    """The console's sink in a replay (and the recorder's): everything, in order."""

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


def build_device(spec):
    """The device a header's device spec names, over in-memory resources."""
    from ..devices.block import BlockDevice
    from ..devices.console import ConsoleDevice
    if spec["kind"] == "block":
        store = ImageStore(make_image(spec["size"], spec["seed"]), read_only=spec.get("read_only", False))
        return BlockDevice(store, read_only=spec.get("read_only", False), name=spec["name"]), store
    if spec["kind"] == "console":
        sink = BufferSink()
        return ConsoleDevice(sink, name=spec["name"]), sink
    raise TraceError(f"cannot replay a {spec['kind']!r} device")


def final_state(spec, resource):
    """What the "end" record of a device compares: the disk's digest, the console's output."""
    if spec["kind"] == "block":
        return {"image_sha256": hashlib.sha256(resource.data).hexdigest()}
    return {"console": bytes(resource.data).decode("utf-8", "replace")}


# -- replaying ---------------------------------------------------------------------------------
def _hexdiff(want, got):
    """Where two hex strings of bytes first differ, with a little context."""
    a, b = bytes.fromhex(want), bytes.fromhex(got)
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, at - 8)
    return (f"first difference at byte {at} (of {len(a)} expected, {len(b)} got); from byte {lo}:\n"
            f"    expected {a[lo:at + 8].hex(' ')}\n"
            f"         got {b[lo:at + 8].hex(' ')}")


def _bits(value, names):
    return ", ".join(f"{n} ({names.get(n, '?')})" for n in range(64) if value >> n & 1) or "none"


def describe_event(event):
    if event is None:
        return "nothing more"
    kind = event["e"]
    if kind == "pop":
        if "error" in event:
            return f"pop refused: {event['error']}"
        if event["head"] is None:
            return "pop: ring empty"
        data = sum(len(d) // 2 for _, d in event["data"])
        return (f"pop head {event['head']} (slot {event['slot']}): {data} bytes readable, "
                f"writable {[n for _, n in event['writable']]}")
    if kind == "push":
        return f"push head {event['head']}, written {event['written']}"
    if kind == "interrupt":
        return f"interrupt check -> {event['result']}"
    if kind == "avail":
        return f"has_available -> {event['result']}"
    if kind == "call":
        return f"call vq {event['vq']}"
    return f"error {event['error']}"


def event_diff(want, got):
    lines = [f"expected {describe_event(want)}", f"     got {describe_event(got)}"]
    if want and got and want["e"] == got["e"] == "push" and want["data"] != got["data"]:
        lines.append(_hexdiff(want["data"], got["data"]))
    return lines


def reply_diff(record, got_reply, got_error, names=FEATURE_NAMES):
    lines = []
    want_reply, want_error = record.get("reply"), record.get("error")
    if want_error or got_error:
        return [f"expected {'error ' + want_error if want_error else 'a reply'}, "
                f"got {'error ' + got_error if got_error else 'a reply'}"]
    if (want_reply is None) != (got_reply is None):
        return [f"expected {'no reply' if want_reply is None else 'reply ' + want_reply}, "
                f"got {'no reply' if got_reply is None else 'reply ' + got_reply}"]
    want, got = bytes.fromhex(want_reply), bytes.fromhex(got_reply)
    if len(want) == len(got) == P.HEADER.size + 8:
        w, g = (P.U64.unpack_from(x, P.HEADER.size)[0] for x in (want, got))
        lines.append(f"reply value: expected {w:#x}, got {g:#x}")
        if record["request"] in (P.GET_FEATURES, P.GET_PROTOCOL_FEATURES):
            lines.append(f"  bits only expected: {_bits(w & ~g, names)}")
            lines.append(f"  bits only got: {_bits(g & ~w, names)}")
        return lines
    return [f"reply: expected {want_reply}", f"          got {got_reply}"]


class _Fds:
    """Stand-ins for the fds a recorded message carried: memory files, pipes, a socket."""

    def __init__(self):
        self.kept = []

    def make(self, record):
        request, n = record["request"], record["fds"]
        payload = bytes.fromhex(record["payload"])
        if request == P.SET_MEM_TABLE:
            regions, _ = P.decode_mem_table(P.Message(request, P.VERSION, payload, [-1] * n))
            fds = []
            for r in regions:
                with tempfile.TemporaryFile() as f:
                    f.truncate(r.mmap_offset + r.size)     # sparse: only touched pages cost
                    fds.append(os.dup(f.fileno()))
            return fds + [os.open(os.devnull, os.O_RDONLY) for _ in range(n - len(fds))]
        fds = []
        for _ in range(n):
            if request in (P.SET_VRING_KICK, P.SET_VRING_CALL, P.SET_VRING_ERR):
                r, w = os.pipe()
                give, keep = (r, w) if request == P.SET_VRING_KICK else (w, r)
            elif request == P.SET_BACKEND_REQ_FD:
                a, b = socket.socketpair()
                give, keep = a.detach(), b.detach()
            else:
                give, keep = os.open(os.devnull, os.O_RDONLY), None
            fds.append(give)
            if keep is not None:
                self.kept.append(keep)
        return fds

    def close(self):
        for fd in self.kept:
            os.close(fd)
        self.kept = []


class ReplayWatcher:
    """Stands in for a ring's KickWatcher thread: serves when the replay says so."""

    def __init__(self, checker, vring, serve, on_error):
        self.checker, self.vring, self.serve, self.on_error = checker, vring, serve, on_error

    def start(self):
        self.checker.watchers[self.vring.index] = self
        self.checker.run_kick(self, self.checker.next_start(self.vring.index))

    def stop(self):
        if self.checker.watchers.get(self.vring.index) is self:
            del self.checker.watchers[self.vring.index]


class DeviceChecker:
    """The `recorder` of a replayed backend: supplies recorded chains, checks the rest."""

    def __init__(self, name, starts):
        self.name = name
        self.starts = starts                 # vq -> [start kick records, in order]
        self.watchers = {}
        self.expected = None                 # the events of the kick being replayed
        self.position = 0
        self.where = ""

    # hooks called by the backend (L:720)
    def message(self, msg, handle):
        return handle(msg)

    def queue(self, index, queue):
        pending = self.starts.get(index)
        if pending and "used_idx" in pending[0]:
            # The guest's used.idx when the ring was (re)started: the queue starts from it.
            queue.memory.write(queue.used + 2, U16.pack(pending[0]["used_idx"]))
            queue._bind()
        return CheckingQueue(self, index, queue)

    def serving(self, index, serve):
        return serve

    def call(self, queue_index):
        self.check({"e": "call", "vq": queue_index})

    def watcher(self, vring, serve, on_error):
        return ReplayWatcher(self, vring, serve, on_error)

    # the replay's side
    def next_start(self, index):
        pending = self.starts.get(index)
        if not pending:
            raise TraceDivergence(f"{self.name}: the device started serving vq {index} "
                                  "more often than recorded")
        return pending.pop(0)

    def run_kick(self, watcher, record):
        self.expected, self.position = record["events"], 0
        self.where = (f"{'start of ' if record.get('start') else ''}kick {self.name}/vq{record['vq']}"
                      f" (record {record['_n']})")
        try:
            watcher.serve(watcher.vring.index)
        except TraceDivergence:
            raise
        except Exception as e:
            self.check({"e": "error", "error": describe_error(e)})
            watcher.on_error(watcher.vring, e)
        if self.position < len(self.expected):
            self.fail(self.expected[self.position], None)
        self.expected = None

    def peek(self):
        if self.expected is not None and self.position < len(self.expected):
            return self.expected[self.position]
        return None

    def check(self, event):
        if self.expected is None:
            raise TraceDivergence(f"{self.name}: {describe_event(event)} outside any recorded kick")
        want = self.peek()
        if want != event:
            self.fail(want, event)
        self.position += 1

    def fail(self, want, got):
        raise TraceDivergence(f"trace diverges at {self.where}, event {self.position + 1}:\n  "
                              + "\n  ".join(event_diff(want, got)))


class CheckingQueue:
    """The replay's Virtqueue wrapper: lays each recorded chain out just before pop()."""

    def __init__(self, checker, index, queue):
        self._checker, self._index, self._queue = checker, index, queue
        self._writable = {}

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def _set_avail_idx(self, idx):
        self._queue.memory.write(self._queue.avail + 2, U16.pack(idx & 0xFFFF))

    def pop(self):
        q, want = self._queue, self._checker.peek()
        slot = q.last_avail_idx
        if want and want["e"] == "pop" and want.get("head") is not None:
            memory = q.memory
            for addr, raw in want["desc"]:
                memory.write(addr, bytes.fromhex(raw))
            for addr, data in want["data"]:
                memory.write(addr, bytes.fromhex(data))
            memory.write(q.avail + 4 + 2 * (slot % q.size), U16.pack(want["head"]))
            self._set_avail_idx(slot + 1)
        elif want and want["e"] == "pop" and "error" in want:
            raise TraceError(f"{self._checker.where}: replaying a refused pop is not supported")
        else:
            self._set_avail_idx(slot)            # nothing recorded here: the ring is empty
        chain = q.pop()
        if chain is None:
            self._checker.check({"e": "pop", "head": None})
            return None
        event, self._writable[chain.head] = pop_event(q, chain.head, slot)
        self._checker.check(event)
        return chain

    def push(self, head, written):
        self._queue.push(head, written)
        self._checker.check(push_event(self._queue, head, written, self._writable.pop(head, [])))

    def push_many(self, entries):
        for head, written in entries:
            self.push(head, written)

    def has_available(self):
        want = self._checker.peek()
        more = bool(want and want["e"] == "avail" and want["result"])
        self._set_avail_idx(self._queue.last_avail_idx + more)
        result = self._queue.has_available()
        self._checker.check({"e": "avail", "result": result})
        return result

    def should_interrupt(self):
        q, want = self._queue, self._checker.peek()
        if want and want["e"] == "interrupt":
            q.memory.write(q.avail, U16.pack(want["flags"]))
            if "used_event" in want:
                q.memory.write(q.avail + 4 + 2 * q.size, U16.pack(want["used_event"]))
        result = q.should_interrupt()
        self._checker.check(dict(interrupt_fields(q), e="interrupt", result=result))
        return result


def replay(path, *, device_hook=None):
    """Replay a vhost-user stream; TraceDivergence at the first difference.

    `device_hook(name, device)` may change a rebuilt device before the replay (the
    tests use it to show that a changed device is caught). Returns a summary dict."""
    from .backend import VhostUserBackend
    header, records = read_trace(path, kind=KIND)
    specs = {spec["name"]: spec for spec in header["config"]["devices"]}
    for n, record in enumerate(records, 2):
        record["_n"] = n
        if record["type"] == "kick" and record.get("host"):
            raise TraceError(f"{path}:{n}: a host-woken serve cannot be replayed")
    backends, checkers, resources, fds = {}, {}, {}, _Fds()
    summary = {"messages": 0, "kicks": 0, "pops": 0, "pushes": 0, "calls": 0}
    try:
        for name, spec in specs.items():
            device, resources[name] = build_device(spec)
            if device_hook is not None:
                device_hook(name, device)
            starts = {}
            for r in records:
                if r["type"] == "kick" and r["dev"] == name and r["start"]:
                    starts.setdefault(r["vq"], []).append(r)
            checker = checkers[name] = DeviceChecker(name, starts)
            backend = backends[name] = VhostUserBackend(device)
            backend.recorder = checker
            backend.watcher_factory = checker.watcher
        for record in records:
            kind, name = record["type"], record["dev"]
            if kind == "message":
                summary["messages"] += 1
                names = {**FEATURE_NAMES, **DEVICE_FEATURE_NAMES.get(specs[name]["kind"], {})}
                if record["request"] == P.GET_PROTOCOL_FEATURES:
                    names = {}
                _replay_message(backends[name], record, fds, names)
            elif kind == "kick":
                summary["kicks"] += 1
                for event in record["events"]:
                    key = {"pop": "pops", "push": "pushes", "call": "calls"}.get(event["e"])
                    if key and not (key == "pops" and event.get("head") is None):
                        summary[key] += 1
                if record["start"]:
                    continue                   # served when its ring started (ReplayWatcher)
                watcher = checkers[name].watchers.get(record["vq"])
                if watcher is None:
                    raise TraceDivergence(f"trace diverges at record {record['_n']}: a kick of "
                                          f"{name}/vq{record['vq']}, which is not being served")
                checkers[name].run_kick(watcher, record)
            elif kind == "end":
                got = final_state(specs[name], resources[name])
                for key, want in record["state"].items():
                    if got[key] != want:
                        raise TraceDivergence(f"trace diverges at record {record['_n']} (end of "
                                              f"{name}): {key}: expected {want!r}, got {got[key]!r}")
        for checker in checkers.values():
            left = {vq: len(v) for vq, v in checker.starts.items() if v}
            if left:
                raise TraceDivergence(f"{checker.name}: rings started fewer times than recorded "
                                      f"(starts left over: {left})")
    finally:
        for backend in backends.values():
            backend.close()
        fds.close()
    return summary


def _replay_message(backend, record, fds, names):
    msg = P.Message(record["request"], record["flags"], bytes.fromhex(record["payload"]),
                    fds.make(record))
    got_reply = got_error = None
    try:
        reply = backend.handle(msg)
        got_reply = None if reply is None else reply.hex()
    except P.ProtocolError as e:
        got_error = e.rule
        backend.disconnect()                 # as the server does (L:740)
    if got_reply != record.get("reply") or got_error != record.get("error"):
        fields = record.get("fields") or {}
        raise TraceDivergence(f"trace diverges at record {record['_n']} (message {record['name']}"
                              f" {fields}):\n  " + "\n  ".join(reply_diff(record, got_reply, got_error, names)))
