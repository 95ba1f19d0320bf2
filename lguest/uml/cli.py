"""`lguest run`: boot a User-Mode Linux guest on our devices, run one command in it.

    lguest run [--mem MB] [--block FILE[,ro]]... [--net SPEC] [--ip ADDR/PREFIX]
               [--console] [--timeout S] [--backend lguest|qsd]
               [--root host|initramfs] [--share HOST[:GUEST][,ro]]... [--cpus one|all|LIST]
               -- CMD [ARGS...]

#L:890 The main job, end to end: fetch and build the kit if this is the first run
# (L:803), start our vhost-user back-ends for the devices asked for (L:861), boot UML
# (L:840), stream the command's stdout and stderr to ours as they come, and exit with
# the command's own exit status. What is not the command's doing gets a status of its
# own and one line on stderr: 124 when the timeout stopped the guest (as timeout(1)),
# 125 when the guest died without reporting one (a kernel panic), 1 for a bad option
# or host problem, 130 after ^C, 143 after SIGTERM (which unwinds as ^C does), 141
# when our reader left (lguest/cli.py). Every path out goes through the context
# managers, so UML is killed and the sockets and the temp directory are removed
# whichever way we go.
"""

import argparse
import os
import shutil
import signal
import sys
import threading

from ..errors import LauncherError
from . import placement, shares
from .guest import DEFAULT_MEM_MB, Guest, GuestFailed, GuestTimeout
from .stdin import run_with_our_stdin

EXIT_TIMEOUT = 124
EXIT_GUEST_FAILED = 125
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(Exception):
    """SIGTERM arrived: unwind like ^C, so UML and the temp directory go with us."""


def _on_sigterm(signum, frame):
    raise Terminated()
# The kit's guest (kernel, initramfs unpacked into RAM, modules) does not boot in less:
# at 40 MiB UML panics ("System is deadlocked on memory"), 48 MiB boots.
MIN_MEM_MB = 48


def host_memory_mb():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)


def memory_size(text):
    """--mem: whole MiB, enough to boot, and no more than this host has."""
    try:
        mb = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB") from None
    if mb < MIN_MEM_MB:
        raise argparse.ArgumentTypeError(f"{mb} MiB is too little: the guest needs at least "
                                         f"{MIN_MEM_MB} MiB to boot")
    if mb > host_memory_mb():
        raise argparse.ArgumentTypeError(f"{mb} MiB is more than this host's "
                                         f"{host_memory_mb()} MiB of RAM")
    return mb


def timeout_seconds(text):
    """--timeout: a positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive, finite number of seconds")
    return seconds


def cpu_placement(text):
    """--cpus: one, all, or a CPU list."""
    try:
        return placement.parse_cpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser():
    p = argparse.ArgumentParser(
        prog="lguest run",
        description="Boot a User-Mode Linux guest whose virtio devices are served by "
                    "lguest's vhost-user back-end, run CMD in it, and exit with its status.")
    p.add_argument("--mem", type=memory_size, default=DEFAULT_MEM_MB, metavar="MB",
                   help=f"guest memory (default {DEFAULT_MEM_MB}; only what the guest uses "
                        "costs host memory)")
    p.add_argument("--block", action="append", default=[], metavar="FILE[,ro]",
                   help="a disk image, /dev/vda, /dev/vdb, ... in the guest (repeatable)")
    p.add_argument("--net", metavar="SPEC",
                   help="a network card served by our back-end (as `lguest vhost-user --net`)")
    p.add_argument("--ip", metavar="ADDR/PREFIX", help="configure eth0 with this address")
    p.add_argument("--console", action="store_true",
                   help="send CMD's stdout through our virtio console (/dev/hvc0)")
    p.add_argument("--timeout", type=timeout_seconds, default=None, metavar="S",
                   help="stop the guest after S seconds (default: no limit)")
    p.add_argument("--backend", choices=("lguest", "qsd"), default="lguest",
                   help="who serves the block devices (qsd: qemu-storage-daemon, for comparison)")
    p.add_argument("--root", choices=shares.ROOTS, default="host",
                   help="the guest's root: the host's, read-only, with the current directory "
                        "writable, CMD run there as you (default); or the busybox initramfs")
    p.add_argument("--share", action="append", default=[], metavar="HOST[:GUEST][,ro]",
                   help="also show host directory HOST at GUEST (default: the same path) in "
                        "the guest, read-only with ,ro (repeatable)")
    p.add_argument("--cpus", type=cpu_placement, default=placement.ONE, metavar="one|all|LIST",
                   help="where the guest and its back-ends run: one CPU shared (default; "
                        "each request is a ping-pong between them), all (the scheduler "
                        "decides), or CPUs such as 0,2-3")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    return p


def _writer(stream):
    def write(data):
        stream.write(data)
        stream.flush()
    return write


def hidden_program_note(plan, program):
    """A note for a program the guest will not find: the host's /tmp (a venv in a CI
    checkout, say) is hidden by the guest's own. None if the guest will see it."""
    found = program if "/" in program else shutil.which(program, path=plan.env.get("PATH"))
    if not found or not os.path.exists(found):
        return None
    found = os.path.join(plan.cwd or os.getcwd(), found)
    top = plan.hidden_from_guest(found)
    if top is None:
        return None
    folder = os.path.dirname(os.path.abspath(found))
    if os.path.basename(folder) == "bin":
        folder = os.path.dirname(folder)    # a venv or a prefix: the rest of it is needed too
    return (f"{found} is under the host's {top}, which the guest does not see (it has its "
            f"own {top}); --share {folder},ro shows it there")


def main(argv=None):
    args = parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser().error("no command given (lguest run [options] -- CMD [ARGS...])")
    if args.ip and not args.net:
        parser().error("--ip configures the guest's eth0, which only --net gives it")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        with Guest(block=args.block, console=args.console, net=args.net, ip=args.ip,
                   mem=args.mem, timeout=args.timeout, backend=args.backend,
                   root=args.root, share=args.share, terminal=sys.stdout.isatty(),
                   cpus=args.cpus) as guest:
            note = hidden_program_note(guest.plan, command[0])
            if note:
                print(f"lguest run: {note}", file=sys.stderr)
            result = run_with_our_stdin(guest, command, on_stdout=_writer(sys.stdout.buffer),
                                        on_stderr=_writer(sys.stderr.buffer))
        for note in result.notes:           # an OOM kill is the one kind so far
            print(f"lguest run: {note}; --mem gives it more", file=sys.stderr)
        return result.returncode
    except GuestTimeout as e:
        print(f"lguest run: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    except GuestFailed as e:
        print(f"lguest run: {e}", file=sys.stderr)
        if os.environ.get("LGUEST_VERBOSE"):
            sys.stderr.write(e.log)
        return EXIT_GUEST_FAILED
    except LauncherError as e:
        print(f"lguest run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lguest run: interrupted; guest stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("lguest run: terminated; guest stopped", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
