"""lguest-py's pytest plugin: on in every pytest run where lguest is installed.

Registered as the `pytest11` entry point "lguest" (disable with `-p no:lguest`).

Markers
    @pytest.mark.hw                 needs real hardware or a real kernel; run or leave
                                    out with `-m hw` / `-m "not hw"`.
    @pytest.mark.hw("uml", "kvm", "lguest")
                                    ... and skip, saying why, unless each is here:
                                    "uml" a UML guest kit (linux.uml + initramfs, fetched
                                    with apt-get on first use), "kvm" a usable /dev/kvm,
                                    "lguest" a usable /dev/lguest.
    @pytest.mark.lguest_guest(**options)
                                    Guest options (block=[...], console=True, mem=...,
                                    net=..., ip=..., timeout=...) for `lguest_guest`.

Fixtures
    lguest_guest          a booted lguest.Guest (UML), powered off after the test; its
                          options from the marker above or from indirect parametrization
                          (`@pytest.mark.parametrize("lguest_guest", [{...}], indirect=True)`).
                          Skips, saying why, where no UML kit can be had.
    lguest_guest_options  {} by default: override it in a conftest or test module to
                          build options from other fixtures (block=[tmp_path / ...]).
    lguest_shared_guest   one booted Guest without devices for the whole session: a
                          command costs milliseconds, not a boot.
    lguest_kit            the UML kit (session-scoped), or a skip saying why.
    lguest_kernel         the path given by --lguest-kernel (or $LGUEST_KERNEL): a guest
                          kernel for /dev/lguest tests; skips when there is none.
    virtio_driver         a factory: virtio_driver(device, ...) -> DriverHarness, our
                          guest-side driver on a PCI bus with your devices, live; closed
                          after the test.
    fake_backend          a FakeRuns: .run()/.record()/.replay() whole fake-backend runs.

Options
    --lguest-kernel=PATH  the guest kernel (as $LGUEST_KERNEL).

Nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

import os

import pytest

HW_NEEDS = ("uml", "kvm", "lguest")


def pytest_addoption(parser):
    group = parser.getgroup("lguest", "lguest-py")
    group.addoption("--lguest-kernel", metavar="PATH", default=None,
                    help="guest kernel for lguest hw tests (default: $LGUEST_KERNEL)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "hw(*needs): needs a real kernel device (/dev/lguest, /dev/kvm) or a real "
        "guest kernel (UML); with needs ('uml', 'kvm', 'lguest') it skips, saying why, "
        "where one is missing")
    config.addinivalue_line(
        "markers", "lguest_guest(**options): lguest.Guest options for the lguest_guest fixture")


def missing_hw(need: str) -> str | None:
    """Why `need` ("uml", "kvm", "lguest") is not available here, or None if it is."""
    if need == "kvm":
        if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "no usable /dev/kvm on this host"
        return None
    if need == "lguest":
        from ..backends.lguest_dev import DEVICE_PATH
        if not os.path.exists(DEVICE_PATH):
            return (f"{DEVICE_PATH} is missing: no lguest module on this host "
                    "(Linux removed lguest in 4.14)")
        if not os.access(DEVICE_PATH, os.R_OK | os.W_OK):
            return f"{DEVICE_PATH} exists but is not readable and writable by us"
        return None
    if need == "uml":
        try:
            _kit()
        except Exception as e:           # LauncherError, or no apt-get: say it, skip
            return f"no UML guest kit: {e}"
        return None
    raise pytest.UsageError(f"@pytest.mark.hw({need!r}): known needs are {HW_NEEDS}")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("hw"):
        for need in mark.args:
            reason = missing_hw(need)
            if reason:
                pytest.skip(reason)


_KIT = {}


def _kit():
    if "kit" not in _KIT:
        from ..uml import kit
        try:
            _KIT["kit"] = kit.ensure_kit()
        except Exception as e:
            _KIT["kit"] = e
    if isinstance(_KIT["kit"], Exception):
        raise _KIT["kit"]
    return _KIT["kit"]


@pytest.fixture(scope="session")
def lguest_kit():
    """The UML guest kit (kernel, initramfs), built once; a skip saying why if it can't be."""
    reason = missing_hw("uml")
    if reason:
        pytest.skip(reason)
    return _kit()


@pytest.fixture(scope="session")
def lguest_kernel(pytestconfig):
    """The guest kernel path from --lguest-kernel or $LGUEST_KERNEL; skips without one."""
    path = pytestconfig.getoption("lguest_kernel") or os.environ.get("LGUEST_KERNEL")
    if not path:
        pytest.skip("no guest kernel: pass --lguest-kernel=PATH or set LGUEST_KERNEL")
    if not os.path.isfile(path):
        pytest.skip(f"--lguest-kernel {path}: no such file")
    return path


@pytest.fixture
def lguest_guest_options():
    """Override this fixture to compute lguest_guest's options (e.g. from tmp_path)."""
    return {}


def _guest_options(request):
    options = dict(request.getfixturevalue("lguest_guest_options"))
    for mark in reversed(list(request.node.iter_markers("lguest_guest"))):
        options.update(mark.kwargs)       # the closest marker wins
    if getattr(request, "param", None) is not None:
        options.update(request.param)
    return options


@pytest.fixture
def lguest_guest(request, lguest_kit):
    """A booted lguest.Guest with this test's options; powered off afterwards."""
    from ..uml.guest import Guest
    options = _guest_options(request)
    options.setdefault("timeout", 60.0)
    with Guest(kit=lguest_kit, **options) as guest:
        guest.boot()
        yield guest


@pytest.fixture(scope="session")
def lguest_shared_guest(lguest_kit):
    """One booted device-less Guest for the session (a fresh /root per command)."""
    from ..uml.guest import Guest
    with Guest(kit=lguest_kit, timeout=60.0) as guest:
        guest.boot()
        yield guest


@pytest.fixture
def virtio_driver():
    """virtio_driver(*devices, runners=None) -> a live DriverHarness, closed afterwards."""
    from .harness import DriverHarness
    made = []

    def make(*devices, **options):
        harness = DriverHarness(*devices, **options)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def fake_backend():
    """A FakeRuns: run, record and replay whole runs of the fake backend."""
    from .fake import FakeRuns
    return FakeRuns()
