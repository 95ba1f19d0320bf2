"""virtio-console device logic with an in-memory sink and source, through the real Virtqueue."""

import pytest

from lguest.devices import console as con
from lguest.errors import GuestError
from test_dev_rings import GuestRing
from lguest.memory import GuestMemory
from lguest.devices.inmemory import BufferSink as Sink


class Source:
    """Reads come out in the chunks they were typed in; empty chunks list = would block."""

    def __init__(self, chunks=(), eof=False):
        self.chunks = list(chunks)
        self.eof = eof

    def will_block(self):
        return not self.chunks and not self.eof

    def readv(self, views):
        if not self.chunks:
            if self.eof:
                return 0
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        n = 0
        for v in views:
            take = chunk[n:n + v.nbytes]
            v[:len(take)] = take
            n += len(take)
        if n < len(chunk):
            self.chunks.insert(0, chunk[n:])
        return n


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(chunks=(), eof=False):
    memory = GuestMemory(1 << 20)
    rx = GuestRing(memory, 8, base=0x1000, heap=0x10000)
    tx = GuestRing(memory, 8, base=0x3000, heap=0x40000)
    sink, source, clock, aborts = Sink(), Source(chunks, eof), Clock(), []
    dev = con.ConsoleDevice(sink, source, clock=clock, on_abort=lambda: aborts.append(clock()))
    dev.activate([rx.queue, tx.queue], 0)
    return dev, rx, tx, sink, source, clock, aborts


def test_identity_features_and_config():
    dev = make()[0]
    assert dev.device_id == 3 and dev.queue_names == ("input", "output")
    assert dev.features == 1 << con.F_EMERG_WRITE
    assert len(dev.config) == 12 and dev.read_config(8, 4) == 0


def test_output_reaches_sink_in_order_and_buffers_come_back_empty():
    dev, rx, tx, sink, *_ = make()
    h1, _ = tx.add([b"hello, ", b"wor"])
    h2, _ = tx.add([b"ld\n"], indirect=True)
    assert dev.process(con.OUTPUT)
    assert sink.data == b"hello, world\n"
    assert tx.used_entries() == [(h1, 0), (h2, 0)]
    assert not dev.process(con.OUTPUT)


def test_writable_buffer_on_output_queue_is_a_guest_error():
    dev, rx, tx, *_ = make()
    tx.add([b"x"], [4])
    with pytest.raises(GuestError) as e:
        dev.process(con.OUTPUT)
    assert e.value.rule == "Input buffers in console output queue?"
    assert (e.value.device, e.value.queue) == ("console", "output")


def test_readable_buffer_on_input_queue_is_a_guest_error():
    dev, rx, *_ = make([b"a"])
    rx.add([b"x"], [4])
    with pytest.raises(GuestError) as e:
        dev.process(con.INPUT)
    assert e.value.rule == "Output buffers in console in queue?"
    assert e.value.queue == "input"


def test_input_waits_for_data_then_each_read_gets_its_own_buffer():
    dev, rx, tx, sink, source, *_ = make()
    heads = [rx.add([], [16]) for _ in range(3)]
    assert dev.wants_host_input(con.INPUT)
    assert not dev.process(con.INPUT)           # nothing typed: buffers stay available
    assert rx.used_entries() == [] and rx.queue.has_available()
    source.chunks = [b"ls\r", b"x"]
    assert dev.process(con.INPUT)
    used = rx.used_entries()
    assert used == [(heads[0][0], 3), (heads[1][0], 1)]
    assert rx.memory.read(heads[0][1][0], 3) == b"ls\r"
    assert rx.memory.read(heads[1][1][0], 1) == b"x"
    assert dev.wants_host_input(con.INPUT)      # the third buffer is still there


def test_input_larger_than_a_buffer_spills_into_the_next():
    dev, rx, tx, sink, source, *_ = make([b"abcdef"])
    a = rx.add([], [4])
    b = rx.add([], [4])
    dev.process(con.INPUT)
    assert rx.used_entries() == [(a[0], 4), (b[0], 2)]


def test_end_of_input_stops_reading_but_not_output(caplog):
    dev, rx, tx, sink, source, *_ = make([b"bye"], eof=True)
    rx.add([], [8])
    rx.add([], [8])
    assert dev.process(con.INPUT)
    assert len(rx.used_entries()) == 1
    assert dev.input_ended and not dev.wants_host_input(con.INPUT)
    assert "ignoring console" in caplog.text
    assert rx.queue.has_available()              # the second buffer was given back
    tx.add([b"still here"])
    dev.process(con.OUTPUT)
    assert sink.data == b"still here"


def feed_ctrl_c(dev, rx, source, clock, times, gap):
    for _ in range(times):
        rx.add([], [4])
        source.chunks.append(b"\x03")
        dev.process(con.INPUT)
        clock.now += gap


def test_three_ctrl_c_within_a_second_abort():
    dev, rx, tx, sink, source, clock, aborts = make()
    feed_ctrl_c(dev, rx, source, clock, 3, 0.3)
    assert aborts == [pytest.approx(100.6)]
    assert len(rx.used_entries()) == 3            # the guest still got its ^Cs


def test_slow_ctrl_c_do_not_abort():
    dev, rx, tx, sink, source, clock, aborts = make()
    feed_ctrl_c(dev, rx, source, clock, 3, 1.0)
    assert aborts == []


def test_ctrl_c_with_other_bytes_in_the_buffer_do_not_count():
    dev, rx, tx, sink, source, clock, aborts = make()
    feed_ctrl_c(dev, rx, source, clock, 2, 0.1)
    rx.add([], [4])
    source.chunks.append(b"\x03\x03")            # two at once: typed too fast
    dev.process(con.INPUT)
    feed_ctrl_c(dev, rx, source, clock, 2, 0.1)
    assert aborts == []
    feed_ctrl_c(dev, rx, source, clock, 1, 0.1)
    assert len(aborts) == 1


def test_emergency_write_goes_to_the_sink():
    dev, *_ , sink, source, clock, aborts = make()
    dev.write_config(con.EMERG_WR_OFFSET, 4, 0x141)
    dev.emergency_write(ord("!"))
    assert sink.data == b"A!"
    with pytest.raises(GuestError) as e:
        dev.write_config(0, 2, 80)
    assert e.value.rule == "write to read-only device config"
