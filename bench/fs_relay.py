"""A vhost-user relay that lets UML use Debian's C virtiofsd (bench code only).

UML's virtio_uml reads a virtio-fs device's tag with GET_CONFIG, which needs
PROTOCOL_F_CONFIG; QEMU 7.2's virtiofsd offers neither (QEMU itself supplies the tag),
so UML fails with "virtio-fs: tag <...> not found". The relay sits between the two
sockets and forwards every message and its fds both ways, except that it adds
PROTOCOL_F_CONFIG to virtiofsd's GET_PROTOCOL_FEATURES answer, strips it again from
SET_PROTOCOL_FEATURES, and answers GET_CONFIG itself (the tag, num_request_queues 1).
Only the control plane passes through here: the rings are in shared memory and the
kicks and interrupts are eventfds UML and virtiofsd hold directly, so the relay costs
nothing per FUSE request.
"""

import array
import os
import socket
import struct
import threading

from lguest.vhost_user import protocol as P

MAX_FDS = 16


def recv_message(sock):
    """(header bytes, payload, fds) or None at EOF."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(P.HEADER.size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    if not data:
        return None
    while len(data) < P.HEADER.size:
        more = sock.recv(P.HEADER.size - len(data))
        if not more:
            return None
        data += more
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[:len(raw) - len(raw) % fds.itemsize])
    _, _, size = P.HEADER.unpack(data)
    payload = b""
    while len(payload) < size:
        more = sock.recv(size - len(payload))
        if not more:
            return None
        payload += more
    return data, payload, list(fds)


def send_message(sock, header, payload, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([header + payload], anc)
    for fd in fds:
        os.close(fd)


class ConfigRelay:
    """Listen on `listen_path`; for the one front-end that connects, relay to `backend_path`."""

    def __init__(self, listen_path, backend_path, tag):
        self.backend_path = backend_path
        self.config = tag.encode().ljust(36, b"\0") + struct.pack("<I", 1)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(listen_path)
        self.listener.listen(1)
        self.front_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            front, _ = self.listener.accept()
        except OSError:
            return
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        back.connect(self.backend_path)
        other = threading.Thread(target=self._back_to_front, args=(back, front), daemon=True)
        other.start()
        try:
            self._front_to_back(front, back)
        finally:
            for s in (front, back):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            other.join(5)
            front.close()
            back.close()

    def _front_to_back(self, front, back):
        while (msg := recv_message(front)) is not None:
            header, payload, fds = msg
            request, flags, size = P.HEADER.unpack(header)
            if request == P.GET_CONFIG:
                offset, length, cflags = P.CONFIG_HEAD.unpack_from(payload)
                data = self.config[offset:offset + length].ljust(length, b"\0")
                body = P.CONFIG_HEAD.pack(offset, length, cflags) + data
                with self.front_lock:
                    send_message(front, P.HEADER.pack(request, P.VERSION | P.FLAG_REPLY,
                                                      len(body)), body)
                continue
            if request == P.SET_PROTOCOL_FEATURES:
                (value,) = struct.unpack("<Q", payload)
                payload = struct.pack("<Q", value & ~(1 << P.PROTOCOL_F_CONFIG))
            send_message(back, header, payload, fds)

    def _back_to_front(self, back, front):
        try:
            while (msg := recv_message(back)) is not None:
                header, payload, fds = msg
                request, flags, size = P.HEADER.unpack(header)
                if request == P.GET_PROTOCOL_FEATURES and flags & P.FLAG_REPLY:
                    (value,) = struct.unpack("<Q", payload)
                    payload = struct.pack("<Q", value | (1 << P.PROTOCOL_F_CONFIG))
                with self.front_lock:
                    send_message(front, header, payload, fds)
        except OSError:
            pass

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)     # wakes a pending accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
