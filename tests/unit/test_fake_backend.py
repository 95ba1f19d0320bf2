"""The fake backend's trap path, against a small stub bus (no PCI needed)."""

import pytest

from lguest.backends import GuestDied, MMIO, PIO
from lguest.backends.fake import FakeBackend, SimulatedGuest
from lguest.backends import tracefile
from lguest.launcher import run_guest
from lguest.memory import GuestMemory
from lguest import x86


class StubBus:
    """Registers at ports and MMIO addresses; writing MMIO 0x9000 raises irq 3."""

    def __init__(self):
        self.space = {}
        self.log = []
        self.irq_sink = None

    def access(self, space, addr, size, is_write, value=0):
        self.log.append((space, addr, size, is_write, value))
        if is_write:
            self.space[(space, addr)] = value
            if (space, addr) == (MMIO, 0x9000) and self.irq_sink:
                self.irq_sink(3)
            return 0
        return self.space.get((space, addr), 0xFFFFFFFF) & ((1 << (8 * size)) - 1)


def scenario(guest):
    seen = []
    guest.on_interrupt = seen.append
    guest.privilege_probe()
    guest.cli()
    for n in range(40):
        size = (1, 2, 4)[n % 3]
        value = (0x9A8B7C6D5E * (n + 1)) & ((1 << (8 * size)) - 1)
        for space, addr in ((PIO, 0x40 + n), (PIO, 0xCF8), (MMIO, 0x8000 + 8 * n)):
            guest.io(space, addr, size, True, value)
            got = guest.io(space, addr, size, False)
            assert got == value, (space, hex(addr), size, got, value)
    guest.io(MMIO, 0x9000, 4, True, 1)
    assert seen == [3]
    return "all forty accesses read back"


def run(**kwargs):
    bus = StubBus()
    memory = GuestMemory(1 << 20)
    with FakeBackend(scenario, **kwargs) as backend:
        backend.attach_bus(bus)
        backend.initialize(memory, 0x100000, mmio_limit=0x10000)
        exit_ = run_guest(backend, bus)
    memory.close()
    return exit_, bus, backend


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_access_survives_the_trap_path(seed):
    exit_, bus, backend = run(seed=seed)
    assert isinstance(exit_, GuestDied)
    assert (exit_.status, exit_.reason) == (0, "all forty accesses read back")
    assert len(bus.log) == 40 * 6 + 1
    assert backend.guest.interrupts_seen == 1


def test_a_launcher_that_misplaces_eip_is_caught(monkeypatch):
    from lguest.backends.lguest_dev import LguestBackend
    real = LguestBackend._advance
    monkeypatch.setattr(LguestBackend, "_advance", lambda self, n: real(self, n + (n == 3)))
    exit_, _, _ = run(seed=4)
    assert exit_.status == 1
    assert "eip is" in exit_.reason


def test_a_launcher_that_clobbers_upper_bits_is_caught(monkeypatch):
    from lguest.backends.lguest_dev import LguestBackend
    real = LguestBackend.set_reg
    monkeypatch.setattr(LguestBackend, "set_reg", lambda self, name, value:
                        real(self, name, value if name == "eip" else value & 0xFFFF))
    exit_, _, _ = run(seed=5)
    assert exit_.status == 1
    assert "changed bits of eax outside the operand" in exit_.reason


def test_record_then_replay_agrees_and_a_change_is_a_divergence(tmp_path):
    records = []
    exit_, _, _ = run(seed=7, record=records)
    assert exit_.status == 0
    assert records[0]["type"] == "initialize" and records[-1]["type"] == "died"
    path = tmp_path / "stub.trace"
    tracefile.write_trace(path, {"comment": "stub bus"}, records)
    header, again = tracefile.read_trace(path)
    assert again == records and header["version"] == 1
    # Replay: same launcher, same bus: no divergence, and it ends as recorded.
    exit2, bus, _ = run(replay=again)
    assert exit2.reason == exit_.reason
    # Tamper with one answer: replay names the record and the field.
    traps = [i for i, r in enumerate(again) if r["type"] == "trap" and r["response"]["regs"]]
    broken = [dict(r) for r in again]
    n = traps[5]
    broken[n] = dict(broken[n], response=dict(broken[n]["response"], regs=[["eip", 1]]))
    with pytest.raises(tracefile.TraceDivergence, match=f"record {n + 1}") as info:
        run(replay=broken)
    assert "response regs" in str(info.value)
