"""Fixtures the hardware tests share."""

import pytest

from lguest.errors import LauncherError
from lguest.uml import kit


@pytest.fixture(scope="session")
def uml():
    """The UML guest kit (kernel, initramfs), fetched once; skips, saying why, without it."""
    try:
        return kit.ensure_kit()
    except LauncherError as e:
        pytest.skip(f"no UML guest kit: {e}")
