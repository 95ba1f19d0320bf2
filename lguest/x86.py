"""The handful of x86 instructions an lguest guest traps on, decoded as pure data.

#L:500 An lguest guest runs in ring 1 with no I/O permission, so every `in`/`out`
# faults with a general protection fault (trap 13), and every access to a device's
# MMIO window (which the Host leaves unmapped) page faults (trap 14). The kernel hands
# the launcher the trap number, the first 7 bytes of the instruction and, for a page
# fault, the guest-physical address. It is the launcher's job (the seed's emulate_insn
# and emulate_mmio) to work out what the instruction wanted: which port or address,
# how wide, which register, and how long the instruction is so eip can step past it.
# This module only *decodes*: it returns a record and touches no registers, so the
# lguest backend (L:520) and the fake guest share it, and hypothesis can round-trip
# it against the encoder at the bottom of this file.
"""

from dataclasses import dataclass

# Register names in the order of their x86 encoding numbers (ModRM reg field).
REG_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
BYTE_REG_NAMES = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
WORD_REG_NAMES = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")

# i386 `struct user_regs_struct` offsets: what LHREQ_GETREG/SETREG take.
USER_REGS_OFFSETS = {
    "ebx": 0, "ecx": 4, "edx": 8, "esi": 12, "edi": 16, "ebp": 20, "eax": 24,
    "xds": 28, "xes": 32, "xfs": 36, "xgs": 40, "orig_eax": 44, "eip": 48,
    "xcs": 52, "eflags": 56, "esp": 60, "xss": 64,
}
USER_REGS_NAMES = {offset: name for name, offset in USER_REGS_OFFSETS.items()}

OPERAND_SIZE_PREFIX = 0x66
CLI = 0xFA
GUEST_KERNEL_CPL = 1          # lguest runs the guest kernel in ring 1
MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@dataclass(frozen=True)
class Insn:
    """One decoded instruction.

    kind:   "in", "out" (port I/O), "load", "store" (MMIO mov), or "cli".
    width:  operand bytes, 1, 2 or 4 (0 for cli).
    port:   the immediate port, or None when the port is in %dx (port_in_dx).
    reg:    encoding number of the register moved (mov only; in/out always use eax).
    length: bytes of instruction, what eip must advance by.
    """
    kind: str
    width: int
    length: int
    port: int = None
    port_in_dx: bool = False
    reg: int = None

    @property
    def is_write(self):
        return self.kind in ("out", "store")

    def describe(self):
        if self.kind == "cli":
            return "cli"
        if self.kind in ("in", "out"):
            where = "(%dx)" if self.port_in_dx else f"${self.port:#x}"
            acc = {1: "%al", 2: "%ax", 4: "%eax"}[self.width]
            return f"{self.kind} {where},{acc}" if self.kind == "in" else f"out {acc},{where}"
        name = register_name(self.reg, self.width)
        return f"mov{'bwl'[self.width.bit_length() - 1]} %{name} ({self.kind})"


def register_name(regnum, width):
    return {1: BYTE_REG_NAMES, 2: WORD_REG_NAMES, 4: REG_NAMES}[width][regnum]


def privileged_enough(xcs):
    #L:501 "This must be the Guest kernel trying to do something, not userspace!
    # The bottom two bits of the CS segment register are the privilege level."
    # Guest user programs also fault on in/out; those must get their GPF back.
    return (xcs & 3) == GUEST_KERNEL_CPL


def decode_port_insn(insn):
    """emulate_insn()'s decoding: cli, or in/out with an imm8 or %dx port.

    Returns an Insn, or None if this is not something we emulate (re-inject trap 13).
    """
    insn = bytes(insn)
    if not insn:
        return None
    if insn[0] == CLI:
        #L:502 Around 2.6.33 the kernel's early cmpxchg8b emulation tries to disable
        # interrupts with a bare `cli`. The seed skips it, "which will Mostly Work".
        return Insn("cli", 0, 1)
    #L:503 0x66 is the operand-size prefix: 16 instead of 32 bits. The low opcode bit
    # clear means a byte access whatever the prefix says. Then four opcodes, each with
    # the port either as the next byte or in %dx.
    length = 0
    small = False
    if insn[0] == OPERAND_SIZE_PREFIX:
        small, length = True, 1
    if length >= len(insn):
        return None
    opcode = insn[length]
    width = 1 if not opcode & 1 else (2 if small else 4)
    kind = {0xE4: "in", 0xEC: "in", 0xE6: "out", 0xEE: "out"}.get(opcode & 0xFE)
    if kind is None:
        return None
    if (opcode & 0xFE) in (0xE4, 0xE6):
        if length + 1 >= len(insn):
            return None
        return Insn(kind, width, length + 2, port=insn[length + 1])
    return Insn(kind, width, length + 1, port_in_dx=True)


#L:504 The seed's insn_displacement_len() reads the displacement length from the
# ModRM mod/rm bits: mod 1 is one byte, mod 2 four, mod 3 a register. It was
# written for 16-bit addressing and says mod 0, rm 5 has a 2-byte displacement and
# that no SIB byte exists. In the 32-bit protected mode an lguest guest runs in,
# mod 0/rm 5 is a 4-byte absolute address and rm 4 (mod != 3) brings a SIB byte
# (whose base 5 under mod 0 brings a 4-byte displacement too). Getting that wrong
# advances eip into the middle of the instruction, so we decode it correctly;
# seed_displacement_len() keeps the seed's rule for comparison.
def modrm_operand_len(insn, at):
    """Bytes taken by the ModRM byte at insn[at] and what follows it (SIB, displacement)."""
    modrm = insn[at]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 1
    length = 1
    if rm == 4:
        if at + 1 >= len(insn):
            return None
        length += 1
        if mod == 0 and (insn[at + 1] & 7) == 5:
            return length + 4
    elif mod == 0 and rm == 5:
        return length + 4
    return length + {0: 0, 1: 1, 2: 4}[mod]


def seed_displacement_len(modrm):
    """The seed's insn_displacement_len(), verbatim in behaviour (see L:504)."""
    mod = modrm >> 6
    if mod == 0:
        return 2 if (modrm & 7) == 5 else 0
    return {1: 1, 2: 4, 3: 0}[mod]


def decode_mmio_insn(insn):
    """emulate_mmio()'s decoding: mov 0x88/0x89/0x8A/0x8B, optional 0x66 prefix.

    Returns an Insn, or None (warn and re-inject trap 14).
    """
    #L:505 0x89 stores a register (32 bits, or 16 with 0x66), 0x8B loads one; 0x88 and
    # 0x8A are the 8-bit forms, where register numbers 4-7 mean ah, ch, dh, bh. The
    # ModRM byte's bits 3-5 name the register; the rest is the (already resolved)
    # address, which only matters to us for the instruction's length.
    insn = bytes(insn)
    length = 0
    width = 4
    if insn[:1] == bytes([OPERAND_SIZE_PREFIX]):
        width, length = 2, 1
    if length + 1 >= len(insn):
        return None
    opcode = insn[length]
    kinds = {0x89: "store", 0x8B: "load", 0x88: "store", 0x8A: "load"}
    if opcode not in kinds:
        return None
    if opcode in (0x88, 0x8A):
        width = 1
    operand_len = modrm_operand_len(insn, length + 1)
    if operand_len is None:
        return None
    reg = (insn[length + 1] >> 3) & 7
    return Insn(kinds[opcode], width, length + 1 + operand_len, reg=reg)


# -- registers by encoding number ------------------------------------------------

@dataclass(frozen=True)
class Operand:
    """Where an instruction's register operand lives: bits `mask << shift` of the
    32-bit register `reg` (al is eax's low byte, ah its second, ax its low half)."""
    reg: str
    shift: int
    mask: int

    def read(self, value):
        """getreg_num(): the operand's value, given its 32-bit register's."""
        return (value >> self.shift) & self.mask

    def merge(self, old, value):
        """setreg_num(): the 32-bit register after writing `value` to the operand.
        Only the operand's bits change; the seed reads the old value to keep the rest."""
        field = self.mask << self.shift
        return (old & ~field & 0xFFFFFFFF) | ((value << self.shift) & field)

    @property
    def whole(self):
        """True if a write replaces the whole register (its old value is not needed)."""
        return self.shift == 0 and self.mask == 0xFFFFFFFF


def register_operand(regnum, width):
    """The operand that register number `regnum` is at `width` bytes (4-7 at one byte
    are the high halves ah, ch, dh, bh)."""
    if width == 1 and regnum & 4:
        return Operand(REG_NAMES[regnum & 3], 8, 0xFF)
    return Operand(REG_NAMES[regnum], 0, MASKS[width])


def operand(insn):
    """The register `insn` moves to or from: %al/%ax/%eax for in/out, the ModRM
    register for a mov; None for cli."""
    if insn.kind in ("in", "out"):
        return Operand("eax", 0, MASKS[insn.width])
    if insn.kind in ("load", "store"):
        return register_operand(insn.reg, insn.width)
    return None


def read_register(regs, regnum, width):
    """getreg_num(): the value of register `regnum` at `width` bytes.

    `regs` maps 32-bit register names to values. For bytes, 4-7 are the high halves.
    """
    op = register_operand(regnum, width)
    return op.read(regs[op.reg])


def merge_register(regs, regnum, width, value):
    """setreg_num(): (name, new 32-bit value) after writing `value` at `width` bytes."""
    op = register_operand(regnum, width)
    return op.reg, op.merge(regs[op.reg], value)


def registers_needed(insn):
    """Which 32-bit registers the emulation of `insn` reads (what GETREG fetches),
    besides xcs for the privilege check and eip to step past it: %edx for a port in
    %dx, and the operand's register, even when the instruction overwrites all of it
    (a 32-bit in or load), as the seed did: recorded trap streams (L:560) expect the
    seed's exact requests."""
    op = operand(insn)
    if op is None:
        return ()
    needed = ("edx",) if insn.port_in_dx else ()
    needed += (op.reg,) if op.reg not in needed else ()
    return needed


# -- the encoder: for tests and for the fake guest ---------------------------------

def encode_port(kind, width, port=None):
    """in/out with an imm8 port (port given) or with the port in %dx (port None)."""
    out = bytearray()
    if width == 2:
        out.append(OPERAND_SIZE_PREFIX)
    base = {("in", True): 0xE4, ("in", False): 0xEC,
            ("out", True): 0xE6, ("out", False): 0xEE}[(kind, port is not None)]
    out.append(base | (width != 1))
    if port is not None:
        if not 0 <= port <= 0xFF:
            raise ValueError(f"an imm8 port must be below 256, not {port:#x}")
        out.append(port)
    return bytes(out)


def encode_mov(kind, width, reg, mod=0, rm=0, sib=None, disp=0):
    """mov between register `reg` and memory, with the ModRM addressing form given.

    mod/rm as in the ModRM byte (mod 3 is not a memory form); rm 4 needs `sib`;
    the displacement is sized as the form requires.
    """
    if mod == 3:
        raise ValueError("mod 3 is a register operand, not memory")
    out = bytearray()
    if width == 2:
        out.append(OPERAND_SIZE_PREFIX)
    opcode = {("store", 1): 0x88, ("load", 1): 0x8A}.get((kind, width))
    if opcode is None:
        opcode = 0x89 if kind == "store" else 0x8B
    out += bytes([opcode, (mod << 6) | (reg << 3) | rm])
    disp_len = {0: 0, 1: 1, 2: 4}[mod]
    if rm == 4:
        if sib is None:
            raise ValueError("rm 4 needs a SIB byte")
        out.append(sib)
        if mod == 0 and sib & 7 == 5:
            disp_len = 4
    elif mod == 0 and rm == 5:
        disp_len = 4
    out += (disp & ((1 << (8 * disp_len)) - 1)).to_bytes(disp_len, "little")
    return bytes(out)
