import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_collection_modifyitems(config, items):
    # Everything under tests/hw is a hw test, whether or not it says so itself.
    for item in items:
        if os.sep + "hw" + os.sep in str(item.fspath):
            item.add_marker(pytest.mark.hw)


from hypothesis import HealthCheck, settings  # noqa: E402

# One profile for CI and developers: bounded, no per-example deadline (2 shared cores).
settings.register_profile("default", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
