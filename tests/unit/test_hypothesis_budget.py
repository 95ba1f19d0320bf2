"""HYPOTHESIS_PROFILE=long really makes the properties long, even those that set their
own max_examples (which overrides the profile)."""

import json
import os
import subprocess
import sys


from hypothesis_budget import examples

HERE = os.path.dirname(os.path.abspath(__file__))
CAMPAIGN = ["test_virtqueue_hostile", "test_transport", "test_fake_properties",
            "test_hostile_devices", "test_hostile_traps", "test_hostile_vhost_user"]

PROBE = r"""
import importlib, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import conftest                     # registers and loads the profiles
counts = {}
for name in sys.argv[3:]:
    module = importlib.import_module(name)
    for attr, fn in vars(module).items():
        s = getattr(fn, "_hypothesis_internal_use_settings", None)
        if attr.startswith("test_") and s is not None:
            counts[f"{name}.{attr}"] = s.max_examples
print(json.dumps(counts))
"""


def max_examples(profile):
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile)
    out = subprocess.run([sys.executable, "-c", PROBE, os.path.dirname(HERE), HERE, *CAMPAIGN],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_examples_is_the_everyday_count_outside_a_campaign(monkeypatch):
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    assert examples(20) == 20 and examples(20, long=1000) == 20


def test_the_long_profile_raises_every_campaign_property_to_5000():
    everyday, long = max_examples("default"), max_examples("long")
    assert set(everyday) == set(long) and len(long) >= 12
    for name, count in long.items():
        assert count >= 1000, f"{name}: {count} examples in a long campaign"
        assert count >= everyday[name]
    assert sum(1 for c in long.values() if c == 5000) >= len(long) - 1
    assert max(everyday.values()) < 5000


def test_fuzz_campaign_promises_what_the_profile_gives():
    with open(os.path.join(HERE, "..", "..", "scripts", "fuzz-campaign")) as f:
        script = f.read()
    assert "HYPOTHESIS_PROFILE=long" in script and "5,000 examples" in script
    with open(os.path.join(HERE, "..", "conftest.py")) as f:
        assert 'register_profile("long", max_examples=5000' in f.read()
