"""What the command line asks for, as data: the launcher is built from this."""

from dataclasses import dataclass, field


@dataclass
class DeviceSpec:
    """One device from the command line, in command-line order (console is always first)."""
    kind: str                      # "console", "block", "rng", "net"
    path: str = None               # block: image file
    read_only: bool = False        # block: --block=FILE,ro
    ip: str = None                 # net: host-end IPv4 address
    bridge: str = None             # net: bridge name instead of an address
    mac: str = None                # net: guest MAC address


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
