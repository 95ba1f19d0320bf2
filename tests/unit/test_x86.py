"""The trap-instruction decoder: known encodings, round trips, register merging."""

from hypothesis import given, strategies as st

from lguest import x86


def test_known_port_encodings_decode_as_the_seed_would():
    # in $0x64,%al ; in (%dx),%eax ; out %ax,(%dx) ; out %eax,$0xcf
    assert x86.decode_port_insn(b"\xe4\x64") == x86.Insn("in", 1, 2, port=0x64)
    assert x86.decode_port_insn(b"\xed") == x86.Insn("in", 4, 1, port_in_dx=True)
    assert x86.decode_port_insn(b"\x66\xef") == x86.Insn("out", 2, 2, port_in_dx=True)
    assert x86.decode_port_insn(b"\xe7\xcf\x90") == x86.Insn("out", 4, 2, port=0xCF)
    # 0x66 on a byte opcode still means a byte access (low opcode bit clear).
    assert x86.decode_port_insn(b"\x66\xec").width == 1


def test_cli_is_skipped_and_unknown_opcodes_are_refused():
    assert x86.decode_port_insn(b"\xfa\x00") == x86.Insn("cli", 0, 1)
    for junk in (b"\x0f\x0b", b"\x66\x90", b"", b"\x66", b"\xe4"):
        assert x86.decode_port_insn(junk) is None


def test_privilege_check_is_cpl_one():
    assert x86.privileged_enough(0x61)
    assert not x86.privileged_enough(0x60)   # ring 0: not an lguest guest kernel
    assert not x86.privileged_enough(0x73)   # ring 3: guest userspace


def test_known_mov_encodings():
    # mov %eax,(%edx): 89 02 ; mov 0x10(%ebx),%cx: 66 8b 4b 10 ; mov %dh,0x12345678(%ecx): 88 b1 disp32
    assert x86.decode_mmio_insn(b"\x89\x02") == x86.Insn("store", 4, 2, reg=0)
    assert x86.decode_mmio_insn(b"\x66\x8b\x4b\x10") == x86.Insn("load", 2, 4, reg=1)
    assert x86.decode_mmio_insn(b"\x88\xb1\x78\x56\x34\x12") == x86.Insn("store", 1, 6, reg=6)
    # mov (%eax,%ebx,1),%esi with a SIB byte: 8b 34 18
    assert x86.decode_mmio_insn(b"\x8b\x34\x18") == x86.Insn("load", 4, 3, reg=6)
    assert x86.decode_mmio_insn(b"\xc7\x00\x01\x00") is None   # mov $imm: not emulated


def test_displacement_rule_differs_from_seed_only_where_seed_was_16_bit():
    # mod 0 rm 5 is disp32 in 32-bit mode; the seed said 2 bytes.
    assert x86.seed_displacement_len(0x05) == 2
    assert x86.modrm_operand_len(b"\x05\0\0\0\0", 0) == 5
    for modrm in (0x00, 0x43, 0x81, 0xC0):
        assert x86.modrm_operand_len(bytes([modrm, 0, 0, 0, 0]), 0) == 1 + x86.seed_displacement_len(modrm)


port_forms = st.tuples(st.sampled_from(["in", "out"]), st.sampled_from([1, 2, 4]),
                       st.one_of(st.none(), st.integers(0, 255)))


@given(port_forms, st.binary(max_size=5))
def test_port_round_trip(form, trailing):
    kind, width, port = form
    code = x86.encode_port(kind, width, port)
    insn = x86.decode_port_insn((code + trailing)[:7])
    assert (insn.kind, insn.width, insn.port, insn.length) == (kind, width, port, len(code))
    assert insn.port_in_dx == (port is None)


@st.composite
def mov_forms(draw):
    kind = draw(st.sampled_from(["load", "store"]))
    width = draw(st.sampled_from([1, 2, 4]))
    reg = draw(st.integers(0, 7))
    mod = draw(st.integers(0, 2))
    rm = draw(st.integers(0, 7))
    sib = draw(st.integers(0, 255)) if rm == 4 else None
    disp = draw(st.integers(0, 0xFFFFFFFF))
    return kind, width, reg, mod, rm, sib, disp


@given(mov_forms())
def test_mov_round_trip(form):
    kind, width, reg, mod, rm, sib, disp = form
    code = x86.encode_mov(kind, width, reg, mod, rm, sib, disp)
    assert len(code) <= 8
    insn = x86.decode_mmio_insn((code + b"\x90" * 7)[:7])
    assert (insn.kind, insn.width, insn.reg) == (kind, width, reg)
    assert insn.length == len(code)


regs_strategy = st.fixed_dictionaries({n: st.integers(0, 0xFFFFFFFF) for n in x86.REG_NAMES})


@given(regs_strategy, st.integers(0, 7), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFFFFFF))
def test_register_write_then_read_gives_the_value_and_keeps_other_bits(regs, regnum, width, value):
    name, merged = x86.merge_register(regs, regnum, width, value)
    after = dict(regs, **{name: merged})
    assert x86.read_register(after, regnum, width) == value & x86.MASKS[width]
    changed = merged ^ regs[name]
    shift = 8 if width == 1 and regnum & 4 else 0
    assert changed & ~(x86.MASKS[width] << shift) == 0


def test_high_byte_registers():
    regs = dict.fromkeys(x86.REG_NAMES, 0)
    regs["edx"] = 0x11223344
    assert x86.read_register(regs, 6, 1) == 0x33   # dh
    assert x86.read_register(regs, 2, 1) == 0x44   # dl
    assert x86.merge_register(regs, 6, 1, 0xAB) == ("edx", 0x1122AB44)
    assert x86.registers_needed(x86.Insn("store", 1, 2, reg=6)) == ("edx",)
