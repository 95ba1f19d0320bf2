"""The /dev/lguest fast path (L:525) changes nothing the guest can see.

run() decodes each distinct trap + instruction bytes once and reuses the decoding, skips
GETREG of a register an instruction overwrites whole, and hands out one reusable exit.
Here, for trap streams hypothesis makes up (a small pool of instruction bytes, mostly
well-formed, repeated so the cache is hit, with any registers, privilege and bus
answers), the backend is checked against
  - itself with the decoding cache turned off (every trap decoded afresh), and
  - the seed's emulate_insn()/emulate_mmio() written out below from the C, which
    fetches every register it touches,
and must leave the same registers, re-inject the same traps and make the same bus
accesses, trap by trap."""

from hypothesis import given, settings, strategies as st

from lguest import x86
from lguest.backends.lguest_dev import (LHREQ_GETREG, LHREQ_SETREG, PLAN_CACHE_SIZE,
                                        LguestBackend)
from lguest.backends.lguest_model import Die, LguestKernelModel, Trap
from lguest.launcher import run_guest
from lguest.pci.bus import UnclaimedAccess

GENERAL = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip")


class Script:
    """A guest program: applies each step's registers, traps, and records the CPU the
    launcher left behind (registers and re-injected traps) before the next step."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.after = []

    def run(self, cpu):
        self.after.append(({n: cpu.regs[n] for n in GENERAL}, cpu.take_reinjected()))
        if not self.steps:
            return Die("done")
        regs, event = self.steps.pop(0)
        cpu.regs.update(regs)
        return event


class RecordingBus:
    """Answers every access deterministically from its address; some are no one's."""

    def __init__(self):
        self.accesses = []

    def answer(self, space, addr, size):
        return (addr * 2654435761 + size) & x86.MASKS[size]

    def unclaimed(self, addr):
        return addr % 11 == 5

    def access(self, space, addr, size, is_write, value=0):
        self.accesses.append((space, addr, size, is_write, value))
        if self.unclaimed(addr):
            raise UnclaimedAccess("no one", trap=13 if space == "pio" else 14)
        return 0 if is_write else self.answer(space, addr, size)


class NoCache(dict):
    """A plan cache that never remembers: every trap is decoded afresh."""

    def __setitem__(self, key, value):
        pass


def run_stream(steps, *, cache=True):
    script = Script(steps)
    model = LguestKernelModel(script, word_size=4)
    requests = []

    def pwrite(fd, data, offset):
        requests.append((data[0], data[4] if len(data) > 4 else None))
        return model.pwrite(fd, data, offset)

    backend = LguestBackend(word_size=4, opener=model.open, pread=model.pread,
                            pwrite=pwrite, closer=model.close, warn=lambda m: None)
    if not cache:
        backend._plans = NoCache()
    memory = type("Mapped", (), {"size": 1 << 20, "host_address": 0xB0000000})()
    backend.initialize(memory, 0x100000, mmio_limit=(1 << 20) + (1 << 16))
    bus = RecordingBus()
    died = run_guest(backend, bus)
    assert died.reason == "done"
    return script.after, bus.accesses, requests


# -- the seed's emulation, from the C (emulate_insn, emulate_mmio, getreg_num, setreg_num)
def seed_getreg_num(regs, num, mask):
    if mask == 0xFF and num & 4:
        return (regs[x86.REG_NAMES[num & 3]] >> 8) & 0xFF
    return regs[x86.REG_NAMES[num]] & mask


def seed_setreg_num(regs, num, val, mask):
    if mask == 0xFF and num & 4:
        name = x86.REG_NAMES[num & 3]
        regs[name] = (regs[name] & ~(0xFF << 8) & 0xFFFFFFFF) | ((val & 0xFF) << 8)
    else:
        name = x86.REG_NAMES[num]
        regs[name] = (regs[name] & ~mask & 0xFFFFFFFF) | (val & mask)


def seed_step(regs, trap, insn_bytes, addr, bus):
    """One trap as the seed handles it: (registers after, re-injected traps, accesses)."""
    regs = dict(regs)
    accesses = []

    def access(space, where, size, is_write, value):
        accesses.append((space, where, size, is_write, value))
        return None if bus.unclaimed(where) else (0 if is_write else bus.answer(space, where, size))

    if trap == 13:
        insn = x86.decode_port_insn(insn_bytes)
        if (regs["xcs"] & 3) != 1 or insn is None:
            return regs, [13], accesses
        if insn.kind == "cli":
            regs["eip"] = (regs["eip"] + 1) & 0xFFFFFFFF
            return regs, [], accesses
        port = regs["edx"] & 0xFFFF if insn.port_in_dx else insn.port
        mask = x86.MASKS[insn.width]
        eax = regs["eax"]
        result = access("pio", port, insn.width, insn.kind == "out",
                        eax & mask if insn.kind == "out" else 0)
        if result is None:
            return regs, [13], accesses
        if insn.kind == "in":
            regs["eax"] = (eax & ~mask & 0xFFFFFFFF) | (result & mask)
    else:
        insn = x86.decode_mmio_insn(insn_bytes)
        if insn is None:
            return regs, [14], accesses
        mask = x86.MASKS[insn.width]
        value = seed_getreg_num(regs, insn.reg, mask) if insn.is_write else 0
        result = access("mmio", addr, insn.width, insn.is_write, value)
        if result is None:
            return regs, [14], accesses
        if not insn.is_write:
            seed_setreg_num(regs, insn.reg, result, mask)
    regs["eip"] = (regs["eip"] + insn.length) & 0xFFFFFFFF
    return regs, [], accesses


# -- the streams ---------------------------------------------------------------------
def _port_insns():
    kinds = st.sampled_from(["in", "out"])
    widths = st.sampled_from([1, 2, 4])
    ports = st.one_of(st.none(), st.integers(0, 0xFF))
    return st.builds(x86.encode_port, kinds, widths, ports)


def _mmio_insns():
    def encode(kind, width, reg, mod, rm, sib, disp):
        return x86.encode_mov(kind, width, reg, mod=mod, rm=rm, sib=sib if rm == 4 else None,
                              disp=disp)
    return st.builds(encode, st.sampled_from(["load", "store"]), st.sampled_from([1, 2, 4]),
                     st.integers(0, 7), st.integers(0, 2), st.integers(0, 7),
                     st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF))


raw_insn = st.one_of(_port_insns(), _mmio_insns(), st.just(b"\xfa"), st.binary(max_size=7))
pool_entry = st.tuples(raw_insn, st.binary(min_size=7, max_size=7)).map(lambda p: (p[0] + p[1])[:7])
regs = st.fixed_dictionaries({
    **{n: st.integers(0, 0xFFFFFFFF) for n in ("eax", "ecx", "edx", "ebx", "esi", "edi", "ebp")},
    "eip": st.integers(0, 0xFFFFFF00),
    "xcs": st.sampled_from([0x61, 0x61, 0x61, 0x73, 0x60]),
})


@st.composite
def streams(draw):
    """Traps drawn from a small pool of instruction bytes, each as a GPF or a page
    fault (the same bytes may come as both: the cache must tell them apart)."""
    pool = draw(st.lists(pool_entry, min_size=1, max_size=5))
    picks = draw(st.lists(st.tuples(st.integers(0, len(pool) - 1), st.sampled_from([13, 14]),
                                    regs, st.integers(0, 0xFFFFFFFF)), min_size=1, max_size=25))
    return [(step_regs, Trap(trap, pool[index], addr)) for index, trap, step_regs, addr in picks]


def fresh(steps):
    return [(dict(r), Trap(t.number, t.insn, t.addr)) for r, t in steps]


@settings(max_examples=300, deadline=None)
@given(streams())
def test_fast_path_equals_decoding_every_trap_afresh(steps):
    after_cached, bus_cached, _ = run_stream(fresh(steps))
    after_fresh, bus_fresh, _ = run_stream(fresh(steps), cache=False)
    assert after_cached == after_fresh
    assert bus_cached == bus_fresh


@settings(max_examples=300, deadline=None)
@given(streams())
def test_fast_path_equals_the_seeds_emulation(steps):
    after, accesses, _ = run_stream(fresh(steps))
    bus = RecordingBus()
    cpu = {n: 0 for n in GENERAL + ("xcs",)}
    cpu.update(eip=0x100000, xcs=0x61)
    expected_accesses = []
    for i, (step_regs, trap) in enumerate(steps):
        cpu.update(step_regs)
        cpu, reinjected, step_accesses = seed_step(cpu, trap.number, trap.insn, trap.addr, bus)
        expected_accesses += step_accesses
        registers, got_reinjected = after[i + 1]
        assert registers == {n: cpu[n] for n in GENERAL}, f"step {i}: {trap}"
        assert got_reinjected == reinjected, f"step {i}: {trap}"
    assert accesses == expected_accesses


def test_a_pit_read_makes_the_seeds_register_round_trips():
    # in $0x42,%al: GETREG xcs, eax, eip; SETREG eax, eip, as the seed does.
    _, _, requests = run_stream([({"eax": 0x1234, "eip": 0x2000}, Trap(13, b"\xe4\x42\x90"))])
    got = [(r, x86.USER_REGS_NAMES[o]) for r, o in requests if r in (LHREQ_GETREG, LHREQ_SETREG)]
    assert got == [(LHREQ_GETREG, "xcs"), (LHREQ_GETREG, "eax"), (LHREQ_SETREG, "eax"),
                   (LHREQ_GETREG, "eip"), (LHREQ_SETREG, "eip")]


def test_a_32_bit_in_fetches_eax_as_the_seed_did():
    # Recorded trap streams replay only if the requests are the seed's, GETREG eax included.
    _, _, requests = run_stream([({"eax": 0x1234, "edx": 0xCFC}, Trap(13, b"\xed\x90"))])
    gets = [x86.USER_REGS_NAMES[o] for r, o in requests if r == LHREQ_GETREG]
    assert gets == ["xcs", "edx", "eax", "eip"]


def test_the_plan_cache_stays_bounded_whatever_the_guest_runs():
    steps = [({"eip": 0x1000}, Trap(13, b"\xe4" + i.to_bytes(6, "little"))) for i in range(PLAN_CACHE_SIZE + 50)]
    script = Script(steps)
    model = LguestKernelModel(script, word_size=8)
    backend = LguestBackend(word_size=8, opener=model.open, pread=model.pread,
                            pwrite=model.pwrite, closer=model.close, warn=lambda m: None)
    memory = type("Mapped", (), {"size": 1 << 20, "host_address": 0x10000000})()
    backend.initialize(memory, 0x100000)
    run_guest(backend, RecordingBus())
    assert 0 < len(backend._plans) <= PLAN_CACHE_SIZE
