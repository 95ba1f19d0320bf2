"""The virtio console: guest output to a sink, host input into the guest's buffers.

#L:320 The Console. Always device 1, because it is the one you want to see first.
# Two queues: "input" holds buffers the guest wants filled with what we type,
# "output" holds what the guest printed. UNIX tty handling makes it uglier than it
# could be; all of that ugliness is in host/console.py (L:920). Here the console is
# two injected objects: a `sink` with write(views), which must write everything
# (the host loops over partial writes), and a `source` with will_block() and
# readv(views) -> bytes read (0 at end of input).
"""

import logging
import struct

from ..errors import GuestError
from ..virtio import EMERG_WR_OFFSET, ID_CONSOLE, bit
from .base import VirtioDevice, give_back

log = logging.getLogger("lguest.console")

# 5.3.3: Feature bits.
F_SIZE = 0
F_MULTIPORT = 1
F_EMERG_WRITE = 2

# struct virtio_console_config: u16 cols, u16 rows, u32 max_nr_ports, u32 emerg_wr.
CONFIG = struct.Struct("<HHII")

INPUT, OUTPUT = 0, 1
CTRL_C = 3
ABORT_PRESSES = 3
ABORT_WINDOW = 1.5      # seconds; the seed compared whole seconds: "within about a second"


class ConsoleDevice(VirtioDevice):
    """virtio-console with a single port and the emergency write register.

    `clock()` returns seconds (monotonic) and `on_abort()` is called after three ^C in
    a row within about a second; both are injected so the logic stays sans-I/O. Without
    a clock the ^C^C^C check is off."""

    device_id = ID_CONSOLE
    queue_names = ("input", "output")

    def __init__(self, sink, source=None, *, clock=None, on_abort=None, name="console"):
        super().__init__(name)
        self.sink = sink
        self.source = source
        self.clock = clock
        self.on_abort = on_abort
        self.input_ended = source is None
        self.abort_count = 0
        self.abort_start = 0.0
        #L:321 We need a configuration area only for the emerg_wr early writes
        # (with VIRTIO_CONSOLE_F_EMERG_WRITE the driver may write a character to
        # emerg_wr, even before the queues are up, and the device outputs it). The seed's config was uninitialised
        # stack; ours is zeros: no size, no ports.
        self.features = bit(F_EMERG_WRITE)
        self.config = bytearray(CONFIG.size)

    # -- the emergency write register -------------------------------------------------
    def write_config(self, offset, size, value):
        if offset == EMERG_WR_OFFSET and size in (1, 2, 4):
            self.emergency_write(value)
            return
        super().write_config(offset, size, value)

    def emergency_write(self, value):
        """The low byte of a write to emerg_wr is one character of output."""
        self.sink.write([memoryview(bytes([value & 0xFF]))])

    # -- the queues ---------------------------------------------------------------------
    def process(self, queue_index):
        try:
            if queue_index == OUTPUT:
                return self.serve_output()
            return self.serve_input()
        except GuestError as e:
            raise e.where(self.name, self.queue_names[queue_index])

    def serve_output(self):
        #L:322 Output is simple: everything the guest put in a buffer goes to the
        # sink, and the buffer goes back with nothing written into it. The interrupt
        # waits until the queue is empty (the runner asks the queue, L:310).
        queue = self.queues[OUTPUT]
        used = False
        while (chain := queue.pop()) is not None:
            if chain.writable:
                raise GuestError("Input buffers in console output queue?")
            self.sink.write(chain.readable)
            queue.push(chain.head, 0)
            used = True
        return used

    def wants_host_input(self, queue_index):
        """True when a read from the source could go somewhere: the runner then waits
        for the source as well as for kicks (the seed's thread sat in readv here)."""
        if queue_index != INPUT or self.input_ended or not self.queues:
            return False
        queue = self.queues[INPUT]
        return queue is not None and queue.has_available()

    def serve_input(self):
        #L:323 Input: for each buffer the guest gave us, if a read would not block,
        # read straight into it. Each read gets its own buffer, so a ^C typed alone
        # arrives alone, which is what the abort check (L:324) counts on. If nothing
        # is waiting after all, the buffer goes back (give_back) for next time.
        queue = self.queues[INPUT]
        used = False
        while not self.input_ended and not self.source.will_block():
            chain = queue.pop()
            if chain is None:
                break
            if chain.readable:
                raise GuestError("Output buffers in console in queue?")
            n = self.read_source(chain.writable)
            if n is None:
                give_back(queue)
                break
            queue.push(chain.head, n)
            used = True
            self.count_ctrl_c(chain.writable, n)
        return used

    def read_source(self, views):
        """Bytes read; None if nothing came (end of input, or a spurious wake-up)."""
        try:
            n = self.source.readv(views)
        except BlockingIOError:
            return None
        except OSError as e:
            log.warning("console input failed (%s), ignoring console.", str(e))
            n = 0
        if n <= 0:
            #L:325 Ran out of input? The seed's thread slept for ever here. We stop
            # reading stdin (wants_host_input() says no from now on); the guest runs on
            # and can still print.
            if not self.input_ended:
                log.warning("Failed to get console input, ignoring console.")
            self.input_ended = True
            return None
        return n

    def count_ctrl_c(self, views, n):
        #L:324 Three ^C within about a second? Stop the launcher, as a ^C would if
        # the terminal were not in raw mode. This is such a hack, but works
        # surprisingly well. Each ^C has to be in a buffer by itself, so they can't
        # be too fast; they must come within ABORT_WINDOW of the first, so they can't
        # be too slow.
        if self.clock is None:
            return
        if n != 1 or first_byte(views) != CTRL_C:
            self.abort_count = 0
            return
        self.abort_count += 1
        if self.abort_count == 1:
            self.abort_start = self.clock()
        elif self.abort_count == ABORT_PRESSES:
            self.abort_count = 0
            if self.clock() - self.abort_start <= ABORT_WINDOW and self.on_abort:
                self.on_abort()

    def reset(self):
        super().reset()
        self.abort_count = 0


def first_byte(views):
    for v in views:
        if v.nbytes:
            return v[0]
    return None
