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
from collections import deque

from ..config import NET_MAX_QUEUE_PAIRS, parse_mac
from ..errors import GuestError
from ..virtio import F_RING_INDIRECT_DESC, ID_NET, VNET_HDR_SIZE, bit
from .base import VirtioDevice, give_back, iov_write

log = logging.getLogger("lguest.net")

# 5.1.3: Feature bits.
F_CSUM = 0
F_GUEST_CSUM = 1
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_GUEST_UFO = 10
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_MRG_RXBUF = 15
F_CTRL_VQ = 17
F_MQ = 22

NUM_BUFFERS_OFFSET = 10

# 5.1.6.3.1: without MRG_RXBUF, a driver that took GUEST_TSO4, GUEST_TSO6 or GUEST_UFO
# "SHOULD populate the receive queue(s) with buffers of at least 65562 bytes", else of
# 1526: the 12-byte header and the largest frame. With MRG_RXBUF the device spreads a
# frame over as many buffers as it needs (L:387), and must find room for these.
MAX_FRAME = 1514
MAX_GSO_FRAME = 65550
# readv() takes at most IOV_MAX buffers (Linux's UIO_MAXIOV): more, and it fails.
IOV_MAX = 1024

# 5.1.6.3.1: "If VIRTIO_NET_F_MRG_RXBUF is negotiated, each buffer MUST be at least
# the size of the struct virtio_net_hdr."
RULE_RX_SHORT = "rx buffer shorter than virtio_net_hdr"
RULE_RX_READABLE = "Output buffers in net input queue?"

# struct virtio_net_config as the seed knew it: mac[6], u16 status, u16 max_virtqueue_pairs.
CONFIG_SIZE = 10
CONFIG_MAX_PAIRS = 8

RX, TX = 0, 1

# 5.1.6.5: the control queue. A command is struct virtio_net_ctrl_hdr {u8 class; u8 cmd},
# its data, then one device-writable ack byte.
CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET = 4, 0
CTRL_OK, CTRL_ERR = 0, 1
CTRL_COMMAND_MAX = 64          # we read at most this much of a command (ours are 4 bytes)
MAX_QUEUE_PAIRS = NET_MAX_QUEUE_PAIRS   # what we accept for queue pairs (a tap queue each)

#L:381 Expect the Guest to handle everything except UFO, and we handle indirect
# ring entries: the seed's feature list. The MAC feature only if a MAC was given.
SEED_FEATURES = (bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6)
                 | bit(F_GUEST_ECN) | bit(F_HOST_TSO4) | bit(F_HOST_TSO6) | bit(F_HOST_ECN)
                 | bit(F_RING_INDIRECT_DESC))
# Ours, beyond the seed's: mergeable rx buffers (L:387).
FEATURES = SEED_FEATURES | bit(F_MRG_RXBUF)


class NetDevice(VirtioDevice):
    """virtio-net over an injected tap, one rx/tx pair; or, given a list of taps (one
    queue of a multi-queue tap each), that many pairs and a control queue."""

    device_id = ID_NET
    queue_names = ("rx", "tx")

    def __init__(self, tap, *, mac=None, name="net"):
        super().__init__(name)
        self.taps = list(tap) if isinstance(tap, (list, tuple)) else [tap]
        self.queue_pairs = len(self.taps)
        if not 1 <= self.queue_pairs <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queue pairs must be 1..{MAX_QUEUE_PAIRS}, not {self.queue_pairs}")
        self.features = FEATURES
        # Per pair, for mergeable rx (L:388): a host buffer a frame is read into when the
        # ring cannot take it directly, and a frame read that way still waiting for room.
        self._bounce = [None] * self.queue_pairs
        self._held = [None] * self.queue_pairs
        self.config = bytearray(CONFIG_SIZE)
        if mac is not None:
            self.config[0:6] = parse_mac(mac) if isinstance(mac, str) else bytes(mac)
            self.features |= bit(F_MAC)
        #L:385 Multiqueue (5.1.5, VIRTIO_NET_F_MQ): pairs rx0, tx0, rx1, tx1, ..., then
        # the control queue, through which the driver says how many pairs it uses
        # (MQ_VQ_PAIRS_SET; until then, one). Each pair has its own tap queue; the tap
        # spreads the host's flows over the queues attached, so a pair the driver does
        # not use has its tap queue detached, or frames would wait there for ever.
        # One pair keeps the seed's layout (no control queue, no MQ), over PCI too.
        # Seen here: UML's virtio_uml sets up every ring and sends MQ_VQ_PAIRS_SET 1 (it
        # has one CPU); QEMU 7.2 -smp 2 (-netdev vhost-user,queues=2, mq=on) keeps the
        # control queue for itself, and its guest's frames used both pairs.
        self.ctrl_index = None
        # Set by a threaded runner: wake_queue(qi) makes that queue's thread look again.
        # A pair turned on may already hold rx buffers, and the driver need not kick.
        self.wake_queue = None
        self.active_pairs = 1
        self._ctrl_was_live = False
        self._attached = [True] * self.queue_pairs
        if self.queue_pairs > 1:
            self.queue_names = tuple(f"{kind}{i}" for i in range(self.queue_pairs)
                                     for kind in ("rx", "tx")) + ("ctrl",)
            self.ctrl_index = 2 * self.queue_pairs
            self.features |= bit(F_CTRL_VQ) | bit(F_MQ)
            struct.pack_into("<H", self.config, CONFIG_MAX_PAIRS, self.queue_pairs)
        # rx_waits: how often a frame was waiting in the tap while the guest had no rx
        # buffer for it. Such a frame is not dropped: it stays in the tap's queue (the
        # kernel's, tx_queue_len frames, 1000 here; past that the tap drops and counts
        # tx_dropped) until buffers come (scripts/net-boot-loss reads both counts).
        # rx_merged: frames spread over more than one rx buffer (MRG_RXBUF, L:387);
        # rx_dropped: frames no ring of the driver's could ever hold (L:388).
        self.stats = {"rx": 0, "tx": 0, "tx_errors": 0, "rx_errors": 0, "rx_waits": 0,
                      "rx_merged": 0, "rx_dropped": 0, "ctrl": 0, "pairs_set": None}

    @property
    def tap(self):
        """The first pair's tap (the only one, without multiqueue)."""
        return self.taps[0]

    @property
    def vhost_queue_num(self):
        """GET_QUEUE_NUM's answer: for net, QEMU (and DPDK) count queue pairs."""
        return self.queue_pairs

    def process(self, queue_index):
        try:
            if queue_index == self.ctrl_index:
                return self.control()
            pair, kind = divmod(queue_index, 2)
            if kind == TX:
                return self.transmit(pair)
            return self.receive(pair)
        except GuestError as e:
            raise e.where(self.name, self.queue_names[queue_index])

    # -- which pairs are in use --------------------------------------------------------
    def activate(self, queues, negotiated):
        super().activate(queues, negotiated)
        if self.ctrl_index is None:
            return
        # A front-end that serves the control queue itself (QEMU) turns pairs on and
        # off with SET_VRING_ENABLE: the rings we are given are the pairs in use. When
        # the control queue is ours (virtio_uml), the driver starts on one pair and
        # says when it wants more; a ring restart keeps what it said.
        ctrl_live = self.queues[self.ctrl_index] is not None
        if ctrl_live and not self._ctrl_was_live:
            self.active_pairs = 1
        self._ctrl_was_live = ctrl_live
        self._attach_taps()

    def reset(self):
        # A frame held for a driver that is gone would reach its successor, who may
        # not even have negotiated a size it fits (GUEST_TSO): it goes with the driver.
        super().reset()
        self._held = [None] * self.queue_pairs

    def pair_in_use(self, pair):
        if pair >= len(self.queues) // 2 or self.queues[2 * pair] is None:
            return False
        ctrl_live = self.ctrl_index is not None and self.queues[self.ctrl_index] is not None
        return pair < self.active_pairs or not ctrl_live

    def _attach_taps(self):
        # Pair 0 is always in use (5.1.6.5.5), and its tap queue always attached.
        for pair in range(1, self.queue_pairs):
            want = self.pair_in_use(pair)
            if want != self._attached[pair]:
                if hasattr(self.taps[pair], "set_attached"):
                    self.taps[pair].set_attached(want)
                if want and self.wake_queue is not None:
                    self.wake_queue(2 * pair + RX)
            self._attached[pair] = want

    def control(self):
        #L:386 The control queue: each command answered with an ack byte. Only the
        # multiqueue class is ours; any other (we offer none of their features) is
        # answered VIRTIO_NET_ERR, as QEMU does, rather than stopping the queue.
        queue = self.queues[self.ctrl_index]
        used = False
        while (chain := queue.pop()) is not None:
            ack = next((v for v in chain.writable if v.nbytes), None)
            if ack is None:
                raise GuestError("control command without an ack byte")
            command = _gather(chain.readable, CTRL_COMMAND_MAX)
            ack[:1] = bytes([self.command(command)])
            queue.push(chain.head, 1)
            used = True
        return used

    def command(self, data):
        self.stats["ctrl"] += 1
        if len(data) < 2 or (data[0], data[1]) != (CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET):
            return CTRL_ERR
        if not self.negotiated & bit(F_MQ) or len(data) < 4:
            return CTRL_ERR
        pairs = struct.unpack_from("<H", data, 2)[0]
        if not 1 <= pairs <= self.queue_pairs:
            log.warning("%s: driver asked for %d queue pairs (of %d)", self.name, pairs,
                        self.queue_pairs)
            return CTRL_ERR
        self.active_pairs = pairs
        self.stats["pairs_set"] = pairs
        log.info("%s: the driver uses %d of %d queue pairs", self.name, pairs, self.queue_pairs)
        self._attach_taps()
        return CTRL_OK

    # -- frames ------------------------------------------------------------------------
    def transmit(self, pair=0):
        #L:382 Output: send the whole chain through to the tap with one writev, header
        # and all. A failed write is the host's trouble: warn, and still give the
        # buffer back (a lost frame is what a real network does too).
        queue = self.queues[2 * pair + TX]
        tap = self.taps[pair]
        used = False
        while (chain := queue.pop()) is not None:
            if chain.writable:
                raise GuestError("Input buffers in net output queue?")
            try:
                tap.writev(chain.readable)
                self.stats["tx"] += 1
            except OSError as e:
                self.stats["tx_errors"] += 1
                log.warning("Write to tun failed (%s)?", str(e))
            queue.push(chain.head, 0)
            used = True
        return used

    def wants_host_input(self, queue_index):
        """The runner waits for the tap only while the guest has rx buffers for it
        (and, with several pairs, uses that pair), and no frame is already waiting for
        more of them (L:388: then the guest's next kick is what we wait for)."""
        pair, kind = divmod(queue_index, 2)
        if queue_index == self.ctrl_index or kind != RX or not self.pair_in_use(pair):
            return False
        if self._held[pair] is not None:
            return False
        return self.queues[queue_index].has_available()

    def receive(self, pair=0):
        #L:383 Input is where the seed optimised: take frames from the tap into rx
        # buffers for as long as the tap has some, and only then let the runner
        # interrupt the guest (it asks the queue once process() returns): "if it
        # looks like we'll block reading from the tun device, send them an
        # interrupt". So a burst of frames costs the guest one interrupt.
        if self.negotiated & bit(F_MRG_RXBUF):
            return self._receive_mergeable(pair)
        queue = self.queues[2 * pair + RX]
        tap = self.taps[pair]
        used = False
        while not tap.will_block():
            chain = queue.pop()
            if chain is None:
                self.stats["rx_waits"] += 1
                break
            if chain.readable:
                raise GuestError(RULE_RX_READABLE)
            n = self.read_frame(chain.writable, tap)
            if n is None:
                give_back(queue)
                break
            #L:384 The tap writes the 10 bytes of the old header and skips the last two
            # (num_buffers). The spec (virtio 1.0, 5.1.6.4.1) says the device MUST set
            # num_buffers to 1 if VIRTIO_NET_F_MRG_RXBUF has not been negotiated. The
            # seed left whatever the guest had there; we write it (vhost-net was fixed
            # the same way in 2025).
            if n >= VNET_HDR_SIZE:
                set_num_buffers(chain.writable, 1)
            queue.push(chain.head, n)
            self.stats["rx"] += 1
            used = True
        return used

    #L:387 Mergeable rx buffers (VIRTIO_NET_F_MRG_RXBUF, 5.1.6.3/5.1.6.4). Without it a
    # driver offered GUEST_TSO must post buffers that each hold a 64 KiB frame: Linux
    # chains ~72 KiB of pages per buffer and fills its 256-entry ring with them, ~20 MiB
    # of a 64 MiB guest. With it, it posts buffers of a page or less, and the device
    # spreads a frame over as many as it needs, telling the driver how many in the first
    # one's header (num_buffers). 5.1.6.4.1: the device "MUST use all buffers but the
    # last ... completely", and "MUST use all buffers used by a single receive packet
    # together": every buffer but the last is full, and the frame's used entries are
    # published with one used.idx store (push_many), so the driver never sees part of it.
    #
    # The tap hands over a whole frame per readv and cannot say how long it is first.
    # So we pop chains until they can hold the largest frame the negotiated features
    # allow (5.1.6.3.1's 65550 or 1514 bytes, plus the header), readv straight into all
    # of them, use those the frame filled, and keep the rest for the next frame. What
    # is left when the tap runs dry goes back to the ring (give_back): none of it is in
    # the used ring, so the driver cannot have reused it, and the next pop finds it.
    def _receive_mergeable(self, pair):
        queue = self.queues[2 * pair + RX]
        tap = self.taps[pair]
        gso = bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6) | bit(F_GUEST_UFO)
        want = VNET_HDR_SIZE + (MAX_GSO_FRAME if self.negotiated & gso else MAX_FRAME)
        spare = deque()     # (chain, its room): popped, not used yet; the last ones popped
        room = 0
        used = False
        try:
            while self._held[pair] is not None or not tap.will_block():
                while room < want and (chain := queue.pop()) is not None:
                    if chain.readable:
                        raise GuestError(RULE_RX_READABLE)
                    n = chain.writable_len
                    if n < VNET_HDR_SIZE:
                        raise GuestError(RULE_RX_SHORT, detail=f"{n} bytes, head {chain.head}")
                    spare.append((chain, n))
                    room += n
                if room < want and queue.round_spent:
                    break           # the round's budget ran out, not the ring (L:221)
                if not spare:
                    self.stats["rx_waits"] += 1
                    break
                n = self._fill(pair, tap, spare, room, want, queue.size)
                if n is None:
                    break
                if n == 0:
                    continue        # a frame dropped (L:388): on to the next
                first = spare[0][0]
                entries = []
                while n > 0 or not entries:
                    chain, size = spare.popleft()
                    entries.append((chain.head, min(size, n)))
                    room -= size
                    n -= size
                set_num_buffers(first.writable, len(entries))
                queue.push_many(entries)
                self.stats["rx"] += 1
                self.stats["rx_merged"] += len(entries) > 1
                used = True
        finally:
            give_back(queue, len(spare))
        return used

    #L:388 When the chains popped cannot take a frame directly -- the driver has posted
    # fewer than the largest frame needs, or so many small ones that readv would refuse
    # the list (IOV_MAX) -- the frame is read into a host buffer and copied from there.
    # So a driver that posts a few small buffers still gets its small frames at once. A
    # frame too big for what is posted is held here, not lost, until the driver posts
    # more: its kick brings us back, and wants_host_input() stops the runner watching
    # the tap meanwhile (the frame is first in line; the tap's queue waits behind it).
    # A frame that can never fit is dropped and counted, or it would stop the queue
    # for ever: when we hold as many chains as the ring has entries, the driver cannot
    # post another. (A driver with multi-descriptor chains reaches its limit sooner,
    # which we cannot see: its frame waits, as QEMU's device waits for buffers.)
    # Returns the frame's length, None if there is none to deliver now, 0 if dropped.
    def _fill(self, pair, tap, spare, room, want, ring_size):
        views = [v for chain, _ in spare for v in chain.writable]
        frame = self._held[pair]
        if frame is None:
            if room >= want and len(views) <= IOV_MAX:
                return self.read_frame(views, tap)      # straight into guest memory
            if self._bounce[pair] is None:
                self._bounce[pair] = bytearray(VNET_HDR_SIZE + MAX_GSO_FRAME)
            bounce = memoryview(self._bounce[pair])[:want]
            n = self.read_frame([bounce], tap)
            if n is None:
                return None
            frame = bounce[:n]
        if len(frame) > room:
            self._held[pair] = None
            if len(spare) >= ring_size:
                self.stats["rx_dropped"] += 1
                log.warning("%s: dropped a frame of %d bytes: the driver's whole rx ring "
                            "holds %d", self.name, len(frame), room)
                return 0
            self._held[pair] = bytes(frame)
            self.stats["rx_waits"] += 1
            return None
        self._held[pair] = None
        iov_write(views, frame)
        return len(frame)

    def read_frame(self, views, tap):
        """One frame from the tap into views: its length, or None if there was none
        (or the read failed: counted and logged, the frame is lost)."""
        try:
            n = tap.readv(views)
        except BlockingIOError:
            return None
        except OSError as e:
            self.stats["rx_errors"] += 1
            log.warning("Failed to read from tun (%s).", str(e))
            return None
        return n if n > 0 else None


def _gather(views, limit):
    """The first `limit` bytes of some buffers, copied."""
    data = bytearray()
    for v in views:
        data += v[:limit - len(data)]
        if len(data) >= limit:
            break
    return bytes(data)


def set_num_buffers(views, count):
    """Write the header's num_buffers field, which may straddle two buffers."""
    iov_write(views, struct.pack("<H", count), NUM_BUFFERS_OFFSET)