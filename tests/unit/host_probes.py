"""What this host lets a test make, asked once: each answer is None (it can) or why not."""

import functools

import pytest

from lguest.errors import LauncherError


@functools.lru_cache(maxsize=None)
def tap_unavailable():
    """None if we can open a tap here (/dev/net/tun and CAP_NET_ADMIN), else why not."""
    from lguest.host.tap import open_tap
    try:
        open_tap().close()
    except LauncherError as e:
        return str(e)
    return None


needs_tap = pytest.mark.skipif(tap_unavailable() is not None,
                               reason=f"cannot create a tap here: {tap_unavailable()}")
