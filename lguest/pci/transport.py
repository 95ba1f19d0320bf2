"""The virtio 1.0 modern PCI transport: the register file in BAR0 of one device.

#L:410 BAR0 of every device is the seed's struct virtio_pci_mmio: the common
# configuration (virtio 1.0 4.1.4.3, struct virtio_pci_common_cfg), the 16-bit notify
# register, the ISR byte, a padding byte, then the device-specific config. The driver
# talks to the device only through this file of registers: it negotiates features,
# walks the device-status state machine, describes each queue, kicks, and reads the
# ISR when interrupted. Every rule of the spec the seed checked in emulate_mmio_write()
# and emulate_mmio_read() is checked here too, raising GuestError with the seed's
# words; checks come in the seed's order and all come before any state changes, so a
# refused access leaves the device as it was.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from ..devices.base import InlineRunner, VirtioDevice
from ..errors import GuestError
from ..virtio import (ISR_CONFIG, ISR_QUEUE, STATUS_ACKNOWLEDGE,
                      STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
                      EMERG_WR_OFFSET, STATUS_FEATURES_OK)
from ..transport_rules import offered_features, over_accepted, queue_size_problem
from ..virtqueue import Virtqueue

from .registers import (ADDRESS_REGS, BAR0_LAYOUT, COMMON_CFG, COMMON_CFG_SIZE,  # noqa: F401
                        DEVICE_CFG_OFFSET, ISR_OFFSET, NOTIFY_OFFSET, OFFSET,
                        PADDING_OFFSET, QUEUE_REGS_SIZE, QUEUE_REGS_START, REG, UNAVAILABLE,
                        VIRTIO_MSI_NO_VECTOR, MsixHook, QueueRegs, width_bits)

if TYPE_CHECKING:
    from ..devices.base import DeviceRunner
    from ..memory import Memory

log = logging.getLogger(__name__)   # the seed's verbose() lines, at DEBUG


class VirtioPciTransport:
    """BAR0 of one virtio device, and the life cycle it drives."""

    def __init__(self, device: VirtioDevice, memory: Memory, *,
                 runner: DeviceRunner | None = None, irq_line: int = 0, mmio_addr: int = 0,
                 raise_irq: Callable[[], None] | None = None,
                 lower_irq: Callable[[], bool] | None = None, lenient: bool = False):
        if not isinstance(device, VirtioDevice):
            raise TypeError(f"{device!r} is not a VirtioDevice")
        self.device = device
        self.name = device.name
        self.memory = memory
        self.runner = runner if runner is not None else InlineRunner()
        self.irq_line = irq_line
        self.mmio_addr = mmio_addr
        self.mmio_size = DEVICE_CFG_OFFSET + len(device.config)
        self.raise_irq = raise_irq or (lambda: None)
        # lower_irq() -> True where the line is level-triggered (KVM), so it stays up
        # until the driver reads ISR (L:406); False where raising is an event (lguest, fake).
        self.lower_irq = lower_irq or (lambda: False)
        self.msix = None
        self.msix_config_vector = VIRTIO_MSI_NO_VECTOR
        self.broken = None          # lenient mode: the GuestError that broke the device (L:425)
        self.errors = []            # every GuestError lenient mode absorbed
        self.lenient = False
        self._chained_on_error = None
        self.set_lenient(lenient)
        self._queues = [QueueRegs(device.queue_max_size) for _ in device.queue_names]
        self.virtqueues = [None] * len(self._queues)
        # ISR bits waiting for the driver. A dict, because setting one key and popping
        # one key are each atomic: a runner thread raising an interrupt cannot lose a
        # bit to the vCPU thread reading (and clearing) the ISR at the same moment.
        self._isr = {}
        self._power_on()
        device.on_config_change = self.config_changed

    def _power_on(self):
        self.status = 0
        self.broken = None
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.features_accepted = 0
        self.queue_select = 0
        self.notify_value = 0
        self.wrote_features_ok = False   # wrote FEATURES_OK but has not re-read it
        for q in self._queues:
            q.reset(self.device.queue_max_size)
            if self.msix is not None:
                q.set("queue_msix_vector", VIRTIO_MSI_NO_VECTOR)
        self.virtqueues = [None] * len(self._queues)
        self.msix_config_vector = VIRTIO_MSI_NO_VECTOR
        self._isr.clear()
        self.lower_irq()

    #L:425 Lenient mode (--lenient; the default for vhost-user). Strict, as the seed,
    # a guest error ends the launcher. Lenient, a device the guest misuses does what
    # virtio 1.0 2.1.1 gives it for the purpose: "The device SHOULD set
    # DEVICE_NEEDS_RESET when it enters an error state that a reset is needed. If
    # DRIVER_OK is set, after it sets DEVICE_NEEDS_RESET, the device MUST send a device
    # configuration change notification to the driver." It stops serving its queues,
    # logs the rule once, ignores further writes (except a reset: writing 0 to
    # device_status), answers refused reads with all ones, and after the reset works
    # as new. The guest and the other devices go on. Errors from queue threads come
    # through the runner's on_error, which this transport takes over.
    def set_lenient(self, lenient: bool) -> None:
        """Switch lenient mode (L:425) on or off."""
        self.lenient = bool(lenient)
        chained = getattr(self.runner, "on_error", False)
        if self.lenient and chained is not False and chained != self._queue_failed:
            self._chained_on_error = chained
            self.runner.on_error = self._queue_failed

    def _queue_failed(self, exc):
        if isinstance(exc, GuestError):
            self.misused(exc)
        elif self._chained_on_error is not None:
            self._chained_on_error(exc)
        else:
            log.error("%s: queue stopped: %s", self.name, exc)

    def misused(self, error: GuestError) -> None:
        """The guest broke a rule: raise it (strict) or enter DEVICE_NEEDS_RESET."""
        if not self.lenient:
            raise error
        error.where(self.name)
        error.__traceback__ = None      # its frames may hold views of guest memory
        self.errors.append(error)
        if self.broken is not None:
            log.debug("%s: (needs reset) %s", self.name, error)
            return
        self.broken = error
        log.error("%s; device needs reset", error)
        self.status |= STATUS_DEVICE_NEEDS_RESET
        self.runner.stop()          # may be this very queue's thread: it does not join itself
        self.config_changed()

    def attach_msix(self, hook: MsixHook) -> None:
        """Give the device MSI-X (a backend with an MSI-X capability calls this before
        the guest boots); every vector starts unmapped."""
        self.msix = hook
        self._power_on()

    # -- what the device offers -----------------------------------------------------
    @property
    def features(self) -> int:
        """Everything offered: the device's bits and VERSION_1 (L:205)."""
        return offered_features(self.device)

    @property
    def negotiated(self) -> int:
        """The features the driver accepted."""
        return self.features_accepted

    @property
    def notify_address(self) -> int:
        """Guest-physical address of the notify register (for an ioeventfd)."""
        return self.mmio_addr + NOTIFY_OFFSET

    def _selected(self):
        if self.queue_select < len(self._queues):
            return self._queues[self.queue_select]
        return UNAVAILABLE

    def _error(self, rule, detail=None):
        return GuestError(rule, device=self.name, detail=detail)

    def _need_width(self, size, want, verb, off):
        if size != want:
            bits = width_bits(want)
            raise self._error(f"non-{bits}-bit {verb} offset", f"offset {off} size {size}")

    # -- the life cycle -------------------------------------------------------------
    #L:411 Writing 0 to device_status resets the device (4.1.4.3.1: "The device MUST
    # reset when 0 is written to device_status, and present a 0 in device_status once
    # that is done"): the runner stops serving the queues (the seed killed its
    # threads), the device forgets its queues and features, and every register goes
    # back to its power-on value, every queue's too.
    def reset(self) -> None:
        """Reset the device: stop its runner, forget its queues, registers to power-on."""
        log.debug("Resetting device %s", self.name)
        self.runner.stop()
        self.device.reset()
        self._power_on()

    #L:412 2.1.2: "The device MUST NOT consume buffers or notify the driver before
    # DRIVER_OK." So only now does the device get its queues, and its runner start.
    def _go_live(self):
        self.device.activate(list(self.virtqueues), self.features_accepted)
        self.runner.start(self.device, self.interrupt)

    #L:413 Telling the guest. Without MSI-X (4.1.4.5.1): "the device MUST set the
    # Queue Interrupt bit in ISR status before sending a virtqueue notification to the
    # driver", then we raise the device's interrupt line through the bus (L:431).
    # With an MSI-X hook switched on, the queue's vector is signalled instead.
    def interrupt(self, queue_index: int) -> None:
        """Tell the guest a queue has used buffers (ISR bit and line, or its MSI-X vector)."""
        if self.msix is not None and self.msix.enabled():
            vector = self._queues[queue_index].get("queue_msix_vector")
            if vector != VIRTIO_MSI_NO_VECTOR:
                self.msix.signal(vector)
            return
        self._isr[ISR_QUEUE] = True
        self.raise_irq()

    def config_changed(self) -> None:
        """The device changed its config (and bumped config_generation): 4.1.4.5.1,
        set the Device Configuration Interrupt bit, then interrupt if it is live."""
        if self.msix is not None and self.msix.enabled():
            if self.msix_config_vector != VIRTIO_MSI_NO_VECTOR:
                self.msix.signal(self.msix_config_vector)
            return
        self._isr[ISR_CONFIG] = True
        if self.status & STATUS_DRIVER_OK:
            self.raise_irq()

    #L:406 The line is level-triggered, as PCI INTx is (4.1.4.5: reading ISR "has the
    # side effect of resetting it to zero and causes the device to de-assert the
    # interrupt"): it stays up until the driver reads ISR, so an interrupt controller
    # that samples the level (an IOAPIC pin) cannot miss it the way it can miss a
    # pulse. Reading clears ISR, then lowers the line; a queue thread that set a bit in
    # between raised the line before our lowering or raises it after, so if ISR is not
    # empty once the line is down, we raise it again. No lock is needed.
    def read_isr(self) -> int:
        """4.1.4.5.1: "The device MUST reset ISR status to 0 on driver read"."""
        value = 0
        for flag in (ISR_QUEUE, ISR_CONFIG):
            if self._isr.pop(flag, False):
                value |= flag
        if self.lower_irq() and (ISR_QUEUE in self._isr
                                 or ISR_CONFIG in self._isr and self.status & STATUS_DRIVER_OK):
            self.raise_irq()
        return value

    # -- writes ---------------------------------------------------------------------
    def emulate_mmio_write(self, off: int, size: int, value: int) -> None:
        """A driver write of `size` bytes at offset `off` of BAR0."""
        value &= (1 << (8 * size)) - 1
        if self.broken is not None and not (off == OFFSET["device_status"] and value == 0):
            log.debug("%s: needs reset; write of %#x at %d ignored", self.name, value, off)
            return None
        try:
            handler = _WRITE_HANDLERS.get(off)
            if handler is not None:
                return handler(self, off, size, value)
            return self._write_elsewhere(off, size, value)
        except GuestError as e:
            self.misused(e)
            return None

    #L:414 Features. 4.1.4.3.1: "The device MUST present the feature bits it is
    # offering in device_feature, starting at bit device_feature_select * 32 for any
    # device_feature_select written by the driver"; the driver writes what it accepts
    # 32 bits at a time through driver_feature_select, and 2.2.1: "The driver MUST NOT
    # accept a feature which the device did not offer". 3.1.1 puts all of this between
    # DRIVER and FEATURES_OK: "The driver MUST NOT accept new feature bits after this
    # step." And 4.1.3.1: "The driver MUST access each field using the 'natural' access
    # method": 32 bits here.
    def _feature_write_checks(self, off, size):
        if not self.status & STATUS_DRIVER:
            raise self._error("feature write before VIRTIO_CONFIG_S_DRIVER")
        if self.status & STATUS_FEATURES_OK:
            raise self._error("feature write after VIRTIO_CONFIG_S_FEATURES_OK")
        self._need_width(size, 4, "write to", off)

    def _write_device_feature_select(self, off, size, value):
        self._feature_write_checks(off, size)
        self.device_feature_select = value

    def _write_driver_feature_select(self, off, size, value):
        if value > 1:
            raise self._error("Unexpected driver select", f"{value}")
        self._feature_write_checks(off, size)
        self.driver_feature_select = value

    def _write_driver_feature(self, off, size, value):
        shift = 32 * self.driver_feature_select
        accepted = (self.features_accepted & ~(0xFFFFFFFF << shift)) | (value << shift)
        problem = over_accepted(accepted, self.features)
        if problem:
            raise self._error("over-accepted features", problem)
        self._feature_write_checks(off, size)
        self.features_accepted = accepted

    #L:415 The device status, a state machine the driver must walk one step at a
    # time (3.1.1): reset, ACKNOWLEDGE, DRIVER, read and write features, FEATURES_OK,
    # "Re-read device status to ensure the FEATURES_OK bit is still set", set up the
    # queues, DRIVER_OK. 2.1.1: "The driver MUST NOT clear a device status bit." As in
    # the seed, each write must add exactly the next bit, and FEATURES_OK must be
    # read back before DRIVER_OK.
    def _write_device_status(self, off, size, value):
        log.debug("%s: device status -> %#x", self.name, value)
        if value == 0:
            self._need_width(size, 1, "write to", off)
            self.reset()
            return
        if self.status & ~value:
            raise self._error("unset of device status bit", f"{self.status:#x} -> {value:#x}")
        new_bit = value & ~self.status
        if new_bit not in _REQUIRED_BEFORE:
            raise self._error("unknown device status bit", f"{self.status:#x} -> {value:#x}")
        if self.status != _REQUIRED_BEFORE[new_bit]:
            raise self._error("unexpected status transition", f"{self.status:#x} -> {value:#x}")
        if new_bit == STATUS_DRIVER_OK and self.wrote_features_ok:
            raise self._error("did not re-read FEATURES_OK")
        self._need_width(size, 1, "write to", off)
        if new_bit == STATUS_DRIVER_OK:
            self._go_live()     # first: a device that refuses to start leaves status alone
        self.status = value
        if new_bit == STATUS_FEATURES_OK:
            self.wrote_features_ok = True

    #L:416 One window of registers onto many queues: queue_select picks the queue
    # the per-queue registers (queue_size onwards) show. Each queue keeps its own, as
    # the seed's save_vq_config()/restore_vq_config() did.
    def _write_queue_select(self, off, size, value):
        self._need_width(size, 2, "write to", off)
        self.queue_select = value

    def _writable_queue(self):
        regs = self._selected()
        if regs is UNAVAILABLE:
            # The seed followed a NULL queue here; we refuse.
            raise self._error("setup of unavailable queue", f"queue_select {self.queue_select}")
        return regs

    # 4.1.4.3.2: "The driver MUST NOT write a value which is not a power of 2 to
    # queue_size" (nor, beyond the seed, 0 or more than the maximum it was shown, L:205).
    def _write_queue_size(self, off, size, value):
        regs = self._writable_queue()
        problem = queue_size_problem(value, self.device.queue_max_size)
        if problem:
            raise self._error("invalid queue size", problem)
        if regs.get("queue_enable"):
            raise self._error("changing queue size on live device")
        self._need_width(size, 2, "write to", off)
        regs.set("queue_size", value)

    def _write_queue_msix_vector(self, off, size, value):
        if self.msix is None:
            raise self._error("attempt to set MSIX vector", f"{value}")
        regs = self._writable_queue()
        self._need_width(size, 2, "write to", off)
        regs.set("queue_msix_vector", self.msix.accept_vector(value))

    def _write_msix_config(self, off, size, value):
        if self.msix is None:
            return self._write_elsewhere(off, size, value)
        self._need_width(size, 2, "write to", off)
        self.msix_config_vector = self.msix.accept_vector(value)

    #L:417 Enabling a queue. 4.1.4.3.2: "The driver MUST NOT write a 0 to
    # queue_enable"; our devices need every queue before DRIVER_OK (3.1.1, step 7 then
    # 8). "The driver MUST configure the other virtqueue fields before enabling the
    # virtqueue with queue_enable", so now is when we look at the ring: the virtqueue
    # (L:210) checks its parts are aligned, inside guest memory, and that used.flags
    # is 0.
    def _write_queue_enable(self, off, size, value):
        regs = self._writable_queue()
        if value != 1:
            raise self._error("setting queue_enable to", f"{value}")
        if self.status & STATUS_DRIVER_OK:
            raise self._error("enabling vq after DRIVER_OK")
        self._need_width(size, 2, "write to", off)
        qi = self.queue_select
        queue = Virtqueue(self.memory, regs.get("queue_size"), regs.address("desc"),
                          regs.address("avail"), regs.address("used"),
                          features=self.features_accepted, name=self.device.queue_names[qi],
                          device=self.name)
        queue.check_enable()
        regs.set("queue_enable", 1)
        self.virtqueues[qi] = queue

    def _write_queue_notify_off(self, off, size, value):
        raise self._error("attempt to write to queue_notify_off")

    # 3.1.1, step 5: "Set the FEATURES_OK status bit. The driver MUST not accept new
    # feature bits after this step"; step 6: "Re-read device status to ensure the
    # FEATURES_OK bit is still set"; only then may the queues be described.
    def _write_queue_address(self, off, size, value):
        regs = self._writable_queue()
        if regs.get("queue_enable"):
            raise self._error("changing queue on live device")
        if not self.status & STATUS_FEATURES_OK:
            raise self._error("setting up vq before FEATURES_OK")
        if self.wrote_features_ok:
            raise self._error("didn't re-read FEATURES_OK before setup")
        self._need_width(size, 4, "write to", off)
        regs.regs[off - QUEUE_REGS_START:off - QUEUE_REGS_START + 4] = value.to_bytes(4, "little")

    #L:418 The kick. The driver writes a queue's index to the notify register. An
    # index naming no queue is refused; a kick before DRIVER_OK, or for a queue that
    # was never enabled, finds no one listening (the seed's eventfd did not exist
    # yet) and is ignored. Otherwise the runner serves the queue.
    def _write_notify(self, off, size, value):
        if value >= len(self._queues):
            raise self._error("Invalid vq notification on", f"{value}")
        self._need_width(size, 2, "write to", off)
        self.notify_value = value
        if self.status & STATUS_DRIVER_OK and self.virtqueues[value] is not None:
            self.runner.kick(value)

    def _write_isr(self, off, size, value):
        raise self._error("Unexpected write to isr")

    #L:419 Everything else is read-only (4.1.4.3.2: "The driver MUST NOT write to
    # device_feature, num_queues, config_generation or queue_notify_off"), except the
    # console's emerg_wr, the "weird corner case" where a 32-bit write prints one
    # character before any queue exists, and config a device chose to make writable.
    def _write_elsewhere(self, off, size, value):
        cfg_off = off - DEVICE_CFG_OFFSET
        if cfg_off == EMERG_WR_OFFSET and hasattr(self.device, "emergency_write") \
                and len(self.device.config) >= EMERG_WR_OFFSET + 4:
            self._need_width(size, 4, "write to", off)
            self.device.emergency_write(value)
            return
        writable = type(self.device).write_config is not VirtioDevice.write_config
        if cfg_off >= 0 and writable and off + size <= self.mmio_size:
            self.device.write_config(cfg_off, size, value)
            return
        raise self._error("Unexpected write to offset", f"{off}")

    # -- reads ----------------------------------------------------------------------
    def emulate_mmio_read(self, off: int, size: int) -> int:
        """A driver read of `size` bytes at offset `off` of BAR0."""
        try:
            handler = _READ_HANDLERS.get(off)
            if handler is not None:
                return handler(self, off, size)
            return self._read_elsewhere(off, size)
        except GuestError as e:
            self.misused(e)
            return (1 << (8 * max(size, 1))) - 1

    def _read_feature(self, off, size):
        # 3.1.1: "Set the DRIVER status bit ... Read device feature bits".
        if not self.status & STATUS_DRIVER:
            raise self._error("feature read before VIRTIO_CONFIG_S_DRIVER")
        self._need_width(size, 4, "read to", off)
        return self._peek(off, size)

    def _read_msix_config(self, off, size):
        if self.msix is None:
            raise self._error("read of msix_config")
        self._need_width(size, 2, "read to", off)
        return self.msix_config_vector

    def _read_num_queues(self, off, size):
        self._need_width(size, 2, "read to", off)
        return len(self._queues)

    def _read_device_status(self, off, size):
        self._need_width(size, 1, "read to", off)
        # As they did read, any write of FEATURES_OK is now fine.
        self.wrote_features_ok = False
        return self.status

    #L:420 config_generation. 4.1.4.3.1: "The device MUST present a changed
    # config_generation after the driver has read a device-specific configuration value
    # which has changed since any part of the device-specific configuration was last
    # read." The seed's devices never changed their config, so it was always 0; ours
    # is the device's counter, bumped by update_config() (L:300).
    def _read_config_generation(self, off, size):
        self._need_width(size, 1, "read to", off)
        return self.device.config_generation & 0xFF

    def _read_notify(self, off, size):
        # 3.1.1: "The driver MUST NOT notify the device before setting DRIVER_OK."
        if not self.status & STATUS_DRIVER_OK:
            raise self._error("notify before VIRTIO_CONFIG_S_DRIVER_OK")
        self._need_width(size, 2, "read to", off)
        return self.notify_value

    def _read_isr(self, off, size):
        if size != 1:
            raise self._error("non-8-bit read from offset", f"offset {off} size {size}")
        return self.read_isr()

    def _read_padding(self, off, size):
        raise self._error("read from padding", f"offset {off}")

    #L:421 Any other read: the per-queue registers, the device's config, or bytes in
    # between. "Beware unaligned overflow": the seed refused any read starting in the
    # last 3 bytes, whatever its width, which would refuse a 2-byte field at the very
    # end of a config; we refuse exactly the reads that run past the end. And 3.1.1
    # lets the driver read device config only once it has set DRIVER. The width is
    # whatever the driver used.
    def _read_elsewhere(self, off, size):
        if off < 0 or off + max(size, 1) > self.mmio_size:
            raise self._error("read past end", f"offset {off} size {size}")
        if not self.status & STATUS_DRIVER:
            raise self._error("config read before VIRTIO_CONFIG_S_DRIVER")
        self._need_width(size, size if size in (2, 4) else 1, "read to", off)
        return self._peek(off, size)

    def _peek(self, off, size):
        """The bytes of BAR0 as the seed's memcpy() would see them (no side effects)."""
        end = off + size
        head = b""
        if off < DEVICE_CFG_OFFSET:
            head = self._register_bytes()[off:min(end, DEVICE_CFG_OFFSET)]
        tail = b""
        if end > DEVICE_CFG_OFFSET:
            start = max(off, DEVICE_CFG_OFFSET) - DEVICE_CFG_OFFSET
            tail = self.device.read_config(start, end - DEVICE_CFG_OFFSET - start).to_bytes(
                end - DEVICE_CFG_OFFSET - start, "little")
        return int.from_bytes(head + tail, "little")

    def _register_bytes(self):
        out = bytearray(DEVICE_CFG_OFFSET)
        select = self.device_feature_select
        offered = (self.features >> (32 * select)) & 0xFFFFFFFF if select in (0, 1) else 0
        accepted = (self.features_accepted >> (32 * self.driver_feature_select)) & 0xFFFFFFFF
        for name, value in (("device_feature_select", select), ("device_feature", offered),
                            ("driver_feature_select", self.driver_feature_select),
                            ("driver_feature", accepted),
                            ("msix_config", self.msix_config_vector if self.msix else 0),
                            ("num_queues", len(self._queues)), ("device_status", self.status),
                            ("config_generation", self.device.config_generation & 0xFF),
                            ("queue_select", self.queue_select)):
            o, s = REG[name]
            out[o:o + s] = (value & ((1 << (8 * s)) - 1)).to_bytes(s, "little")
        out[QUEUE_REGS_START:COMMON_CFG_SIZE] = self._selected().regs
        out[NOTIFY_OFFSET:NOTIFY_OFFSET + 2] = self.notify_value.to_bytes(2, "little")
        out[ISR_OFFSET] = sum(flag for flag in (ISR_QUEUE, ISR_CONFIG) if flag in self._isr)
        return out

    def __repr__(self):
        return f"VirtioPciTransport({self.name}, irq {self.irq_line}, bar0 {self.mmio_addr:#x})"


# Which bits must be set already for each new bit (3.1.1's order).
_REQUIRED_BEFORE = {
    STATUS_ACKNOWLEDGE: 0,
    STATUS_DRIVER: STATUS_ACKNOWLEDGE,
    STATUS_FEATURES_OK: STATUS_ACKNOWLEDGE | STATUS_DRIVER,
    STATUS_DRIVER_OK: STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
}

_T = VirtioPciTransport
_WRITE_HANDLERS = {
    OFFSET["device_feature_select"]: _T._write_device_feature_select,
    OFFSET["driver_feature_select"]: _T._write_driver_feature_select,
    OFFSET["driver_feature"]: _T._write_driver_feature,
    OFFSET["msix_config"]: _T._write_msix_config,
    OFFSET["device_status"]: _T._write_device_status,
    OFFSET["queue_select"]: _T._write_queue_select,
    OFFSET["queue_size"]: _T._write_queue_size,
    OFFSET["queue_msix_vector"]: _T._write_queue_msix_vector,
    OFFSET["queue_enable"]: _T._write_queue_enable,
    OFFSET["queue_notify_off"]: _T._write_queue_notify_off,
    NOTIFY_OFFSET: _T._write_notify,
    ISR_OFFSET: _T._write_isr,
}
_WRITE_HANDLERS.update({OFFSET[name]: _T._write_queue_address for name in ADDRESS_REGS})

_READ_HANDLERS = {
    OFFSET["device_feature_select"]: _T._read_feature,
    OFFSET["device_feature"]: _T._read_feature,
    OFFSET["driver_feature_select"]: _T._read_feature,
    OFFSET["driver_feature"]: _T._read_feature,
    OFFSET["msix_config"]: _T._read_msix_config,
    OFFSET["num_queues"]: _T._read_num_queues,
    OFFSET["device_status"]: _T._read_device_status,
    OFFSET["config_generation"]: _T._read_config_generation,
    NOTIFY_OFFSET: _T._read_notify,
    ISR_OFFSET: _T._read_isr,
    PADDING_OFFSET: _T._read_padding,
}
