"""The guest kits the hardware tests boot, each fetched once or skipped, saying why."""

import pytest

from lguest.errors import LauncherError


def kit_or_skip(ensure, what):
    """ensure()'s kit; where it cannot be had (no network, no package), the test is
    skipped with the kit's own reason, never failed: a machine without it is not broken."""
    try:
        return ensure()
    except LauncherError as e:
        pytest.skip(f"no {what} guest kit: {e}")
