"""Two UML guests on one cable: each one's eth0 is one end of our guest-to-guest link.

#L:885 A network test needs something at the other end. Two guests joined by the
# back-end's datagram pair (L:760) need no privileges, no tap and no host address plan,
# and both sides are real Linux virtio_net drivers talking through our NetDevice: every
# frame crosses our tx queue code in one guest and our rx queue code in the other. Both
# guests boot at once (threads: each boot is a process we wait on), each with its own
# address; run_pair returns both Results, or raises the first guest's failure.
"""

import threading

from ..vhost_user import served as served_devices
from .guest import Guest


def run_pair(commands, ips, *, timeout=60.0, kit=None, mem=64, root="initramfs", ends=None):
    """Boot two guests joined by a cable; run commands[i] in guest i with address ips[i].

    The busybox root by default: it has ip, ping and nc whatever the host has. `ends`: the
    cable (served.net_pair()) if the caller wants to read its devices' stats afterwards;
    run_pair closes it either way. 64 MiB is enough since the device offers MRG_RXBUF
    (L:387): without it Linux's virtio_net filled its rx ring with ~72 KiB buffers, ~20
    MiB of a 64 MiB guest, and a command was once lost to the OOM killer."""
    ends = ends or served_devices.net_pair()
    results, errors = [None, None], [None, None]

    def one(i):
        try:
            with Guest(net=ends[i], ip=ips[i], timeout=timeout, kit=kit, mem=mem,
                       root=root) as g:
                results[i] = g.run(commands[i])
        except BaseException as e:        # re-raised in the caller's thread below
            errors[i] = e

    try:
        threads = [threading.Thread(target=one, args=(i,), name=f"uml-guest{i}") for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for end in ends:
            end.close()
    for e in errors:
        if e is not None:
            raise e
    return results
