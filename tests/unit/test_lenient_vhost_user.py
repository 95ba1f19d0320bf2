"""vhost-user is lenient by default (L:730): a ring the guest misuses stops, its error
eventfd fires, the rule is logged once however often the guest kicks it again, and the
ring works again once the front-end resets the device (RESET_DEVICE) and sets it up
anew. (test_vhost_user_backend.py checks the stop itself and that the server answers.)"""

import logging
import os
import struct
import time

from lguest.vhost_user import protocol as P
from test_vhost_user_backend import blk_request, block_session, disk  # noqa: F401 - fixtures


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_broken_ring_logs_once_and_works_after_reset_device(block_session, disk, caplog):
    path, _, pattern = disk
    fe, backend = block_session.fe, block_session.backend
    fe.negotiate()
    fe.set_mem_table()
    err_fd = os.eventfd(0, os.EFD_NONBLOCK)
    fe.request(P.SET_VRING_ERR, P.pack_u64(0), [err_fd])
    q = fe.setup_queue(0, 8)
    with caplog.at_level(logging.ERROR, logger="lguest.vhost_user"):
        q.ring.add_chain([(1 << 40, 16)], [(0x10000, 1)])     # outside guest memory
        q.kick()
        assert wait_for(lambda: backend.errors)
        for _ in range(5):                                     # the guest insists
            q.kick()
        time.sleep(0.2)
    assert len(backend.errors) == 1
    assert caplog.text.count("no longer served") == 1
    assert struct.unpack("<Q", os.read(err_fd, 8))[0] == 1
    os.close(err_fd)
    # Reset, set up again (features are forgotten by RESET_DEVICE), and it serves.
    fe.request(P.RESET_DEVICE)
    fe.request(P.SET_FEATURES, P.pack_u64(fe.features))
    q.close()
    q2 = fe.setup_queue(0, 8)
    got = blk_request(q2, 0, 2, read_len=512)
    assert got == pattern[2 * 512:3 * 512] + b"\0"
    assert len(backend.errors) == 1
