"""Trap streams with garbage instruction bytes: the x86 decoders and the whole /dev/lguest
backend (against the in-process model of lguest_user.c) with the launcher's run loop.
Whatever bytes sit at eip, whatever the trap number and privilege, the launcher either
emulates an instruction it knows, skips cli, or hands the trap back; it never raises
anything but the library's errors, never moves eip by more than an x86 instruction can
be long, and the guest runs on to its end.

test_x86.py round-trips well-formed encodings; test_fake_properties.py checks illegal
driver behaviour through traps; this is the garbage-bytes gap."""


from hypothesis import given, settings, strategies as st
from hypothesis_budget import examples

from lguest import x86
from lguest.backends import GuestDied
from lguest.backends.lguest_dev import LguestBackend
from lguest.backends.lguest_model import Die, LguestKernelModel, Trap
from lguest.errors import LguestError
from lguest.launcher import run_guest
from lguest.memory import GuestMemory
from lguest.pci.bus import PciBus

EXAMPLES = examples(200)          # the long profile's 5,000 in a campaign
MAX_X86_INSN = 15

insn_bytes = st.one_of(
    st.binary(max_size=16),
    # Mostly-right prefixes and opcodes followed by garbage: the decoders' edges.
    st.tuples(st.sampled_from([b"", b"\x66", b"\x66\x66", b"\xfa"]),
              st.sampled_from([b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xec", b"\xed", b"\xee",
                               b"\xef", b"\x88", b"\x89", b"\x8a", b"\x8b", b"\x0f"]),
              st.binary(max_size=8)).map(b"".join))


@settings(max_examples=EXAMPLES)
@given(insn_bytes)
def test_decoders_on_garbage_return_an_instruction_or_none(raw):
    for decode in (x86.decode_port_insn, x86.decode_mmio_insn):
        insn = decode(raw)
        if insn is not None:
            assert 1 <= insn.length <= MAX_X86_INSN
            assert insn.width in (0, 1, 2, 4)
            if insn.kind in ("in", "out"):
                assert insn.length <= len(raw)      # port insns are never longer than 3


class Script:
    def __init__(self, steps):
        self.steps = list(steps)

    def run(self, cpu):
        if not self.steps:
            return Die("script finished")
        regs, event = self.steps.pop(0)
        cpu.regs.update(regs)
        return event


step = st.tuples(
    st.fixed_dictionaries({"xcs": st.sampled_from([0x61, 0x73, 0x10, 0x0]),
                           "eip": st.integers(0, 0xFFFF_FFFF),
                           "eax": st.integers(0, 0xFFFF_FFFF),
                           "edx": st.integers(0, 0xFFFF_FFFF)}),
    st.tuples(st.sampled_from([13, 14, 13, 14, 6, 0, 31]), insn_bytes,
              st.one_of(st.integers(0, 0xFFFF_FFFF),
                        st.sampled_from([(1 << 20), (1 << 20) + 4096 + 16, 0xFEE00000]))))


@settings(max_examples=EXAMPLES)
@given(st.lists(step, max_size=12))
def test_lguest_backend_survives_garbage_traps(steps):
    memory = GuestMemory(1 << 20)
    bus = PciBus(memory)
    script = Script([(regs, Trap(number, raw, addr)) for regs, (number, raw, addr) in steps])
    model = LguestKernelModel(script, word_size=8)
    backend = LguestBackend(word_size=8, opener=model.open, pread=model.pread,
                            pwrite=model.pwrite, closer=model.close, warn=lambda m: None)
    try:
        backend.attach_bus(bus)
        backend.initialize(memory, 0x100000, mmio_limit=bus.mmio_limit)
        try:
            exit_ = run_guest(backend, bus)
        except LguestError:
            exit_ = None                     # the library's own error: allowed
        if exit_ is not None:
            assert isinstance(exit_, GuestDied) and exit_.reason == "script finished"
            assert script.steps == []        # every garbage trap was dealt with
    finally:
        backend.close()
        memory.close()
