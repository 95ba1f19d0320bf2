#!/usr/bin/env python3
"""Example (b): record a trap stream, change a device, and let the replay find it.

The fake backend runs the launcher's whole trap path against a simulated guest (its
driver code traps on every port and MMIO access; the launcher decodes and answers
through the PCI bus and the devices). Recording keeps that exchange record by record;
replaying feeds the recorded traps to a launcher again and stops at the first answer
that differs, naming the record, the trap and the register. So a recording made before
a device change, replayed after it, is a regression test that says *where* the change
shows, not only that something did.

Run it:  python examples/record_replay.py     (or: pytest examples/record_replay.py)
"""

import sys

import pytest

import lguest
from lguest.simulation import simulated_devices

KINDS = ["console", "block:8", "rng"]     # what the simulated guest's driver tour uses


def changed_block_devices():
    """The same devices, but the block device says it has 9 sectors, not 8 (a bug
    of the kind that slips into a config-space layout)."""
    devices = simulated_devices(KINDS)
    block = devices[1]
    block.config[0:8] = (9).to_bytes(8, "little")     # virtio_blk_config.capacity
    return devices


def test_replay_of_an_unchanged_launcher_agrees(fake_backend, tmp_path):
    trace = tmp_path / "tour.trace.gz"
    records = fake_backend.record(KINDS, path=str(trace))
    assert records[0]["type"] == "initialize" and records[-1]["type"] == "died"
    header, stored = lguest.read_trace(str(trace))
    assert stored == records
    fake_backend.replay(str(trace), KINDS)                 # no divergence: it agrees


def test_replay_with_a_changed_device_names_the_first_difference(fake_backend, tmp_path):
    trace = tmp_path / "tour.trace.gz"
    fake_backend.record(KINDS, path=str(trace))
    with pytest.raises(lguest.TraceDivergence) as caught:
        fake_backend.replay(str(trace), devices=changed_block_devices())
    message = str(caught.value)
    # The driver read the capacity (a load from BAR0's device config), e.g.
    #   trace diverges at record 348 (trap 14 (movl %esi (load)) at addr 0x9000bc):
    #     response regs: expected [['esi', 8], ...], got [['esi', 9], ...]
    assert "trace diverges at record" in message and "(load)" in message
    expected, got = message.split("expected", 1)[1].split("got", 1)
    assert "8]" in expected and "9]" in got


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
