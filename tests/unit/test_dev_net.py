"""virtio-net device logic with an in-memory tap, through the real Virtqueue."""

import struct

import pytest

from lguest.devices import net
from lguest.errors import GuestError, LauncherError
from lguest.memory import GuestMemory
from test_dev_rings import GuestRing


class FakeTap:
    def __init__(self):
        self.incoming = []      # frames (vnet header included) waiting for the guest
        self.sent = []
        self.fail_writes = False

    def will_block(self):
        return not self.incoming

    def readv(self, views):
        if not self.incoming:
            raise BlockingIOError
        frame = self.incoming.pop(0)
        n = 0
        for v in views:
            take = frame[n:n + v.nbytes]
            v[:len(take)] = take
            n += len(take)
        return n

    def writev(self, views):
        if self.fail_writes:
            raise OSError(5, "Input/output error")
        self.sent.append(b"".join(bytes(v) for v in views))
        return len(self.sent[-1])


def make(mac=None, negotiated=0):
    memory = GuestMemory(1 << 20)
    rx = GuestRing(memory, 8, base=0x1000, heap=0x10000)
    tx = GuestRing(memory, 8, base=0x3000, heap=0x40000)
    tap = FakeTap()
    dev = net.NetDevice(tap, mac=mac)
    dev.activate([rx.queue, tx.queue], negotiated)
    return dev, rx, tx, tap


def vnet(flags=0, gso=0, num_buffers=0):
    return struct.pack("<BBHHHHH", flags, gso, 0, 0, 0, 0, num_buffers)


def test_seed_features_and_mac():
    dev = make()[0]
    for f in (net.F_CSUM, net.F_GUEST_CSUM, net.F_GUEST_TSO4, net.F_GUEST_TSO6, net.F_GUEST_ECN,
              net.F_HOST_TSO4, net.F_HOST_TSO6, net.F_HOST_ECN, 28):
        assert dev.features & (1 << f)
    assert not dev.features & (1 << net.F_MAC)
    dev = make(mac="52:54:00:ab:cd:0e")[0]
    assert dev.features & (1 << net.F_MAC)
    assert bytes(dev.config[:6]) == bytes.fromhex("525400abcd0e")
    assert dev.device_id == 1 and dev.queue_names == ("rx", "tx")


@pytest.mark.parametrize("bad", ["52:54:00:ab:cd", "zz:54:00:ab:cd:0e", "525400abcd0e", "1:2:3:4:5:100"])
def test_bad_mac_is_a_launcher_error(bad):
    with pytest.raises(LauncherError) as e:
        net.NetDevice(FakeTap(), mac=bad)
    assert "Failed to parse mac address" in str(e.value)


def test_tx_chain_goes_to_the_tap_in_one_write():
    dev, rx, tx, tap = make()
    frame = b"\xff" * 6 + b"\x52" * 6 + b"\x08\x00" + b"payload"
    h, _ = tx.add([vnet(), frame[:5], frame[5:]], indirect=True)
    assert dev.process(net.TX)
    assert tap.sent == [vnet() + frame]
    assert tx.used_entries() == [(h, 0)]


def test_tx_errors_are_logged_and_the_buffer_returned(caplog):
    dev, rx, tx, tap = make()
    tap.fail_writes = True
    h, _ = tx.add([vnet(), b"x" * 60])
    assert dev.process(net.TX)
    assert tx.used_entries() == [(h, 0)]
    assert "Write to tun failed" in caplog.text and dev.stats["tx_errors"] == 1


def test_rx_fills_buffers_while_frames_wait_and_sets_num_buffers():
    dev, rx, tx, tap = make()
    assert not dev.process(net.RX)                    # no buffers, nothing waiting
    bufs = [rx.add([], [11, 1600]) for _ in range(3)]  # num_buffers straddles two buffers
    assert dev.wants_host_input(net.RX)
    assert not dev.process(net.RX)                    # buffers, but the tap is empty
    assert rx.queue.has_available()
    tap.incoming = [vnet(flags=1) + b"A" * 60, vnet() + b"B" * 1500]
    assert dev.process(net.RX)
    used = rx.used_entries()
    assert used == [(bufs[0][0], 72), (bufs[1][0], 1512)]
    for (head, outs), body in zip(bufs, (b"A" * 60, b"B" * 1500)):
        got = rx.memory.read(outs[0], 11) + rx.memory.read(outs[1], len(body) + 1)
        assert got[:10] == vnet(flags=1 if body[0:1] == b"A" else 0)[:10]
        assert struct.unpack_from("<H", got, 10)[0] == 1
        assert got[12:] == body
    assert rx.queue.has_available()                   # the third buffer was given back


def test_rx_stops_when_out_of_buffers_and_keeps_the_frame():
    dev, rx, tx, tap = make()
    rx.add([], [2048])
    tap.incoming = [vnet() + b"1" * 60, vnet() + b"2" * 60]
    dev.process(net.RX)
    assert len(rx.used_entries()) == 1 and len(tap.incoming) == 1
    assert not dev.wants_host_input(net.RX)


def test_frames_before_any_rx_buffer_wait_counted_and_come_in_order():
    # Early boot: the host answers (ARP) before the guest's driver posted rx buffers.
    dev, rx, tx, tap = make()
    tap.incoming = [vnet() + b"A" * 60, vnet() + b"B" * 60]
    assert not dev.process(net.RX)
    assert dev.stats["rx_waits"] == 1 and len(tap.incoming) == 2 and dev.stats["rx"] == 0
    heads = [rx.add([], [2048])[0] for _ in range(2)]
    assert dev.process(net.RX)
    assert [h for h, _ in rx.used_entries()] == heads and dev.stats["rx"] == 2
    assert tap.incoming == [] and dev.stats["rx_waits"] == 1


@pytest.mark.parametrize("qi,readable,writable,rule", [
    (net.TX, [b"x" * 12], [4], "Input buffers in net output queue?"),
    (net.RX, [b"x"], [2048], "Output buffers in net input queue?"),
])
def test_wrong_direction_buffers_are_guest_errors(qi, readable, writable, rule):
    dev, rx, tx, tap = make()
    tap.incoming = [vnet() + b"z" * 60]
    (tx if qi == net.TX else rx).add(readable, writable)
    with pytest.raises(GuestError) as e:
        dev.process(qi)
    assert e.value.rule == rule and e.value.queue == dev.queue_names[qi]
