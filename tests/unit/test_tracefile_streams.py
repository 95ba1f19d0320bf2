"""The checked-in trap streams (tests/data/*.trace) replay against today's launcher.

Each was made by scripts/make-trace-fake.py (see its header's "comment"); if a change
to the launcher, bus, transport or devices alters any answer the guest saw, replay
stops at the first record that differs and says how.
"""

import json
import pathlib

import pytest

from lguest.backends import tracefile
from lguest.simulation import simulate

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
STREAMS = sorted(DATA.glob("*.trace"))


def replay(path):
    header, records = tracefile.read_trace(path)
    config = header["config"]
    exit_, _, _ = simulate(config["devices"], mem_mb=config["mem_mb"], replay=records,
                           word_size=config["word_size"])
    return exit_, records


def test_there_are_streams():
    assert len(STREAMS) >= 2


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_stream_replays_without_divergence(path):
    exit_, records = replay(path)
    assert records[-1]["type"] == "died"
    assert exit_.reason == records[-1]["reason"]
    assert "devices worked" in exit_.reason


def test_a_changed_device_is_caught_at_the_first_divergent_record(monkeypatch):
    from lguest.devices import block
    real_init = block.BlockDevice.__init__

    def no_flush(self, *a, **k):
        real_init(self, *a, **k)
        self.features &= ~(1 << block.F_FLUSH)
    monkeypatch.setattr(block.BlockDevice, "__init__", no_flush)
    path = DATA / "fake-console-block-rng.trace"
    with pytest.raises(tracefile.TraceDivergence) as info:
        replay(path)
    message = str(info.value)
    assert "trace diverges at record" in message
    assert "response regs: expected" in message      # the feature word read differently


def test_recording_twice_with_one_seed_gives_the_same_stream():
    one, two = [], []
    simulate(["console", "rng"], seed=3, record=one)
    simulate(["console", "rng"], seed=3, record=two)
    assert one == two and len(one) > 100


def test_bad_streams_are_refused_clearly(tmp_path):
    wrong_version = tmp_path / "v2.trace"
    wrong_version.write_text(json.dumps({"format": "lguest-trace", "version": 2}) + "\n")
    with pytest.raises(tracefile.TraceError, match="version 2"):
        tracefile.read_trace(wrong_version)
    not_trace = tmp_path / "x.trace"
    not_trace.write_text('{"hello": 1}\n')
    with pytest.raises(tracefile.TraceError, match="header"):
        tracefile.read_trace(not_trace)
    bad_record = tmp_path / "y.trace"
    bad_record.write_text(json.dumps({"format": "lguest-trace", "version": 1}) + '\n{"type": "dance"}\n')
    with pytest.raises(tracefile.TraceError, match="dance"):
        tracefile.read_trace(bad_record)
