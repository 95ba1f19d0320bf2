"""The in-memory host resources the simulations, trace replays and benches share."""

from lguest.devices.inmemory import BufferSink, CountingEntropy, MemoryStore


def test_memory_store_reads_what_was_written_across_buffers():
    store = MemoryStore(bytes(4096))
    assert store.writev_at(100, [memoryview(b"abc"), memoryview(b"de")]) == 5
    out = [bytearray(2), bytearray(3)]
    assert store.readv_at(100, [memoryview(b) for b in out]) == 5
    assert bytes(out[0] + out[1]) == b"abcde"
    assert store.size == 4096 and bytes(store.data[99:106]) == b"\0abcde\0"


def test_memory_store_read_at_the_end_is_short_and_never_grows_the_disk():
    store = MemoryStore(b"x" * 10)
    buf = bytearray(8)
    assert store.readv_at(6, [memoryview(buf)]) == 4
    assert bytes(buf[:4]) == b"xxxx" and len(store.data) == 10


def test_counting_entropy_continues_across_calls():
    source = CountingEntropy()
    a, b = bytearray(3), bytearray(2)
    assert source.readv([memoryview(a)]) == 3
    assert source.readv([memoryview(b)]) == 2
    assert bytes(a + b) == bytes([0, 1, 2, 3, 4])


def test_buffer_sink_keeps_everything_and_passes_it_on():
    heard = []
    sink = BufferSink(heard.append)
    assert sink.write([memoryview(b"he"), memoryview(b"llo")]) == 5
    assert bytes(sink.data) == b"hello" and heard == [b"he", b"llo"]
