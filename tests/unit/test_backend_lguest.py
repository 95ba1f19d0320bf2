"""The /dev/lguest backend against the in-process model of lguest_user.c, 4- and 8-byte words."""

import errno
from types import SimpleNamespace

import pytest

from lguest import x86
from lguest.backends import GuestDied, IoExit, RebootRequested, PIO, MMIO
from lguest.backends.lguest_dev import (ERESTART, LHREQ_GETREG, LHREQ_INITIALIZE, LHREQ_IRQ,
                                        LHREQ_SETREG, LHREQ_TRAP, LguestBackend, pack_words)
from lguest.backends.lguest_model import Die, LguestKernelModel, Reboot, Signal, Trap
from lguest.errors import LauncherError
from lguest.memory import GuestMemory

WORDS = [4, 8]


class Script:
    """A guest program: each run() applies the next step's register changes and
    returns its event, recording what the launcher left in the CPU before it."""

    def __init__(self, *steps):
        self.steps = list(steps)
        self.seen = []

    def run(self, cpu):
        self.seen.append((dict(cpu.regs), cpu.take_interrupts(), cpu.take_reinjected()))
        if not self.steps:
            return Die("script finished")
        regs, event = self.steps.pop(0)
        cpu.regs.update(regs)
        return event


def make(word, *steps, warnings=None):
    guest = Script(*steps)
    model = LguestKernelModel(guest, word_size=word)
    backend = LguestBackend(word_size=word, opener=model.open, pread=model.pread,
                            pwrite=model.pwrite, closer=model.close,
                            warn=(warnings.append if warnings is not None else lambda m: None))
    # A 4-byte-word host has 32-bit addresses: stand in for its mapping.
    memory = GuestMemory(1 << 20) if word == 8 else SimpleNamespace(size=1 << 20, host_address=0xB0000000)
    backend.initialize(memory, 0x100000, mmio_limit=(1 << 20) + 8192 + 1)
    return backend, model, guest, memory


def ok_pwrite(model, word, *words):
    return model.pwrite(model.FD, pack_words(words, word), 0)


def errno_of(call):
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


@pytest.mark.parametrize("word", WORDS)
def test_model_request_rules(word):
    model = LguestKernelModel(Script(), word_size=word)
    # Anything before INITIALIZE is EINVAL, reads too.
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_IRQ, 1)) == errno.EINVAL
    assert errno_of(lambda: model.pread(model.FD, 12, 0)) == errno.EINVAL
    assert ok_pwrite(model, word, LHREQ_INITIALIZE, 0x1000, 256, 0x400, 258) == 4 * word
    assert model.cpu.regs["eip"] == 0x400 and model.cpu.pfn_limit == 256
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_INITIALIZE, 0, 1, 2, 3)) == errno.EBUSY
    assert errno_of(lambda: ok_pwrite(model, word, 99)) == errno.EINVAL
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_IRQ, 32)) == errno.EINVAL
    assert ok_pwrite(model, word, LHREQ_IRQ, 31) == 0 and model.cpu.irqs == {31}
    # orig_eax (44) is in user_regs_struct but lguest_arch_regptr() has no pointer for it.
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_GETREG, 44)) == errno.ENOENT
    # xcs is readable but not settable.
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_SETREG, 52, 3)) == errno.ENOENT
    assert ok_pwrite(model, word, LHREQ_SETREG, 24, 0xABCD) == 3 * word
    assert ok_pwrite(model, word, LHREQ_GETREG, 24) == 2 * word
    assert model.pread(model.FD, word, 0) == (0xABCD).to_bytes(word, "little")
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_TRAP, 256)) == errno.EINVAL
    assert ok_pwrite(model, word, LHREQ_TRAP, 13) == 0 and model.cpu.reinjected == [13]
    # A short write cannot even hold the request word.
    assert errno_of(lambda: model.pwrite(model.FD, b"\0" * (word - 1), 0)) == errno.EFAULT


@pytest.mark.parametrize("word", WORDS)
def test_death_then_reason_then_enoent_for_requests(word):
    model = LguestKernelModel(Script((({}, Die("CRASH: Power down")))), word_size=word)
    ok_pwrite(model, word, LHREQ_INITIALIZE, 0, 1, 0, 1)
    assert errno_of(lambda: model.pread(model.FD, 12, 0)) == errno.ENOENT
    assert model.pread(model.FD, 100, 0) == b"CRASH: Power down\0"
    assert errno_of(lambda: ok_pwrite(model, word, LHREQ_IRQ, 1)) == errno.ENOENT


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("end", [Die("CRASH: Power down"), Reboot()])
def test_an_interrupt_after_the_guest_is_gone_is_dropped(word, end):
    # A device thread racing the launcher's clean-up (seen on a real lguest host at a
    # reboot): the kernel answers ENOENT, and that must not end us with a traceback.
    backend, model, _, _ = make(word, ({}, end))
    assert isinstance(backend.run(), (GuestDied, RebootRequested))
    backend.interrupt(5)                       # no exception
    backend.close()


@pytest.mark.parametrize("word", WORDS)
def test_reboot_is_erestart_every_time(word):
    model = LguestKernelModel(Script(({}, Reboot())), word_size=word)
    ok_pwrite(model, word, LHREQ_INITIALIZE, 0, 1, 0, 1)
    assert errno_of(lambda: model.pread(model.FD, 12, 0)) == ERESTART
    assert errno_of(lambda: model.pread(model.FD, 12, 0)) == ERESTART


@pytest.mark.parametrize("word", WORDS)
def test_initialize_words(word):
    backend, model, _, memory = make(word)
    assert model.cpu.memory_base == memory.host_address
    assert model.cpu.pfn_limit == 256
    assert model.cpu.device_limit == 256 + 3      # rounded up to the page
    assert backend.get_reg("xcs") & 3 == 1


def test_a_word_that_does_not_fit_is_refused():
    with pytest.raises(LauncherError, match="4-byte"):
        pack_words([1 << 32], 4)
    assert pack_words([1 << 32], 8) == (1 << 32).to_bytes(8, "little")


@pytest.mark.parametrize("word", WORDS)
def test_port_in_writes_only_the_low_bits_of_eax_and_advances_eip(word):
    code = x86.encode_port("in", 2, None)          # in (%dx),%ax
    backend, model, guest, _ = make(word, ({"eax": 0x12345678, "edx": 0x10CFC, "eip": 0x5000},
                                           Trap(13, code)))
    ex = backend.run()
    assert (ex.space, ex.addr, ex.size, ex.is_write) == (PIO, 0xCFC, 2, False)
    ex.complete(0xBEEF)
    assert model.cpu.regs["eax"] == 0x1234BEEF
    assert model.cpu.regs["eip"] == 0x5000 + len(code)


@pytest.mark.parametrize("word", WORDS)
def test_port_out_reports_the_value(word):
    code = x86.encode_port("out", 4, 0xF8)
    backend, model, _, _ = make(word, ({"eax": 0x80000800, "eip": 0x10}, Trap(13, code)))
    ex = backend.run()
    assert (ex.space, ex.addr, ex.size, ex.is_write, ex.value) == (PIO, 0xF8, 4, True, 0x80000800)
    ex.complete()
    assert model.cpu.regs["eip"] == 0x12 and model.cpu.regs["eax"] == 0x80000800


@pytest.mark.parametrize("word", WORDS)
def test_user_mode_port_access_and_unknown_insns_are_reinjected(word):
    warnings = []
    backend, model, guest, _ = make(
        word,
        ({"xcs": 0x73, "eip": 0x40}, Trap(13, b"\xec")),         # CPL 3
        ({"xcs": 0x61}, Trap(13, b"\x0f\x0b")),                  # ud2: not ours
        ({}, Trap(14, b"\xc7\x00\0\0\0\0\0", 0x200000)),         # mov $imm: not ours
        ({}, Trap(13, b"\xfa")),                                 # cli: skipped
        warnings=warnings)
    ex = backend.run()
    assert isinstance(ex, GuestDied) and ex.reason == "script finished"
    reinjected = [r for _, _, r in guest.seen]
    assert reinjected == [[], [13], [13], [14], []]
    assert model.cpu.regs["eip"] == 0x41                        # only cli moved eip
    assert any("Unknown MMIO instruction touching 0x200000" in w for w in warnings)


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("reg,width", [(0, 4), (6, 1), (2, 1), (5, 2)])
def test_mmio_load_and_store_use_the_modrm_register(word, reg, width):
    regs = {"eax": 0x11111111, "edx": 0xAABBCCDD, "ebp": 0x0F0F1234, "eip": 0x1000}
    store = x86.encode_mov("store", width, reg, mod=1, rm=3, disp=8)
    load = x86.encode_mov("load", width, reg, mod=2, rm=4, sib=0x24, disp=0x100)
    backend, model, _, _ = make(word, (regs, Trap(14, store, 0x100010)), ({}, Trap(14, load, 0x100020)))
    ex = backend.run()
    assert (ex.space, ex.addr, ex.size, ex.is_write) == (MMIO, 0x100010, width, True)
    assert ex.value == x86.read_register(regs, reg, width)
    ex.complete()
    assert model.cpu.regs["eip"] == 0x1000 + len(store)
    ex = backend.run()
    assert not ex.is_write
    ex.complete(0x5A5A5A5A)
    name, expected = x86.merge_register(model.cpu.regs, reg, width, 0x5A5A5A5A)
    assert model.cpu.regs[name] == expected
    assert x86.read_register(model.cpu.regs, reg, width) == 0x5A5A5A5A & x86.MASKS[width]
    assert model.cpu.regs["eip"] == 0x1000 + len(store) + len(load)


@pytest.mark.parametrize("word", WORDS)
def test_interrupts_reach_the_guest_and_eintr_runs_again(word):
    backend, model, guest, _ = make(word, ({}, Signal()), ({}, Reboot()))
    backend.interrupt(5)
    with pytest.raises(LauncherError):
        backend.interrupt(40)                 # >= LGUEST_IRQS: EINVAL, while it lives
    assert isinstance(backend.run(), RebootRequested)
    assert guest.seen[0][1] == [5]


def test_reject_reinjects_with_a_warning():
    warnings = []
    backend, model, guest, _ = make(8, ({}, Trap(13, b"\xee")), warnings=warnings)
    ex = backend.run()
    ex.reject()
    assert model.cpu.reinjected == [13]
    assert warnings and "write to port" in warnings[0]


def test_missing_device_is_a_clear_launcher_error(tmp_path):
    with pytest.raises(LauncherError, match="lguest"):
        LguestBackend(str(tmp_path / "no-lguest-here"))
