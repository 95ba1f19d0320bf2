"""Whole runs of the fake backend: record a trap stream, replay it, see what changed.

The fake backend (lguest.backends.fake) runs the launcher's real trap path against a
simulated guest: the guest's driver code traps on every port and MMIO access, the
launcher decodes the instruction and answers through the PCI bus and the devices. A
recording is that exchange, record by record (trap, registers, the launcher's answer);
a replay feeds the recorded traps to a launcher again and raises TraceDivergence,
naming the record and the field, at the first answer that differs. So a recording made
before a change to a device, replayed after it, says exactly where the change shows.

    runs = FakeRuns()
    records = runs.record(["console", "block:8", "rng"])
    runs.replay(records, ["console", "block:16", "rng"])    # raises TraceDivergence
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from ..backends import tracefile
from ..devices.base import VirtioDevice
from ..simulation import simulate

if TYPE_CHECKING:
    from ..backends.base import Exit
    from ..pci.bus import PciBus

__all__ = ["FakeRuns", "DEFAULT_KINDS"]

# The simulated devices of the default scenario (L:570's driver tour).
DEFAULT_KINDS = ("console", "block:8", "rng")


class FakeRuns:
    """Run, record and replay the fake backend over simulated or your own devices.

    kinds: simulated devices ("console", "block[:SECTORS][,ro]", "rng"); devices:
    VirtioDevice objects instead. Other keywords go to lguest.simulate (seed, scenario,
    mem_mb, word_size, log)."""

    def run(self, kinds: Iterable[str] = DEFAULT_KINDS, *,
            devices: list[VirtioDevice] | None = None, **options: Any) -> tuple[Exit, PciBus]:
        """One run; returns (exit, bus): how the guest ended and the bus it ran on."""
        exit_, bus, _ = simulate(list(kinds), devices=devices, **options)
        return exit_, bus

    def record(self, kinds: Iterable[str] = DEFAULT_KINDS, *,
               devices: list[VirtioDevice] | None = None, path: str | None = None,
               **options: Any) -> list[dict]:
        """One run, recorded; the records (also written to `path` if given)."""
        records: list[dict] = []
        simulate(list(kinds), devices=devices, record=records, **options)
        if path is not None:
            tracefile.write_trace(path, {"kinds": list(kinds)}, records)
        return records

    def replay(self, records: list[dict] | str, kinds: Iterable[str] = DEFAULT_KINDS, *,
               devices: list[VirtioDevice] | None = None,
               **options: Any) -> tuple[Exit, PciBus]:
        """Replay records (or a trace file's path); TraceDivergence at the first change."""
        if isinstance(records, str):
            _, records = tracefile.read_trace(records)
        exit_, bus, _ = simulate(list(kinds), devices=devices, replay=records, **options)
        return exit_, bus
