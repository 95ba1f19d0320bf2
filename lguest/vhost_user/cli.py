"""`lguest vhost-user`: serve one of our devices on a unix socket until interrupted.

#L:770 The command line of the back-end on its own, for any vhost-user front-end:
#
#   lguest vhost-user --socket=/tmp/blk.sock --block=disk.img[,ro] [--queues=N] [--poll-us=N]
#   lguest vhost-user --socket=/tmp/net.sock --net=tap:NAME[:IPADDR[/PREFIX]][,queues=N]
#   lguest vhost-user --socket=/tmp/a.sock --socket=/tmp/b.sock --net=pair
#   lguest vhost-user --socket=/tmp/con.sock --console
#   lguest vhost-user --socket=/tmp/rng.sock --rng
#   lguest vhost-user --socket=/tmp/fs.sock --fs=DIR --tag=TAG [--ro]
#
# then, e.g., `linux.uml ... virtio_uml.device=/tmp/blk.sock:2`, or QEMU's
# `-chardev socket,id=c0,path=/tmp/blk.sock -device vhost-user-blk-pci,chardev=c0`
# (QEMU needs its guest memory shared: `-object memory-backend-memfd,id=m,size=...,share=on
# -numa node,memdev=m`). Each socket serves one front-end at a time and is ready for the
# next when it leaves; ^C (or SIGTERM) closes everything and removes the sockets.
# Each front-end's session runs in a process of its own (L:742), so a front-end that
# crashes it (say, by shrinking its guest memory under us: SIGBUS) ends only its own
# session; --no-isolate serves in this process, as `lguest run` does.
# (Debian's UML kernel has no HW_RANDOM_VIRTIO, so --rng is for other front-ends.)
# The rings' memory ordering is correct on x86 hosts only (L:733): elsewhere we refuse.
"""

import argparse
import logging
import signal
import sys
import threading

from ..devices.block import MAX_QUEUES
from ..errors import LguestError
from . import served as devices
from .polling import DEFAULT_POLL_US
from .rings import require_x86_host
from .server import VhostUserServer, serve_isolated


DEFAULT_BLOCK_QUEUES = 8
MAX_POLL_US = 100_000      # a tenth of a second: beyond that it is a spinning thread


def parse_args(argv):
    p = argparse.ArgumentParser(prog="lguest vhost-user",
                                description="Serve a virtio device to a vhost-user front-end.")
    p.add_argument("--socket", action="append", required=True, metavar="PATH",
                   help="unix socket to listen on (twice with --net=pair)")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--block", metavar="FILE[,ro]", help="a disk image")
    kind.add_argument("--net", metavar="tap:NAME[:IP[/PREFIX]][,queues=N]|pair", help="a network card")
    kind.add_argument("--console", action="store_true", help="a console on our stdin/stdout")
    kind.add_argument("--rng", action="store_true", help="an entropy source (/dev/urandom)")
    kind.add_argument("--fs", metavar="DIR", help="a host directory, as virtio-fs "
                      "(in the guest: mount -t virtiofs TAG /mnt)")
    p.add_argument("--tag", help="the virtio-fs tag the guest mounts by (with --fs)")
    p.add_argument("--ro", action="store_true", help="with --fs: refuse every write (EROFS)")
    p.add_argument("--mac", help="the net device's MAC address")
    # QEMU's vhost-user-blk asks for as many queues as the guest has vCPUs and refuses
    # to start if GET_QUEUE_NUM says fewer; a guest uses min(queues, its CPUs).
    p.add_argument("--queues", type=int, default=DEFAULT_BLOCK_QUEUES, metavar="N",
                   help=f"block request queues offered (default {DEFAULT_BLOCK_QUEUES}, "
                        f"at most {MAX_QUEUES})")
    p.add_argument("--poll-us", type=int, default=DEFAULT_POLL_US, metavar="N",
                   help="busy-poll each ring's kick fd for up to N microseconds before "
                        "sleeping on it, the window adapted to how often kicks come: lower "
                        "latency at one request in flight, for up to N us of CPU after each "
                        f"request (default {DEFAULT_POLL_US}; 0 = off)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="serve each front-end in this process instead of a forked child "
                        "(by default a front-end that crashes its session, e.g. by shrinking "
                        "its memory file: SIGBUS, ends only that session, logged in one line)")
    p.add_argument("--verbose", "-v", action="store_true", help="log each connection and error")
    args = p.parse_args(argv)
    if not 1 <= args.queues <= MAX_QUEUES:
        p.error(f"--queues must be 1..{MAX_QUEUES}")
    if not 0 <= args.poll_us <= MAX_POLL_US:
        p.error(f"--poll-us must be 0..{MAX_POLL_US}")
    if args.fs and not args.tag:
        p.error("--fs needs --tag (the name the guest mounts it by)")
    if (args.tag or args.ro) and not args.fs:
        p.error("--tag and --ro go with --fs")
    wanted = 2 if args.net == "pair" else 1
    if len(args.socket) != wanted:
        p.error(f"this device needs {wanted} --socket path(s), not {len(args.socket)}")
    return args


def build(args):
    if args.block:
        return [devices.block(args.block, num_queues=args.queues)]
    if args.net == "pair":
        return devices.net_pair()
    if args.net:
        return [devices.net_tap(args.net, mac=args.mac)]
    if args.console:
        return [devices.console()]
    if args.fs:
        return [devices.fs(args.fs, args.tag, read_only=args.ro)]
    return [devices.rng()]


def serve(served, paths, stop, isolate=False, poll_us=DEFAULT_POLL_US):
    """Serve each device on its socket until `stop` is set; always clean up.
    isolate: a process per session (L:742); main() turns it on unless --no-isolate.
    poll_us: busy-poll the kick fds (L:734)."""
    servers = []
    try:
        for item, path in zip(served, paths):
            server = VhostUserServer(item.backend(poll_us), path, isolate=isolate)
            servers.append(server)
            logging.getLogger("lguest.vhost_user").info("serving %s on %s", item.device.name, path)
            if not isolate:
                server.serve_in_thread()
        if isolate:
            serve_isolated(servers, stop)      # on this thread alone: no fork among threads
        else:
            stop.wait()
    finally:
        devices.stop_serving(servers, served)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="lguest vhost-user: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        require_x86_host()         # before any device is opened (L:733)
        serve(build(args), args.socket, stop, isolate=args.isolate, poll_us=args.poll_us)
    except LguestError as e:
        print(f"lguest vhost-user: {e}", file=sys.stderr)
        return 1
    return 0
