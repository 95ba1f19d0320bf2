"""bench/fs_relay.py: what it changes between a front-end and a back-end, and nothing else."""

import errno
import os
import sys

from lguest.devices import fuse_wire as W
from lguest.vhost_user import served as devices
from lguest.vhost_user import protocol as P
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import VhostUserServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench"))
from fs_relay import ConfigRelay  # noqa: E402


def test_relay_answers_get_config_and_passes_the_rest(tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    served = devices.fs(str(share), "behind")
    back_sock, front_sock = str(tmp_path / "b.sock"), str(tmp_path / "f.sock")
    server = VhostUserServer(served.backend(), back_sock)
    server.serve_in_thread()
    relay = ConfigRelay(front_sock, back_sock, "relayed")
    try:
        with Frontend.connect(front_sock) as fe:
            fe.negotiate()
            assert fe.ask_u64(P.GET_PROTOCOL_FEATURES) & (1 << P.PROTOCOL_F_CONFIG)
            tag = bytes(fe.get_config(i, 1)[0] for i in range(36))
            assert tag.rstrip(b"\0") == b"relayed"          # the relay's, not the back-end's
            fe.set_mem_table()                               # fds pass through
            fe.setup_queue(0, 8)
            q = fe.setup_queue(1, 8)
            header = W.IN_HEADER.pack(40 + 5, W.LOOKUP, 9, 1, 0, 0, 0, 0, 0)
            q.ring.add_buffer([header + b"none\0"], [16])
            q.kick()
            _, error, unique = W.OUT_HEADER.unpack_from(q.wait_used()[0].data)
            assert (error, unique) == (-errno.ENOENT, 9)
    finally:
        relay.close()
        server.close()
        server.backend.disconnect()
        served.close()
