"""The classic lguest command line: the seed's getopt_long options, then memory and kernel.

    lguest [--verbose] [--tunnet=(<ipaddr>[/<prefix>][:<macaddr>]|bridge:<bridgename>[:<macaddr>])]
           [--block=<filename>[,ro]] [--rng] [--initrd=<filename>] [--username=<name>]
           [--chroot=<dir>] [--backend=lguest|kvm|fake] [--lenient] <mem-in-mb> vmlinux [args...]

#L:950 The options are fairly straight-forward. As in the seed, options come first
# (getopt stops at the first word that is not one, so a kernel argument that starts
# with "-" is the kernel's), then the memory size in megabytes, the kernel image, and
# the kernel's arguments, joined by spaces. We always have a console device, and it's
# always device 1; --block, --tunnet and --rng may repeat and make devices in the order
# given. Everything we can check before building the machine is checked here, so a
# typo costs one line on stderr and exit status 1, not a half-built guest.
"""

import getopt
import logging
import os
import sys
import traceback

from . import privileges
from .config import DeviceSpec, LaunchConfig, format_mac, parse_address, parse_block, parse_mac
from .errors import GuestError, LauncherError

BRIDGE_PFX = "bridge:"
IFNAMSIZ = 16
BACKENDS = ("lguest", "kvm", "fake")
LONG_OPTIONS = ["verbose", "tunnet=", "block=", "rng", "initrd=", "username=", "chroot=",
                "help", "version", "backend=", "lenient"]
USAGE = ("Usage: lguest [--verbose] [--tunnet=(<ipaddr>[/<prefix>][:<macaddr>]|bridge:<bridgename>[:<macaddr>])"
         "|--block=<filename>[,ro]|--rng|--initrd=<filename>]... <mem-in-mb> vmlinux [args...]")
OPTION_HELP = [
    ("-v, --verbose", "trace loading, PCI accesses, device status, queues and requests"),
    ("--tunnet=<ip>[/<prefix>][:<mac>]", "a network device on a new tap interface with this host address"),
    ("--tunnet=bridge:<name>[:<mac>]", "... or with the tap interface added to a bridge"),
    ("--block=<file>[,ro]", "a block device backed by <file> (read-only with ,ro)"),
    ("--rng", "a random number generator device fed from /dev/urandom"),
    ("--initrd=<file>", "load <file> as the initial ram disk, at the top of guest memory"),
    ("--username=<name>", "drop privileges to this user once the guest is set up"),
    ("--chroot=<dir>", "chroot to <dir> once the guest is set up"),
    ("--backend=<name>", "lguest (/dev/lguest), kvm (/dev/kvm) or fake; default: the best there is"),
    ("--lenient", "warn about some guest mistakes instead of stopping"),
    ("-h, --help", "show this help"),
    ("--version", "show the version"),
]

log = logging.getLogger("lguest")


class UsageError(LauncherError):
    """A malformed command line: the message gets a hint to try --help."""


def help_text():
    from .subcommands import SUBCOMMANDS
    lines = [USAGE, "", "Boot a Linux guest in <mem-in-mb> megabytes of memory with virtio-PCI devices;",
             "the console (device 1) is always there, other devices follow in command-line order.",
             "", "Options:"]
    lines += [f"  {name:32} {text}" for name, text in OPTION_HELP]
    lines += ["", "Subcommands (lguest <subcommand> --help):"]
    lines += [f"  {name:32} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines) + "\n"


def parse_tunnet(arg):
    #L:957 --tunnet=<ip>[/<prefix>][:<mac>] or --tunnet=bridge:<name>[:<mac>], as setup_tun_net():
    # strip the "bridge:" prefix, then a MAC address may follow the first colon; what is
    # left is the host end's IP address, or the bridge to join.
    bridging = arg.startswith(BRIDGE_PFX)
    rest = arg[len(BRIDGE_PFX):] if bridging else arg
    name, colon, mac = rest.partition(":")
    spec = DeviceSpec("net", mac=format_mac(parse_mac(mac)) if colon else None)
    if bridging:
        if not name:
            raise LauncherError("must specify bridge name")
        if len(name) >= IFNAMSIZ or "/" in name or " " in name:
            raise LauncherError(f"bad bridge name '{name}'")
        spec.bridge = name
    else:
        spec.ip, spec.prefix = parse_address(name)      # IP or IP/PREFIX (L:952)
    return spec


def block_spec(arg):
    """--block=FILE[,ro]: one syntax everywhere (L:952)."""
    path, read_only = parse_block(arg)
    return DeviceSpec("block", path=path, read_only=read_only)


def parse_memory(text):
    if not text.isdigit() or int(text) == 0:
        raise LauncherError(f"memory size must be a positive number of megabytes, not '{text}'")
    mem_mb = int(text)
    host_mb = host_memory_mb()
    if host_mb and mem_mb > host_mb:
        raise LauncherError(f"{mem_mb} MiB of guest memory is more than this host's {host_mb} MiB")
    return mem_mb


def host_memory_mb():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):
        return None


def parse(argv):
    """The command line as a LaunchConfig, or a string to print (--help, --version)."""
    try:
        opts, rest = getopt.getopt(argv, "vh", LONG_OPTIONS)
    except getopt.GetoptError as e:
        raise UsageError(str(e)) from None
    devices, settings = [DeviceSpec("console")], {}
    for opt, value in opts:
        if opt in ("-h", "--help"):
            return help_text()
        if opt == "--version":
            from . import __version__
            return f"lguest-py {__version__}\n"
        _apply_option(opt, value, devices, settings)
    if len(rest) < 2:
        raise UsageError("expected <mem-in-mb> and a kernel image")
    config = LaunchConfig(mem_mb=parse_memory(rest[0]), kernel=rest[1], args=rest[2:],
                          devices=devices, **settings)
    check_files(config)
    return config


def _apply_option(opt, value, devices, settings):
    if opt in ("-v", "--verbose"):
        settings["verbose"] = True
    elif opt == "--tunnet":
        devices.append(parse_tunnet(value))
    elif opt == "--block":
        devices.append(block_spec(value))
    elif opt == "--rng":
        devices.append(DeviceSpec("rng"))
    elif opt == "--initrd":
        settings["initrd"] = value
    elif opt == "--username":
        settings["username"] = check_user(value)
    elif opt == "--chroot":
        settings["chroot"] = value
    elif opt == "--backend":
        if value not in BACKENDS:
            raise LauncherError(f"unknown backend '{value}' (choose from {', '.join(BACKENDS)})")
        settings["backend"] = value
    elif opt == "--lenient":
        settings["lenient"] = True


def check_user(name):
    privileges.lookup_user(name)            # an unknown user fails now, not after set-up
    return name


def check_files(config):
    #L:960 open_or_die(), ahead of time: the kernel (unless it is "none", the fake
    # backend's simulated guest), the initrd and every block file must open now, in the
    # mode they will be used in, and the kernel must be smaller than the guest's memory.
    # The chroot directory must exist. Each failure is the seed's "Failed to open" line.
    if config.kernel != "none":
        size = _check_open(config.kernel, os.O_RDONLY)
        if size >= config.mem_mb << 20:
            raise LauncherError(f"{config.mem_mb} MiB of memory is too small for kernel "
                                f"{config.kernel} ({size >> 20} MiB)")
    if config.initrd:
        _check_open(config.initrd, os.O_RDONLY)
    for dev in config.devices:
        if dev.kind == "block":
            _check_open(dev.path, os.O_RDONLY if dev.read_only else os.O_RDWR)
    if config.chroot and not os.path.isdir(config.chroot):
        raise LauncherError(f'chroot("{config.chroot}") failed: not a directory')


def _check_open(path, flags):
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise LauncherError(f"Failed to open {path}: {e.strerror}") from None
    try:
        if os.path.isdir(path):
            raise LauncherError(f"Failed to open {path}: Is a directory")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def setup_logging():
    #L:965 --verbose: the seed's verbose() lines, through `logging`, so every layer's
    # tracing (ELF sections, PCI accesses, status changes, queue set-up, block requests)
    # reaches stderr with a timestamp and the part of us that said it.
    logger = logging.getLogger("lguest")
    if not any(getattr(h, "_lguest_verbose", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(relativeCreated)9.1fms %(name)s: %(message)s"))
        handler._lguest_verbose = True
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def main(argv=None):
    """Parse, validate, launch; every user error is one line on stderr and status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    privileges.remember_argv(argv)          # a reboot runs us again with these (L:975)
    verbose = False
    try:
        config = parse(argv)
        if isinstance(config, str):
            sys.stdout.write(config)
            return 0
        verbose = config.verbose
        if verbose:
            setup_logging()
        log.debug("command line: %s", config)
        from .launcher import launch
        return launch(config)
    except KeyboardInterrupt:
        return 130
    except (LauncherError, GuestError, OSError) as e:
        if verbose:
            traceback.print_exc()
        hint = " (try lguest --help)" if isinstance(e, UsageError) else ""
        print(f"lguest: {_one_line(e)}{hint}", file=sys.stderr)
        return 1


def _one_line(error):
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split())
