"""Replaying a device-level trace (L:785) without Linux: rebuild the devices over
in-memory resources, feed the recorded messages to a fresh back-end, lay each recorded
chain into guest memory as the device pops it, and stop at the first difference."""

import hashlib
import os
import socket
import tempfile

from ..backends.tracefile import TraceDivergence, TraceError, read_trace
from ..devices.block import CONFIG_SEG_MAX
from ..devices.inmemory import BufferSink
from . import protocol as P
from .trace import (DEVICE_FEATURE_NAMES, FEATURE_NAMES, KIND, U16, QueueWrapper,
                    describe_error, interrupt_fields, make_image, pop_event, push_event)


def build_device(spec):
    """The device a header's device spec names, from the factory (L:940) over memory.
    Returns (device, its disk store or console sink). Recorded devices had no serial."""
    from ..config import DeviceSpec
    from ..host.factory import InMemoryResources, make_device
    if spec["kind"] not in ("block", "console"):
        raise TraceError(f"cannot replay a {spec['kind']!r} device")
    image = lambda _: make_image(spec["size"], spec["seed"])       # noqa: E731
    built = make_device(DeviceSpec(spec["kind"], read_only=spec.get("read_only", False),
                                   name=spec["name"]),
                        InMemoryResources(BufferSink(), image=image, serial=None))
    return built.device, built.resources[0]


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


class CheckingQueue(QueueWrapper):
    """The replay's Virtqueue wrapper: lays each recorded chain out just before pop()."""

    @property
    def _checker(self):
        return self._owner

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
    from .backend import VhostUserTransport
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
            backend = backends[name] = VhostUserTransport(device)
            _offer_as_recorded(backend, [r for r in records if r["dev"] == name])
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


def _recorded_reply(records, request):
    """The payload of the first reply to `request` in the stream, or None."""
    for r in records:
        if r["type"] == "message" and r["request"] == request and r.get("reply"):
            return bytes.fromhex(r["reply"])[P.HEADER.size:]
    return None


def _offer_as_recorded(backend, records):
    """Offer what the recording back-end offered (issue 15 added ring features and a
    vhost-user seg_max): read from its first GET_FEATURES and GET_CONFIG replies, so
    streams recorded before and after replay alike."""
    from .backend import RING_FEATURES
    device = backend.device
    features = _recorded_reply(records, P.GET_FEATURES)
    if features is not None:
        backend.ring_features = P.U64.unpack(features)[0] & RING_FEATURES & ~device.features
    config = _recorded_reply(records, P.GET_CONFIG)
    if config is not None and hasattr(device, "set_seg_max"):
        offset, size, _ = P.CONFIG_HEAD.unpack_from(config)
        data = config[P.CONFIG_HEAD.size:]
        if offset <= CONFIG_SEG_MAX and CONFIG_SEG_MAX + 4 <= offset + size:
            at = CONFIG_SEG_MAX - offset
            device.set_seg_max(int.from_bytes(data[at:at + 4], "little"))


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
