"""Fixtures the hardware tests share."""

import pytest

from kits import kit_or_skip
from lguest.uml import kit


@pytest.fixture(scope="session")
def uml():
    """The UML guest kit (kernel, initramfs), fetched once; skips, saying why, without it."""
    return kit_or_skip(kit.ensure_kit, "UML")
