"""How many examples a property runs: its own count normally, the long profile's in a
campaign (HYPOTHESIS_PROFILE=long, as scripts/fuzz-campaign sets it).

A test's own @settings(max_examples=N) overrides the loaded profile, so without this a
long campaign would run those tests at their everyday count. Use
@settings(max_examples=examples(N)) instead of a bare N.
"""

import os

from hypothesis import settings


def long_campaign():
    return os.environ.get("HYPOTHESIS_PROFILE") == "long"


def examples(everyday, *, long=None):
    """`everyday` normally; in a long campaign the long profile's count (tests/conftest.py,
    5,000), or `long` for a property whose every example is a whole simulated run."""
    if not long_campaign():
        return everyday
    return max(everyday, long if long is not None else settings.get_profile("long").max_examples)
