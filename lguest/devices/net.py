"""The virtio network device: frames between the guest's queues and a tap.

#L:380 The Network. Our network is a Host<->Guest network: the host side is a tap
# device (host/tap.py, L:930) that injects frames into the host as if they came in
# from a normal network card. We just shunt frames between the guest and the tap.
# Two queues, "rx" (host to guest) and "tx" (guest to host). The tap is injected:
# readv(views) -> bytes read (BlockingIOError when empty), writev(views), will_block().
#
# Every frame is led by a struct virtio_net_hdr_v1 of 12 bytes (flags, gso_type,
# hdr_len, gso_size, csum_start, csum_offset, num_buffers). The tap was told to use
# exactly that header (TUNSETVNETHDRSZ 12), so buffers go through untouched: "It
# expects the exact same format: what a coincidence!"
"""

import logging
import struct

from ..config import parse_mac
from ..errors import GuestError
from ..virtio import F_RING_INDIRECT_DESC, ID_NET, VNET_HDR_SIZE, bit
from .base import VirtioDevice, give_back, iov_skip

log = logging.getLogger("lguest.net")

# 5.1.3: Feature bits.
F_CSUM = 0
F_GUEST_CSUM = 1
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_MRG_RXBUF = 15

NUM_BUFFERS_OFFSET = 10

# struct virtio_net_config as the seed knew it: mac[6], u16 status, u16 max_virtqueue_pairs.
CONFIG_SIZE = 10

RX, TX = 0, 1

#L:381 Expect the Guest to handle everything except UFO, and we handle indirect
# ring entries: the seed's feature list. The MAC feature only if a MAC was given.
SEED_FEATURES = (bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6)
                 | bit(F_GUEST_ECN) | bit(F_HOST_TSO4) | bit(F_HOST_TSO6) | bit(F_HOST_ECN)
                 | bit(F_RING_INDIRECT_DESC))


class NetDevice(VirtioDevice):
    """virtio-net over an injected tap, one rx/tx pair."""

    device_id = ID_NET
    queue_names = ("rx", "tx")

    def __init__(self, tap, *, mac=None, name="net"):
        super().__init__(name)
        self.tap = tap
        self.features = SEED_FEATURES
        self.config = bytearray(CONFIG_SIZE)
        if mac is not None:
            self.config[0:6] = parse_mac(mac) if isinstance(mac, str) else bytes(mac)
            self.features |= bit(F_MAC)
        # rx_waits: how often a frame was waiting in the tap while the guest had no rx
        # buffer for it. Such a frame is not dropped: it stays in the tap's queue (the
        # kernel's, 500 frames; past that the tap drops and counts tx_dropped) until
        # buffers come (scripts/net-boot-loss reads both counts).
        self.stats = {"rx": 0, "tx": 0, "tx_errors": 0, "rx_errors": 0, "rx_waits": 0}

    def process(self, queue_index):
        try:
            if queue_index == TX:
                return self.transmit()
            return self.receive()
        except GuestError as e:
            raise e.where(self.name, self.queue_names[queue_index])

    def transmit(self):
        #L:382 Output: send the whole chain through to the tap with one writev, header
        # and all. A failed write is the host's trouble: warn, and still give the
        # buffer back (a lost frame is what a real network does too).
        queue = self.queues[TX]
        used = False
        while (chain := queue.pop()) is not None:
            if chain.writable:
                raise GuestError("Input buffers in net output queue?")
            try:
                self.tap.writev(chain.readable)
                self.stats["tx"] += 1
            except OSError as e:
                self.stats["tx_errors"] += 1
                log.warning("Write to tun failed (%s)?", str(e))
            queue.push(chain.head, 0)
            used = True
        return used

    def wants_host_input(self, queue_index):
        """The runner waits for the tap only while the guest has rx buffers for it."""
        if queue_index != RX or not self.queues or self.queues[RX] is None:
            return False
        return self.queues[RX].has_available()

    def receive(self):
        #L:383 Input is where the seed optimised: take frames from the tap into rx
        # buffers for as long as the tap has some, and only then let the runner
        # interrupt the guest (it asks the queue once process() returns): "if it
        # looks like we'll block reading from the tun device, send them an
        # interrupt". So a burst of frames costs the guest one interrupt.
        queue = self.queues[RX]
        used = False
        while not self.tap.will_block():
            chain = queue.pop()
            if chain is None:
                self.stats["rx_waits"] += 1
                break
            if chain.readable:
                raise GuestError("Output buffers in net input queue?")
            n = self.read_frame(chain.writable)
            if n is None:
                give_back(queue)
                break
            queue.push(chain.head, n)
            used = True
        return used

    def read_frame(self, views):
        try:
            n = self.tap.readv(views)
        except BlockingIOError:
            return None
        except OSError as e:
            self.stats["rx_errors"] += 1
            log.warning("Failed to read from tun (%s).", str(e))
            return None
        if n <= 0:
            return None
        #L:384 The tap writes the 10 bytes of the old header and skips the last two
        # (num_buffers). The spec (virtio 1.0, 5.1.6.4.1) says the device MUST set
        # num_buffers to 1 if VIRTIO_NET_F_MRG_RXBUF has not been negotiated. The
        # seed left whatever the guest had there; we write it (vhost-net was fixed
        # the same way in 2025).
        if n >= VNET_HDR_SIZE and not self.negotiated & bit(F_MRG_RXBUF):
            set_num_buffers(views, 1)
        self.stats["rx"] += 1
        return n


def set_num_buffers(views, count):
    """Write the header's num_buffers field, which may straddle two buffers."""
    data = struct.pack("<H", count)
    done = 0
    for v in iov_skip(views, NUM_BUFFERS_OFFSET):
        take = min(len(data) - done, v.nbytes)
        v[:take] = data[done:done + take]
        done += take
        if done == len(data):
            break
