"""What the command line asks for, as data, and the one parser of each option syntax.

#L:952 Every way in (the classic command line, `lguest run`, `lguest vhost-user`, the
# Guest API) spells a device's options the same way, so each spelling is parsed here,
# once, with one set of rules: an IPv4 address is four decimal numbers of ASCII digits,
# each a byte ("1_0", which Python's int() takes, is not one); a MAC address is six
# parts of one or two hex digits; a block file is FILE or FILE,ro or FILE,rw. A tap's
# host address may carry a prefix length, IP/PREFIX (0..32); without one the kernel
# gives the address its classful netmask, as the seed's SIOCSIFADDR always did.
"""

import re
from dataclasses import dataclass, field

from .errors import LauncherError

_DECIMAL = re.compile(r"[0-9]+")
_HEX_BYTE = re.compile(r"[0-9a-fA-F]{1,2}")
BLOCK_OPTIONS = ("ro", "rw")


def parse_ip(text):
    """The seed's str2ip(): "10.0.0.1" -> its 4 bytes; LauncherError otherwise."""
    #L:955 str2ip(): four decimal numbers separated by dots, each a byte (the seed's
    # sscanf("%u.%u.%u.%u") let 300.1.1.1 through; we do not).
    parts = text.split(".")
    if len(parts) != 4 or not all(_DECIMAL.fullmatch(p) and int(p) <= 255 for p in parts):
        raise LauncherError(f"Failed to parse IP address '{text}'")
    return bytes(int(p) for p in parts)


def parse_address(text):
    """"10.0.0.1" or "10.0.0.1/24" -> (the address text, the prefix length or None).

    The prefix is 0..32 in decimal ASCII digits; anything else is a LauncherError."""
    address, slash, prefix = text.partition("/")
    parse_ip(address)
    if not slash:
        return address, None
    if not _DECIMAL.fullmatch(prefix) or int(prefix) > 32:
        raise LauncherError(f"Failed to parse prefix length '{prefix}' in '{text}' (0..32)")
    return address, int(prefix)


def prefix_netmask(prefix):
    """24 -> b"\\xff\\xff\\xff\\x00": the netmask of a prefix length."""
    return (((1 << prefix) - 1) << (32 - prefix)).to_bytes(4, "big")


NET_MAX_QUEUE_PAIRS = 16      # queue pairs a net device takes (a tap queue each)


def parse_net_queues(text):
    """A net device's options after the comma: 'queues=N' (queue pairs, 1..16) -> N."""
    name, equals, value = text.partition("=")
    if name != "queues" or not equals:
        raise LauncherError(f"unknown net option '{text}' (the only one is queues=N)")
    if not _DECIMAL.fullmatch(value) or not 1 <= int(value) <= NET_MAX_QUEUE_PAIRS:
        raise LauncherError(f"queues={value}: expected 1..{NET_MAX_QUEUE_PAIRS} queue pairs")
    return int(value)


def parse_mac(text):
    """The seed's str2mac(): "52:54:00:12:34:56" -> its 6 bytes; LauncherError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(_HEX_BYTE.fullmatch(p) for p in parts):
        raise LauncherError(f"Failed to parse mac address '{text}'")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac):
    """6 bytes -> "52:54:00:12:34:56"."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_block(text):
    """--block=FILE[,ro|,rw] -> (path, read_only)."""
    path, comma, option = text.partition(",")
    if comma and option not in BLOCK_OPTIONS:
        raise LauncherError(f"--block={text}: the only options are ,ro and ,rw")
    if not path:
        raise LauncherError("--block needs a file name")
    return path, option == "ro"


@dataclass
class DeviceSpec:
    """One device from the command line, in command-line order (console is always first)."""
    kind: str                      # a key of lguest.host.factory.DEVICE_KINDS
    path: str = None               # block: image file; fs: the shared directory
    read_only: bool = False        # block: --block=FILE,ro; fs: refuse every write
    ip: str = None                 # net: host-end IPv4 address
    prefix: int = None             # net: its prefix length (None: the classful netmask)
    bridge: str = None             # net: bridge name instead of an address
    mac: str = None                # net: guest MAC address
    tap: str = None                # net: the tap interface's name (None: a new tap%d)
    name: str = None               # the device's name in logs (None: its kind's default)
    sectors: int = None            # block over an in-memory disk: its size (simulations)
    queues: int = 1                # block: request queues (VIRTIO_BLK_F_MQ past 1); net: queue pairs
    tag: str = None                # fs: the tag the guest mounts it by


@dataclass
class LaunchConfig:
    mem_mb: int
    kernel: str                    # path, or "none" for the fake backend's simulated guest
    args: list = field(default_factory=list)   # kernel command line words
    devices: list = field(default_factory=list)
    initrd: str = None
    backend: str = None            # None = best available; "lguest", "kvm", "fake"
    verbose: bool = False
    username: str = None
    chroot: str = None
    lenient: bool = False

    @property
    def cmdline(self):
        return " ".join(self.args)
