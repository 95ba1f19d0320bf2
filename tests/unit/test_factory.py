"""The one device factory (L:940): every transport gets the same devices from it."""

import pytest

from lguest.config import DeviceSpec
from lguest.devices.block import BlockDevice
from lguest.errors import LauncherError
from lguest.host import build_device
from lguest.host import factory, tap as tap_module
from lguest.simulation import simulated_devices
from lguest.vhost_user import served


class FakeTap:
    def __init__(self, name="tapX"):
        self.name, self.fd, self.closed = name, -1, False

    def close(self):
        self.closed = True


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4096))
    return path


def get_id(device):
    """The GET_ID answer as the device gives it (None: no serial, UNSUPP)."""
    return device.serial


def test_pci_and_vhost_user_block_devices_have_the_same_serial(image):
    host = build_device(DeviceSpec("block", path=str(image)))
    vhost = served.block(str(image))
    try:
        assert isinstance(vhost.device, BlockDevice)
        assert get_id(host.device) == get_id(vhost.device) == b"disk.img"
        assert vhost.device.name == "vda"
    finally:
        host.close()
        vhost.close()


def test_block_spec_options_are_the_same_everywhere(image):
    rw = served.block(f"{image},rw")
    ro = served.block(f"{image},ro")
    try:
        assert (rw.device.read_only, ro.device.read_only) == (False, True)
    finally:
        rw.close()
        ro.close()
    with pytest.raises(LauncherError, match="only options"):
        served.block(f"{image},sync")


@pytest.mark.parametrize("make", [
    lambda: served.net_tap("tap:tapX:10.9.9.1"),
    lambda: build_device(DeviceSpec("net", ip="10.9.9.1")),
], ids=["vhost-user", "pci"])
def test_a_tap_that_fails_to_configure_is_closed(monkeypatch, make):
    opened = []

    def open_tap(name="tap%d"):
        opened.append(FakeTap())
        return opened[-1]

    def configure_device(name, ip=None, prefix=None):
        raise LauncherError(f"Setting {name} interface address: Operation not permitted")

    monkeypatch.setattr(tap_module, "open_tap", open_tap)
    monkeypatch.setattr(tap_module, "configure_device", configure_device)
    with pytest.raises(LauncherError, match="interface address"):
        make()
    assert len(opened) == 1 and opened[0].closed


def test_a_named_tap_without_an_address_is_left_as_it_is(monkeypatch):
    configured = []
    monkeypatch.setattr(tap_module, "open_tap", lambda name="tap%d": FakeTap(name))
    monkeypatch.setattr(tap_module, "configure_device", lambda *a: configured.append(a))
    dev = served.net_tap("tap:mytap", mac="52:54:00:00:00:09")
    try:
        assert configured == [] and bytes(dev.device.config[:6]) == bytes.fromhex("525400000009")
    finally:
        dev.device.close()          # the fake tap has no fd to close
    new = build_device(DeviceSpec("net"))      # a new tap is always brought up
    assert configured == [("tap%d", None, None)] and new.description == "tun tap%d: no address"


def test_a_bad_mac_fails_before_a_tap_is_opened(monkeypatch):
    opened = []
    monkeypatch.setattr(tap_module, "open_tap", lambda name="tap%d": opened.append(name))
    with pytest.raises(LauncherError, match="Failed to parse mac address"):
        served.net_tap("tap:t0", mac="52:54:00:00:00")
    assert opened == []


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(LauncherError, match="known: block, console, fs, net, rng"):
        factory.make_device(DeviceSpec("gpu"), factory.InMemoryResources())


def test_simulation_builds_through_the_factory():
    console, block, rng = simulated_devices(["console", "block:8,ro", "rng"])
    assert block.read_only and block.capacity == 8 and block.serial == b"sim"
    assert (console.name, rng.name) == ("console", "rng")


def test_every_kind_has_one_entry():
    assert set(factory.DEVICE_KINDS) == {"console", "block", "rng", "net", "fs"}


def test_a_shared_directory_is_a_factory_kind(tmp_path):
    (tmp_path / "hello").write_text("hi")
    built = factory.make_device(DeviceSpec("fs", path=str(tmp_path), tag="share",
                                           read_only=True), factory.HostResources(terminal=False))
    try:
        assert built.device.tag == b"share" and built.device.name == "fs:share"
        assert built.device.fs.read_only and "read-only" in built.description
    finally:
        built.close()
    # vhost-user's --fs is the same factory kind
    item = served.fs(str(tmp_path), "other")
    assert item.device.fs.path == str(tmp_path) and not item.device.fs.read_only
    item.close()


def test_a_share_that_fails_is_closed_and_named(tmp_path, monkeypatch):
    closed = []
    from lguest.host import fs as host_fs
    real_close = host_fs.SharedDirectory.close
    monkeypatch.setattr(host_fs.SharedDirectory, "close",
                        lambda self: (closed.append(self.path), real_close(self)))
    with pytest.raises(LauncherError, match="--tag="):
        factory.make_device(DeviceSpec("fs", path=str(tmp_path), tag="x" * 40),
                            factory.HostResources(terminal=False))
    assert closed == [str(tmp_path)]
    with pytest.raises(LauncherError, match="no in-memory shared directory"):
        factory.make_device(DeviceSpec("fs", path=str(tmp_path), tag="t"),
                            factory.InMemoryResources())
    with pytest.raises(LauncherError, match="needs a directory"):
        factory.make_device(DeviceSpec("fs", tag="t"), factory.HostResources(terminal=False))
