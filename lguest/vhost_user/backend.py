"""The vhost-user transport: one VirtioDevice, driven by a front-end's messages.

#L:720 This is the vhost-user twin of the virtio-PCI register file (L:400): the same
# device (L:300), the same split rings (L:200), a different way of being told things.
# Where a PCI driver writes queue_size, queue_desc and queue_enable registers, a
# front-end sends SET_VRING_NUM, SET_VRING_ADDR and SET_VRING_KICK/ENABLE; where it
# writes device_status, a front-end has nothing -- the rings being live *is* the
# device being live. So the device is (re)activated whenever the set of served rings
# changes, with every ring that is served at that moment, and reset when none is.
#
# handle() takes one parsed message and returns the reply bytes, or None. Two kinds of
# failure: a ProtocolError (malformed message) closes the connection; a RequestError or
# GuestError (a well-formed request we refuse) is logged and, if the front-end asked
# for an acknowledgement (REPLY_ACK), answered with a non-zero status.
"""

import logging
import os
import threading

from .. import virtio
from ..errors import GuestError
from ..transport_rules import (offered_features, over_accepted, queue_size_problem,
                               ring_alignment_problem)
from ..virtqueue import Virtqueue
from . import protocol as P
from .memory import RegionMemory
from .polling import DEFAULT_POLL_US
from .rings import DirectRunner, KickWatcher, Vring, require_x86_host, signal_fd

log = logging.getLogger("lguest.vhost_user")

# Requests whose answer is their reply: REPLY_ACK adds nothing to them.
ANSWERED = {P.GET_FEATURES, P.GET_PROTOCOL_FEATURES, P.GET_VRING_BASE, P.GET_QUEUE_NUM,
            P.GET_CONFIG}


#L:726 The ring features every device gets here: the split ring (L:200) implements
# both for any device, and QEMU's front-ends use them whenever they are offered (its
# vhost-user-rng even sends them when they are not). EVENT_IDX turns kicks and
# interrupts into "tell me when you pass index N" both ways (L:265, L:270).
RING_FEATURES = virtio.bit(virtio.F_RING_EVENT_IDX) | virtio.bit(virtio.F_RING_INDIRECT_DESC)

#L:727 A block device's seg_max. The front-end reads the config (GET_CONFIG) before
# it says how big its rings are, and Linux then builds requests of up to seg_max + 2
# descriptors, indirect or not. qemu-storage-daemon answers 128 - 2 whatever the
# ring, for QEMU's default 128-entry ring; so do we. (Over PCI we know the ring:
# block.py keeps queue size - 2 there.)
VHOST_USER_SEG_MAX = 128 - 2


class VhostUserTransport:
    """Serves one device to one front-end at a time; disconnect() readies it for the next.

    The vhost-user spec calls this side the "back-end"; it is a transport (the twin of
    pci/transport.py), not a lguest.backends.base.Backend, which runs a guest's CPU."""

    def __init__(self, device, *, runner_factory=DirectRunner, poll_us=DEFAULT_POLL_US):
        require_x86_host()             # the rings' ordering holds on x86 only (L:733)
        if poll_us < 0:
            raise ValueError(f"poll_us must be >= 0, not {poll_us}")
        self.device = device
        # What watches a live ring's kick fd (L:730); a replay (L:785) swaps in its own.
        self.watcher_factory = lambda *args: KickWatcher(*args, poll_us=poll_us)
        self.poll_us = poll_us
        # A replay of a trace recorded before issue 15 sets 0 and the old seg_max.
        self.ring_features = RING_FEATURES
        if hasattr(device, "set_seg_max"):
            device.set_seg_max(VHOST_USER_SEG_MAX)
        # An optional device-level trace hook (L:785). Off (None), it costs one check
        # per message, per ring start and per interrupt; the rings are not wrapped.
        self.recorder = None
        self.runner_factory = runner_factory
        self.memory = None
        self.backend_req_fd = None
        self.runner = None
        self.watchers = []
        self.vrings = [Vring(i) for i in range(len(device.queue_names))]
        self.features = 0
        self.protocol_features = 0
        self.owned = False
        self._warned_features = 0    # extra feature bits already logged (once each)
        self.errors = []          # (vring index, error) for rings stopped by an error
        # The socket thread and whoever shuts us down may both reach for the rings.
        self._lock = threading.RLock()
        device.on_config_change = self._config_changed
        self._handlers = {
            P.GET_FEATURES: self._get_features, P.SET_FEATURES: self._set_features,
            P.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            P.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            P.SET_OWNER: self._set_owner, P.RESET_OWNER: self._reset_owner,
            P.RESET_DEVICE: self._reset_device, P.SET_MEM_TABLE: self._set_mem_table,
            P.SET_VRING_NUM: self._set_vring_num, P.SET_VRING_ADDR: self._set_vring_addr,
            P.SET_VRING_BASE: self._set_vring_base, P.GET_VRING_BASE: self._get_vring_base,
            P.SET_VRING_KICK: self._set_vring_kick, P.SET_VRING_CALL: self._set_vring_call,
            P.SET_VRING_ERR: self._set_vring_err, P.SET_VRING_ENABLE: self._set_vring_enable,
            P.GET_QUEUE_NUM: self._get_queue_num, P.GET_CONFIG: self._get_config,
            P.SET_CONFIG: self._set_config, P.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
        }

    # -- what we offer -------------------------------------------------------------
    def offered_features(self):
        return (offered_features(self.device) | self.ring_features
                | virtio.bit(P.F_PROTOCOL_FEATURES))

    def offered_protocol_features(self):
        # virtio_uml takes CONFIG (and BACKEND_REQ for config changes); QEMU uses the rest.
        offered = (virtio.bit(P.PROTOCOL_F_REPLY_ACK) | virtio.bit(P.PROTOCOL_F_CONFIG)
                   | virtio.bit(P.PROTOCOL_F_RESET_DEVICE) | virtio.bit(P.PROTOCOL_F_BACKEND_REQ))
        if len(self.vrings) > 1:
            offered |= virtio.bit(P.PROTOCOL_F_MQ)
        return offered

    @property
    def negotiated(self):
        """The virtio features the device sees: bit 30 is vhost-user's, not virtio's."""
        return self.features & ~virtio.bit(P.F_PROTOCOL_FEATURES)

    # -- the message loop's entry point --------------------------------------------------
    def handle(self, msg):
        """Act on one message; return the reply to send (bytes) or None."""
        with self._lock:
            if self.recorder is not None:
                return self.recorder.message(msg, self._handle)
            return self._handle(msg)

    def _handle(self, msg):
        try:
            handler = self._handlers.get(msg.request)
            if handler is None:
                if msg.need_reply:
                    raise P.RequestError("unsupported request", detail=msg.name)
                raise P.ProtocolError("unsupported request", detail=msg.name)
            answer = handler(msg)
        except P.ProtocolError:
            raise
        except GuestError as e:
            log.warning("vhost-user %s: %s refused: %s", self.device.name, msg.name, e)
            if msg.request in ANSWERED:
                raise P.ProtocolError(e.rule, detail=e.detail) from e
            if not msg.need_reply:
                return self._refused_unheard(e)
            return P.encode_reply(msg.request, P.pack_u64(1))
        finally:
            for fd in msg.fds:             # anything a message carried but did not need
                os.close(fd)
            msg.fds.clear()
        if msg.request in ANSWERED:
            return P.encode_reply(msg.request, answer)
        if msg.need_reply:
            return P.encode_reply(msg.request, P.pack_u64(0))
        return None

    # -- features --------------------------------------------------------------------
    def _get_features(self, msg):
        return P.pack_u64(self.offered_features())

    def _set_features(self, msg):
        #L:725 Bits we never offered. Over PCI the seed refuses them; here refusing
        # is worse than useless: QEMU sends SET_FEATURES without asking for a reply,
        # so it never hears of it, and the guest goes on using what it accepted while
        # we run without it -- a hang with no error. libvhost-user takes the value as
        # it comes; so do we, saying once per bit what the front-end added. The
        # devices act only on bits they know, and the ring honours EVENT_IDX and
        # INDIRECT_DESC whoever offered them.
        value = P.decode_u64(msg)
        extra = value & ~self.offered_features() & ~self._warned_features
        if extra:
            self._warned_features |= extra
            log.warning("vhost-user %s: front-end set features %#x beyond our offer %#x; "
                        "taking them as libvhost-user does", self.device.name, extra,
                        self.offered_features())
        self.features = value
        if any(v.serving for v in self.vrings):
            self._restart_serving()

    def _get_protocol_features(self, msg):
        return P.pack_u64(self.offered_protocol_features())

    def _set_protocol_features(self, msg):
        value = P.decode_u64(msg)
        if value & ~self.offered_protocol_features():
            raise P.RequestError("over-accepted protocol features",
                                 detail=f"{value:#x} of {self.offered_protocol_features():#x}")
        self.protocol_features = value

    def _get_queue_num(self, msg):
        # "The maximum number of queues": for net, QEMU and DPDK count queue pairs.
        return P.pack_u64(getattr(self.device, "vhost_queue_num", len(self.vrings)))

    # -- ownership and reset -----------------------------------------------------------
    def _set_owner(self, msg):
        self.owned = True

    def _reset_owner(self, msg):
        self._forget_front_end()

    def _reset_device(self, msg):
        #L:728 RESET_DEVICE: "disable all rings and reset all internal device state to the
        # initial state, ready to be reinitialized. The back-end retains ownership of the
        # device throughout the reset operation." Memory and protocol features stay.
        self._reset_rings()
        self.features = 0

    def _reset_rings(self):
        self._stop_serving()
        for v in self.vrings:
            v.close_fds()
        self.vrings = [Vring(i) for i in range(len(self.vrings))]
        self.device.reset()

    def disconnect(self):
        """The front-end went away (or said RESET_OWNER): forget it entirely."""
        with self._lock:
            self._forget_front_end()

    def _forget_front_end(self):
        self._reset_rings()
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        if self.backend_req_fd is not None:
            os.close(self.backend_req_fd)
            self.backend_req_fd = None
        self.features = self.protocol_features = 0
        self.owned = False

    def close(self):
        self.disconnect()
        self.device.close()

    # -- memory ------------------------------------------------------------------------
    def _set_mem_table(self, msg):
        regions, fds = P.decode_mem_table(msg)
        try:
            memory = RegionMemory(regions, fds)
        finally:
            for fd in fds:                 # mmap holds its own reference to each file
                os.close(fd)
        # Rings read through the old mapping until they stop; only then may it go.
        serving = any(v.serving for v in self.vrings)
        self._stop_serving()
        old, self.memory = self.memory, memory
        if old is not None:
            old.close()
        for region in regions:
            log.info("vhost-user %s: region guest %#x-%#x user %#x", self.device.name,
                     region.guest_addr, region.guest_addr + region.size, region.user_addr)
        if serving:
            self._restart_serving()

    # -- rings -------------------------------------------------------------------------
    def _vring(self, index):
        if not 0 <= index < len(self.vrings):
            raise P.RequestError("invalid vring index",
                                 detail=f"{index} of {len(self.vrings)} queues")
        return self.vrings[index]

    def _changing(self, vring):
        """A ring's set-up changes: stop serving it now, re-set-up clears a past error."""
        vring.broken = False
        return vring.serving

    def _set_up(self, vring, **fields):
        """Change a ring's set-up; a ring being served is served again with it."""
        live = self._changing(vring)
        for name, value in fields.items():
            setattr(vring, name, value)
        if live:
            self._restart_serving()

    def _set_vring_num(self, msg):
        index, num = P.decode_state(msg)
        vring = self._vring(index)
        # L:205: a power of 2, up to virtio's largest (32768), not the PCI queue_max_size.
        problem = queue_size_problem(num, self.device.vhost_user_queue_max_size)
        if problem:
            raise P.RequestError("invalid queue size", queue=index, detail=problem)
        self._set_up(vring, num=num)

    def _set_vring_addr(self, msg):
        addr = P.decode_vring_addr(msg)
        vring = self._vring(addr.index)
        if self.memory is not None:
            self._ring_parts(addr, vring.num)      # refuse a ring we could never reach
        self._set_up(vring, addr=addr)

    def _set_vring_base(self, msg):
        index, base = P.decode_state(msg)
        vring = self._vring(index)
        if base > 0xFFFF:
            raise P.RequestError("invalid vring base", queue=index, detail=str(base))
        self._set_up(vring, base=base)

    def _get_vring_base(self, msg):
        #L:724 GET_VRING_BASE is the front-end's "stop": "the back-end must stop the ring
        # and return the last available index". Stopping joins the ring's thread, so the
        # index we return is final; a later SET_VRING_BASE/KICK starts where it left off.
        index, _ = P.decode_state(msg)
        vring = self._vring(index)
        # A ring stopped by an error is not serving, but its queue still knows how
        # far it got: that index, not the one from before it started, is the answer.
        was_running = vring.serving or vring.queue is not None
        vring.started = False
        if was_running:
            self._restart_serving()
        vring.replace_fd("kick_fd", None)
        return P.pack_state(index, vring.base)

    def _set_vring_kick(self, msg):
        #L:722 SET_VRING_KICK starts the ring. "If VHOST_USER_F_PROTOCOL_FEATURES has not
        # been negotiated, the ring starts directly in the enabled state. If it has been
        # negotiated, the ring is initialized in a disabled state and is enabled by
        # SET_VRING_ENABLE with parameter 1." (virtio_uml negotiates it, then enables.)
        index, fd = P.decode_vring_fd(msg)
        try:
            vring = self._vring(index)
            if fd is None:
                raise P.RequestError("polled rings are not supported", queue=index)
        except GuestError:
            if fd is not None:
                os.close(fd)
            raise
        self._changing(vring)
        self._stop_serving()
        vring.replace_fd("kick_fd", fd)
        vring.started = True
        if not self.features & virtio.bit(P.F_PROTOCOL_FEATURES):
            vring.enabled = True
        self._restart_serving()

    def _set_vring_fd(self, msg, attribute):
        index, fd = P.decode_vring_fd(msg)
        try:
            vring = self._vring(index)
        except GuestError:
            if fd is not None:
                os.close(fd)
            raise
        # A ring thread may be signalling the old fd right now: closing it under that
        # thread could make the write land in whatever file reuses the number next. So
        # the swap happens under the lock every signal takes -- not by stopping the
        # rings: QEMU sends SET_VRING_CALL at each MSI-X mask and unmask, and a device
        # reset each time would throw away in-flight work. (Nor do we make the fd
        # non-blocking: it is shared with the front-end; see the Signaller, L:735.)
        with vring.signal_lock:
            vring.replace_fd(attribute, fd)

    def _set_vring_call(self, msg):
        self._set_vring_fd(msg, "call_fd")

    def _set_vring_err(self, msg):
        self._set_vring_fd(msg, "err_fd")

    def _set_vring_enable(self, msg):
        index, enable = P.decode_state(msg)
        vring = self._vring(index)
        if enable not in (0, 1):
            raise P.RequestError("invalid vring enable", queue=index, detail=str(enable))
        if vring.enabled != bool(enable):
            vring.enabled = bool(enable)
            self._restart_serving()

    # -- config space ------------------------------------------------------------------
    def _get_config(self, msg):
        access = P.decode_config(msg)
        # Linux reads the config struct from offset 0 up to the field it wants, which
        # may be past what this device defines (a feature it lacks): those bytes read
        # as zero, as unimplemented PCI config does, rather than failing the read.
        config = bytes(self.device.config)
        data = config[access.offset:access.offset + access.size]
        data += bytes(access.size - len(data))
        return P.pack_config(access.offset, data, access.flags)

    def _set_config(self, msg):
        access = P.decode_config(msg)
        if access.size:
            self.device.write_config(access.offset, access.size,
                                     int.from_bytes(access.data, "little"))

    def _set_backend_req_fd(self, msg):
        fd = P.take_fd(msg)
        if self.backend_req_fd is not None:
            os.close(self.backend_req_fd)
        self.backend_req_fd = fd

    def _config_changed(self):
        """The host changed the device's config: tell the front-end, if it listens."""
        if self.backend_req_fd is None:
            return
        try:
            os.write(self.backend_req_fd, P.encode(P.BACKEND_CONFIG_CHANGE_MSG))
        except OSError as e:
            log.warning("vhost-user %s: config change not delivered: %s", self.device.name, e)

    # -- serving -----------------------------------------------------------------------
    def _ring_parts(self, addr, num):
        """Guest-physical (desc, avail, used) of a ring given in user addresses."""
        if self.memory is None:
            raise P.RequestError("ring set up before memory table", queue=addr.index)
        n = max(num, 1)
        # The whole of each part, event fields included (virtio 2.7.5-2.7.8).
        desc = self.memory.user_to_guest(addr.desc, virtio.DESC_SIZE * n)
        avail = self.memory.user_to_guest(addr.avail, 6 + 2 * n)
        used = self.memory.user_to_guest(addr.used, 6 + virtio.USED_ELEM_SIZE * n)
        problem = ring_alignment_problem(desc, avail, used)            # L:205
        if problem:
            raise P.RequestError("invalid alignment in queue addresses", queue=addr.index,
                                 detail=problem)
        return desc, avail, used

    def _build_queue(self, vring):
        if vring.addr is None or not vring.num:
            raise P.RequestError("ring started before its size and address", queue=vring.index)
        desc, avail, used = self._ring_parts(vring.addr, vring.num)
        queue = Virtqueue(self.memory, vring.num, desc, avail, used, features=self.negotiated,
                          name=self.device.queue_names[vring.index], device=self.device.name,
                          last_avail_idx=vring.base)
        queue.check_layout()          # aligned, and no used ring over the others (L:210)
        # The queue takes its used index from the ring itself, as the kernel's vhost
        # does, so a restarted ring continues where the used ring says it is.
        if self.recorder is not None:
            queue = self.recorder.queue(vring.index, queue)
        return queue

    def _stop_serving(self):
        """Join every ring thread, stop the runner, keep each ring's place."""
        for watcher in self.watchers:
            watcher.stop()
        self.watchers = []
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        for vring in self.vrings:
            if vring.queue is not None:
                vring.base = vring.queue.last_avail_idx
                vring.queue = None

    def _restart_serving(self):
        """Serve exactly the rings that are started and enabled, each from its base."""
        self._stop_serving()
        self.device.reset()
        queues = [None] * len(self.vrings)
        for vring in self.vrings:
            if not vring.serving:
                continue
            try:
                vring.queue = queues[vring.index] = self._build_queue(vring)
            except GuestError as e:
                self._ring_error(vring, e)
        live = [v for v in self.vrings if v.queue is not None]
        if not live:
            return
        self.device.activate(queues, self.negotiated)
        self.runner = self.runner_factory()
        if hasattr(self.runner, "on_queue_error"):
            # A ThreadedRunner (console, net) serves on threads of its own: their
            # errors are this ring's errors too, not just a line in the log.
            self.runner.on_queue_error = lambda qi, e: self._ring_error(self.vrings[qi], e)
        self.runner.start(self.device, self._interrupt)
        for vring in live:
            serve = self.runner.kick
            if self.recorder is not None:
                serve = self.recorder.serving(vring.index, serve)
            watcher = self.watcher_factory(vring, serve, self._ring_error)
            self.watchers.append(watcher)
            watcher.start()

    def _interrupt(self, queue_index):
        if self.recorder is not None:
            self.recorder.call(queue_index)
        vring = self.vrings[queue_index]
        with vring.signal_lock:
            vring.call()

    def _refused_unheard(self, error):
        """No reply asked (QEMU asks none for ring set-up): fire the ring's err fd."""
        if isinstance(error.queue, int) and 0 <= error.queue < len(self.vrings):
            with self.vrings[error.queue].signal_lock:
                signal_fd(self.vrings[error.queue].err_fd)

    def _ring_error(self, vring, error):
        if isinstance(error, GuestError):
            error.where(self.device.name, self.device.queue_names[vring.index])
        log.error("vhost-user %s: %s; vq %d no longer served", self.device.name, error, vring.index)
        vring.broken = True
        # Keep what went wrong, not where: the traceback's frames hold the chain's
        # memoryviews into guest memory, and with them the session's mapping and its
        # fd would outlive the session (served in-process, for good).
        self.errors.append((vring.index, summarised(error)))
        with vring.signal_lock:
            signal_fd(vring.err_fd)


def summarised(error):
    """The exception without its traceback or the exceptions it was raised from."""
    error.__traceback__ = None
    error.__context__ = error.__cause__ = None
    return error


# The name this class had before it was told apart from lguest.backends.base.Backend;
# kept only so that branches written against it still import. New code: VhostUserTransport.
VhostUserBackend = VhostUserTransport
