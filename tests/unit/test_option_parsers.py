"""One parser per option syntax (L:952), the same rules from every command line."""

import pytest

from lguest import cmdline
from lguest.config import format_mac, parse_address, parse_block, parse_ip, parse_mac, prefix_netmask
from lguest.devices.net import NetDevice
from lguest.errors import LauncherError
from lguest.uml import servers
from lguest.vhost_user import served


@pytest.mark.parametrize("text, want", [("10.0.0.1", bytes([10, 0, 0, 1])),
                                        ("255.255.255.0", bytes([255, 255, 255, 0])),
                                        ("010.0.0.1", bytes([10, 0, 0, 1]))])
def test_ip_addresses(text, want):
    assert parse_ip(text) == want


@pytest.mark.parametrize("bad", ["1_0.0.0.1", "10.0.0", "10.0.0.256", "a.b.c.d", "",
                                 " 10.0.0.1", "10.0.0.+1", "١٠.0.0.1"])
def test_bad_ip_addresses_everywhere(bad):
    for parse in (parse_ip, lambda t: cmdline.parse_tunnet(t), lambda t: served.parse_tap(f"tap:t0:{t}")):
        with pytest.raises(LauncherError, match="Failed to parse IP address"):
            parse(bad)


@pytest.mark.parametrize("text, want", [("10.0.0.1", ("10.0.0.1", None)),
                                        ("10.12.0.1/24", ("10.12.0.1", 24)),
                                        ("192.168.1.1/0", ("192.168.1.1", 0)),
                                        ("10.1.2.3/32", ("10.1.2.3", 32)),
                                        ("10.1.2.3/08", ("10.1.2.3", 8))])
def test_tap_addresses_take_an_optional_prefix_everywhere(text, want):
    assert parse_address(text) == want
    spec = cmdline.parse_tunnet(text)
    assert (spec.ip, spec.prefix) == want
    spec = cmdline.parse_tunnet(f"{text}:52:54:00:00:00:07")
    assert (spec.ip, spec.prefix, spec.mac) == (*want, "52:54:00:00:00:07")
    spec = served.parse_tap(f"tap:t0:{text}")
    assert (spec.tap, spec.ip, spec.prefix) == ("t0", *want)


@pytest.mark.parametrize("bad", ["10.0.0.1/33", "10.0.0.1/", "10.0.0.1/-1", "10.0.0.1/2 4",
                                 "10.0.0.1/24/8", "10.0.0.1/٢٤", "10.0.0.1/+8", "10.0.0.1/0x8"])
def test_bad_prefixes_everywhere(bad):
    for parse in (parse_address, cmdline.parse_tunnet, lambda t: served.parse_tap(f"tap:t0:{t}")):
        with pytest.raises(LauncherError, match="Failed to parse prefix length"):
            parse(bad)


def test_a_bad_address_before_a_prefix_is_still_the_address():
    with pytest.raises(LauncherError, match="Failed to parse IP address '10.0.0'"):
        parse_address("10.0.0/24")


@pytest.mark.parametrize("prefix, mask", [(0, "0.0.0.0"), (8, "255.0.0.0"), (24, "255.255.255.0"),
                                          (25, "255.255.255.128"), (32, "255.255.255.255")])
def test_prefix_netmasks(prefix, mask):
    assert prefix_netmask(prefix) == bytes(int(p) for p in mask.split("."))


@pytest.mark.parametrize("text", ["52:54:00:ab:cd:0e", "52:54:0:AB:cd:e"])
def test_mac_addresses_one_rule(text):
    mac = parse_mac(text)
    assert len(mac) == 6 and format_mac(mac) == ":".join(f"{int(p, 16):02x}" for p in text.split(":"))
    assert bytes(NetDevice(object(), mac=text).config[:6]) == mac
    spec = cmdline.parse_tunnet(f"10.0.0.1:{text}")
    assert parse_mac(spec.mac) == mac


@pytest.mark.parametrize("bad", ["52:54:00:ab:cd", "zz:54:00:ab:cd:0e", "525400abcd0e",
                                 "1:2:3:4:5:100", "+a:2:3:4:5:6", " a:2:3:4:5:6"])
def test_bad_mac_addresses_everywhere(bad):
    for parse in (parse_mac, lambda t: NetDevice(object(), mac=t),
                  lambda t: cmdline.parse_tunnet(f"10.0.0.1:{t}")):
        with pytest.raises(LauncherError, match="Failed to parse mac address"):
            parse(bad)


@pytest.mark.parametrize("text, want", [("disk", ("disk", False)), ("disk,ro", ("disk", True)),
                                        ("disk,rw", ("disk", False))])
def test_block_spec(text, want, tmp_path):
    assert parse_block(text) == want
    spec = cmdline.block_spec(text)
    assert (spec.path, spec.read_only) == want
    (tmp_path / "disk").write_bytes(b"")
    assert servers.parse_block_spec(str(tmp_path / text)) == (str(tmp_path / want[0]), want[1])


@pytest.mark.parametrize("bad, message", [("disk,sync", "only options"), ("disk,rw,ro", "only options"),
                                          (",ro", "needs a file name"), ("", "needs a file name")])
def test_bad_block_specs_everywhere(bad, message):
    for parse in (parse_block, cmdline.block_spec, servers.parse_block_spec, served.block):
        with pytest.raises(LauncherError, match=message):
            parse(bad)


@pytest.mark.parametrize("text, queues", [("tap:t0", 1), ("tap:t0:10.0.0.1/24,queues=4", 4),
                                          ("tap:t0,queues=16", 16), ("tap:t0:10.0.0.1,queues=1", 1)])
def test_net_queue_pairs(text, queues):
    assert served.parse_tap(text).queues == queues


@pytest.mark.parametrize("bad, message", [("tap:t0,queues=0", "1..16"), ("tap:t0,queues=17", "1..16"),
                                          ("tap:t0,queues=", "1..16"), ("tap:t0,queues=2x", "1..16"),
                                          ("tap:t0,rings=2", "unknown net option"),
                                          ("tap:t0,queues=2,queues=3", "1..16")])
def test_bad_net_queue_pairs(bad, message):
    with pytest.raises(LauncherError, match=message):
        served.parse_tap(bad)
