"""Trap streams: what a guest asked of /dev/lguest and what the launcher answered.

#L:560 A trap stream records a run at the /dev/lguest wire: every trap the guest
# delivered with the registers the launcher read, and what the launcher did about it
# (registers it set, interrupts it raised, traps it handed back). Replaying a
# stream feeds the same traps and register values back through the model of the
# kernel (L:530) to today's launcher and compares its answers, record by record,
# failing at the first divergence with a diff: a regression test of the whole
# trap -> decode -> bus -> device -> register path that needs no guest.
#
# Format, version 1: UTF-8 JSON, one object per line (docs/trace-format.md).
#
#   line 1, header: {"format": "lguest-trace", "version": 1, "word_size": 4|8,
#                    "config": {...what the launcher was given...}, "comment": "..."}
#   {"type": "initialize", "pfn_limit": N, "start": N, "device_limit": N,
#    "response": R}                       (base, a launcher address, is not kept)
#   {"type": "trap", "trap": 13|14, "insn": "hex", "addr": N,
#    "regs": {"eax": N, ...},             registers the launcher read (GETREG)
#    "memory": [[addr, "hex"], ...],      guest writes since the previous trap
#    "response": R}
#   {"type": "died", "reason": "..."}  or  {"type": "reboot"}
#
#   R = {"regs": [[name, value], ...],    LHREQ_SETREG in order
#        "irqs": [n, ...],                LHREQ_IRQ in order
#        "reinjected": [n, ...]}          LHREQ_TRAP in order
#
# A stream recorded from the fake guest carries the guest's memory writes, so a
# replay drives the devices through the rings exactly as the original did. One
# recorded from a real /dev/lguest has no "memory" (we cannot see the guest write):
# it replays faithfully only until the devices start reading rings.
#
# A header may name a "kind" (default "trap", the records above). Kind "vhost-user"
# (L:785) holds the device-level traffic of a vhost-user back-end instead: messages,
# kicks with the chains they served, calls. Each kind checks its own record types;
# a reader asked for one kind refuses another, so an old reader of trap streams never
# mistakes a vhost-user stream for one. A path ending in ".gz" is gzip'd.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import struct
from typing import TYPE_CHECKING, Iterable

from .. import x86
from .lguest_abi import (ERESTART, LHREQ_GETREG, LHREQ_INITIALIZE, LHREQ_IRQ, LHREQ_SETREG,
                         LHREQ_TRAP, PENDING)
from .lguest_model import Die, Reboot, Trap

if TYPE_CHECKING:
    from os import PathLike

FORMAT = "lguest-trace"
VERSION = 1
# Record types of each kind of stream (the header's "kind", "trap" when absent).
KINDS = {"trap": ("initialize", "trap", "died", "reboot"),
         "vhost-user": ("message", "kick", "call", "end")}


class TraceError(Exception):
    """A stream that is not a version-1 lguest trace, or does not parse."""


class TraceDivergence(AssertionError):
    """The launcher answered a recorded trap differently."""


def empty_response():
    return {"regs": [], "irqs": [], "reinjected": []}


# -- reading and writing -------------------------------------------------------------
def _open(path, mode):
    if str(path).endswith(".gz"):
        # mtime=0: the same records make the same bytes, so a re-recording diffs cleanly.
        raw = gzip.GzipFile(path, mode[0] + "b", mtime=0)
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def write_trace(path: str | PathLike[str], header: dict, records: Iterable[dict], *,
                kind: str = "trap") -> None:
    """Write a version-1 stream: a JSON header line, then one JSON line per record."""
    header = dict(header, format=FORMAT, version=VERSION)
    if kind != "trap":
        header["kind"] = kind            # trap streams stay as they always were
    with _open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_trace(path: str | PathLike[str], *, kind: str = "trap") -> tuple[dict, list[dict]]:
    """(header, records) of a version-1 stream of `kind`, or TraceError saying what is wrong."""
    try:
        with _open(path, "r") as f:
            lines = [line for line in f if line.strip()]
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read ({e})") from e
    try:
        parsed = [json.loads(line) for line in lines]
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: not JSON lines ({e})") from e
    if not parsed or not isinstance(parsed[0], dict) or parsed[0].get("format") != FORMAT:
        raise TraceError(f"{path}: no {FORMAT!r} header on the first line")
    if parsed[0].get("version") != VERSION:
        raise TraceError(f"{path}: version {parsed[0].get('version')} (this reader knows {VERSION})")
    found = parsed[0].get("kind", "trap")
    if found != kind:
        raise TraceError(f"{path}: a {found!r} stream, not {kind!r}")
    for n, record in enumerate(parsed[1:], 2):
        if record.get("type") not in KINDS[kind]:
            raise TraceError(f"{path}:{n}: unknown record type {record.get('type')!r}")
    return parsed[0], parsed[1:]


# -- recording at the pread/pwrite wire ------------------------------------------------
class Recorder:
    """Wraps a (pread, pwrite) pair and turns the traffic into records.

    Each record is passed to `sink` once complete (at the next run of the guest,
    or at death). `memory_writes()`, if given, returns the guest's memory writes
    since it was last called, as (addr, bytes) pairs.
    """

    def __init__(self, pread, pwrite, sink, *, word_size=8, memory_writes=None):
        self._pread, self._pwrite = pread, pwrite
        self.sink = sink
        self.word = struct.Struct("<I" if word_size == 4 else "<Q")
        self.memory_writes = memory_writes
        self.current = None
        self.pending_getreg = None

    def _flush(self):
        if self.current is not None:
            record, self.current = self.current, None
            self.sink(record)

    def pwrite(self, fd, data, offset):
        result = self._pwrite(fd, data, offset)
        size = self.word.size
        words = [self.word.unpack_from(data, i)[0] for i in range(0, len(data) - size + 1, size)]
        request, args = words[0], words[1:]
        if request == LHREQ_INITIALIZE:
            self._flush()
            self.current = {"type": "initialize", "pfn_limit": args[1], "start": args[2],
                            "device_limit": args[3], "response": empty_response()}
        elif self.current is not None:
            response = self.current["response"]
            if request == LHREQ_GETREG:
                self.pending_getreg = x86.USER_REGS_NAMES[args[0]]
            elif request == LHREQ_SETREG:
                response["regs"].append([x86.USER_REGS_NAMES[args[0]], args[1]])
            elif request == LHREQ_IRQ:
                response["irqs"].append(args[0])
            elif request == LHREQ_TRAP:
                response["reinjected"].append(args[0])
        return result

    def pread(self, fd, size, offset):
        if self.pending_getreg is not None:
            name, self.pending_getreg = self.pending_getreg, None
            data = self._pread(fd, size, offset)
            if self.current is not None and self.current["type"] == "trap":
                self.current["regs"].setdefault(name, self.word.unpack(data.ljust(self.word.size, b"\0"))[0])
            return data
        if self.current is not None and self.current["type"] == "died":
            # After ENOENT, this read is the reason.
            data = self._pread(fd, size, offset)
            self.current["reason"] = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._flush()
            return data
        self._flush()
        try:
            data = self._pread(fd, size, offset)
        except OSError as e:
            if e.errno == ERESTART:
                self.sink({"type": "reboot"})
            elif e.errno == errno.ENOENT:
                self.current = {"type": "died", "reason": None}
            raise
        trap, insn, addr = PENDING.unpack(data)
        writes = self.memory_writes() if self.memory_writes else []
        self.current = {"type": "trap", "trap": trap, "insn": insn.hex(), "addr": addr,
                        "regs": {}, "memory": [[a, bytes(b).hex()] for a, b in writes],
                        "response": empty_response()}
        return data

    def finish(self):
        """Hand over the last record (a run that ended without the guest dying)."""
        self._flush()


# -- replaying ----------------------------------------------------------------------
def _describe(record):
    if record is None:
        return "nothing (the stream had ended)"
    if record["type"] == "trap":
        insn = bytes.fromhex(record["insn"])
        decoded = (x86.decode_port_insn(insn) if record["trap"] == 13 else x86.decode_mmio_insn(insn))
        what = decoded.describe() if decoded else "undecodable"
        return f"trap {record['trap']} ({what}) at addr {record['addr']:#x}"
    return record["type"]


def diff(expected, actual):
    """Readable lines saying how two records differ ([] when they agree)."""
    if expected is None or actual is None or expected["type"] != actual["type"]:
        return [f"expected {_describe(expected)}", f"     got {_describe(actual)}"]
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if key in ("memory",):
            continue
        want, got = expected.get(key), actual.get(key)
        if key == "response":
            for part in ("regs", "irqs", "reinjected"):
                if want[part] != got[part]:
                    lines.append(f"response {part}: expected {want[part]}, got {got[part]}")
        elif want != got:
            lines.append(f"{key}: expected {want!r}, got {got!r}")
    return lines


class Comparer:
    """A Recorder sink that checks each finished record against the stream."""

    def __init__(self, expected):
        self.expected = list(expected)
        self.index = 0

    def __call__(self, actual):
        want = self.expected[self.index] if self.index < len(self.expected) else None
        problems = diff(want, actual)
        if problems:
            raise TraceDivergence(f"trace diverges at record {self.index + 1} "
                                  f"({_describe(want)}):\n  " + "\n  ".join(problems))
        self.index += 1


class ReplayGuest:
    """A guest program (L:530) that plays the recorded traps back.

    Memory writes are applied through `memory` (the launcher's GuestMemory)
    before each trap is delivered, so the devices find the rings as recorded.
    """

    def __init__(self, records, memory=None):
        self.records = [r for r in records if r["type"] != "initialize"]
        self.memory = memory
        self.position = 0

    def run(self, cpu):
        cpu.take_interrupts()
        cpu.take_reinjected()
        if self.position >= len(self.records):
            return Die("end of trace")
        record = self.records[self.position]
        self.position += 1
        if record["type"] == "died":
            return Die(record["reason"])
        if record["type"] == "reboot":
            return Reboot()
        for addr, data in record.get("memory", []):
            if self.memory is not None:
                self.memory.write(addr, bytes.fromhex(data))
        # Registers the original launcher did not read are poisoned, so a launcher
        # that reads more than it did shows up as a difference, not as a lucky match.
        cpu.regs.update(dict.fromkeys(cpu.regs, 0xDEADBEEF))
        cpu.regs.update(record["regs"])
        return Trap(record["trap"], bytes.fromhex(record["insn"]), record["addr"])
