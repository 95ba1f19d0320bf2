"""The launcher: build the machine from a LaunchConfig, run the guest, clean up.

#L:002 The run loop is written once, against the Backend interface (L:001). Each
# exit is one of three things. An I/O access goes to the bus, the one entry point
# every backend calls (L:400's PciBus.access), and complete() finishes the guest's
# instruction with the answer. Guest death ends us with the guest's last words and,
# as the seed's errx(1, ...), exit status 1 (a simulated guest that finished its work
# reports 0). A reboot request re-executes the launcher with the same arguments,
# as the seed's restart_guest() did, once everything has been cleaned up. A signal
# (EINTR) inside run() just runs the guest again; the backends see to that.
"""

import os
import sys

from .backends.base import GuestDied, IoExit, RebootRequested
from .errors import LauncherError
from .pci.bus import UnclaimedAccess

TRACE_ENV = "LGUEST_TRACE"       # record a trap stream of the run to this file


def run_guest(backend, bus):
    """Run until the guest dies or asks to reboot; return that exit."""
    while True:
        try:
            exit_ = backend.run()
        except InterruptedError:
            continue
        if isinstance(exit_, IoExit):
            try:
                result = bus.access(exit_.space, exit_.addr, exit_.size, exit_.is_write,
                                    exit_.value)
            except UnclaimedAccess:
                # No device there: the seed warned and handed the fault back (bad_io).
                exit_.reject()
                continue
            exit_.complete(0 if exit_.is_write else result)
        elif isinstance(exit_, (GuestDied, RebootRequested)):
            return exit_
        else:
            raise LauncherError(f"backend {backend.name} returned {exit_!r}")


class _DeviceFailed(Exception):
    """A device thread stopped on an error: the main thread is told by a signal."""


class PrefixSink:
    """The simulated guest's console: each line of output, marked as the guest's."""

    def __init__(self, out, prefix="guest console| "):
        self.out, self.prefix = out, prefix
        self.partial = ""
        self.text = []

    def write(self, views):
        data = b"".join(bytes(v) for v in views).decode("utf-8", "replace")
        self.text.append(data)
        lines = (self.partial + data).split("\n")
        self.partial = lines.pop()
        for line in lines:
            print(self.prefix + line, file=self.out, flush=True)

    def close(self):
        if self.partial:
            print(self.prefix + self.partial, file=self.out, flush=True)
            self.partial = ""


def _host_devices(specs, fake, out, on_error):
    """The factory's devices (L:940) for the PCI bus, each with its runner. The simulated
    guest's are served inline (deterministic), its console printed to `out`."""
    from .devices.base import InlineRunner
    from .host import HostDevice
    from .host.factory import HostResources, make_device
    from .host.runner import ThreadedRunner
    resources = HostResources(console_sink=PrefixSink(out)) if fake else HostResources()
    built = []
    try:
        for spec in specs:
            device = make_device(spec, resources)
            runner = InlineRunner() if fake else ThreadedRunner(wake_fds=device.wake_fds,
                                                                on_error=on_error)
            built.append(HostDevice.from_built(device, runner))
    except BaseException:
        for host in built:
            host.close()
        raise
    return built


def _devices(config, fake, out, on_error):
    from .config import DeviceSpec
    specs = list(config.devices)
    if not any(s.kind == "console" for s in specs):
        specs.insert(0, DeviceSpec("console"))
    specs.sort(key=lambda s: s.kind != "console")     # the console is always device 1
    return _host_devices(specs, fake, out, on_error)


def _load(config, memory, backend):
    """Kernel, initrd and boot_params; the simulated guest may run without a kernel."""
    if config.kernel == "none":
        if backend.name != "fake":
            raise LauncherError("a kernel image is needed (\"none\" only with --backend=fake)")
        return 0, 0
    from .loader import prepare_boot
    profile = getattr(backend, "boot_profile", "lguest" if backend.name in ("lguest", "fake") else "pc")
    setup = prepare_boot(memory, config.kernel, config.cmdline, config.initrd, profile=profile)
    entry = setup.entry32 if profile == "lguest" else (setup.entry64 or setup.entry32)
    if entry is None:
        # An lguest guest starts in 32-bit protected mode; an ELF64 vmlinux has only a
        # 64-bit entry point (KVM's "pc" profile can start it).
        raise LauncherError(f"{config.kernel}: a 64-bit ELF kernel, and the {backend.name} "
                            "backend boots 32-bit kernels only (an i386 vmlinux or a bzImage)")
    return entry, setup.zero_page


def _drop_privileges(config):
    if config.chroot or config.username:
        from . import privileges
        privileges.drop(config.chroot, config.username)


def _open_backend(config, out, records):
    from .backends.choose import open_backend
    if config.backend == "fake":
        backend = open_backend("fake", log=lambda text: print(f"guest: {text}", file=out, flush=True))
    else:
        backend = open_backend(config.backend)
    if os.environ.get(TRACE_ENV) and hasattr(backend, "record_to"):
        #L:005 Any run on /dev/lguest (or the fake backend) can be recorded as a trap
        # stream (L:560): set LGUEST_TRACE=FILE.
        backend.record_to(records.append, getattr(backend, "_memory_writes", None))
    return backend


def _write_trace(config, records):
    from dataclasses import asdict
    from .backends import tracefile
    header = {"config": {"mem_mb": config.mem_mb, "kernel": config.kernel,
                         "devices": [asdict(d) for d in config.devices]},
              "comment": "recorded by lguest with " + TRACE_ENV}
    tracefile.write_trace(os.environ[TRACE_ENV], header, records)


#L:003 launch(): the seed's main() after the options. Guest memory first (with its
# guard pages, L:100), then the devices, console first, each on the PCI bus with
# its runner (L:432), then the kernel and boot_params (L:170), then the backend is
# told where everything is. Privileges are dropped only after all of that, because
# /dev/lguest, the tap and the disk images need root to open. Whatever way we
# leave (guest death, ^C, a device's guest error, our own bug), every device is
# closed, which stops its threads and restores the terminal.
def launch(config, *, out=None, reexec=None):
    """Run the guest described by `config`; return the exit status."""
    import signal
    import threading
    from .memory import GuestMemory
    from .pci.bus import PciBus
    out = out or sys.stdout
    failures, records = [], []

    def on_error(exc):
        failures.append(exc)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    def raise_failed(signum, frame):
        raise _DeviceFailed()

    memory = GuestMemory(config.mem_mb << 20)
    hosts, backend = [], None
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGUSR1, raise_failed) if in_main else None
    previous_int = _make_sigint_raise() if in_main else None
    try:
        backend = _open_backend(config, out, records)
        hosts = _devices(config, backend.name == "fake", out, on_error)
        bus = PciBus(memory)
        for host in hosts:
            # --lenient: a misused device needs a reset instead of ending us (L:425).
            bus.add_device(host.device, host.runner).set_lenient(config.lenient)
        entry, zero_page = _load(config, memory, backend)
        backend.attach_bus(bus)
        backend.initialize(memory, entry, mmio_limit=bus.mmio_limit, boot_params=zero_page)
        if config.verbose or backend.name == "fake":
            print(f"lguest: {config.mem_mb} MiB guest on the {backend.name} backend", file=out)
            for line in bus.describe():
                print(f"lguest: {line}", file=out)
        _drop_privileges(config)
        try:
            exit_ = run_guest(backend, bus)
        except _DeviceFailed:
            raise failures[0] if failures else LauncherError("a device thread failed")
    finally:
        # The devices first: their threads may still be finishing a request and
        # interrupting the guest, so the backend must outlive them (a real lguest
        # host showed the race at a reboot: an LHREQ_IRQ on a closed fd).
        for host in reversed(hosts):
            host.close()
        if backend is not None:
            backend.close()
            if records:
                _write_trace(config, records)
        memory.close()
        if previous is not None:
            signal.signal(signal.SIGUSR1, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
    return _finish(exit_, out, reexec)


def _make_sigint_raise():
    """Make SIGINT raise KeyboardInterrupt for the run; return the old handler to restore.

    A launcher started in the background of a script inherits SIGINT ignored, and then
    the console's ^C^C^C (L:324: the way out of a raw terminal, sent as SIGINT to this
    thread) would do nothing: the user asked to stop, so the handler is put back."""
    import signal
    old = signal.getsignal(signal.SIGINT)
    if old is signal.default_int_handler:
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return old


def _finish(exit_, out, reexec):
    if isinstance(exit_, RebootRequested):
        #L:004 restart_guest(): everything is closed by now; run ourselves afresh.
        if reexec is not None:
            return reexec()
        from . import privileges
        privileges.reexec()          # the arguments cmdline remembered; does not return
    if exit_.status == 0:
        print(f"lguest: {exit_.reason}", file=out)
    else:
        print(f"lguest: {exit_.reason}", file=sys.stderr)
    return exit_.status
