"""Networking through our virtio-net back-end, driven by real Linux (UML) drivers.

Two ways, both tested:
* two guests joined by the back-end's guest-to-guest pair ping each other: no privileges,
  no tap, and both ends are our NetDevice (tx in one guest, rx in the other), so this runs
  wherever UML does, CI included;
* one guest reaches the host over a tap (needs /dev/net/tun and CAP_NET_ADMIN), which
  proves the path to a real host network stack.
Bulk TCP both ways (guest to guest, host to guest over a tap) checks every byte of frames
spread over mergeable rx buffers (L:387), and a 64 MiB guest keeps its memory.
"""

import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time

import pytest

from lguest.uml.guest import Guest
from lguest.uml.pair import run_pair
from lguest.vhost_user import served


@pytest.fixture(autouse=True)
def short_tmp(monkeypatch):
    path = tempfile.mkdtemp(prefix="lgn-", dir="/tmp")
    monkeypatch.setattr("tempfile.tempdir", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def replies(text, peer):
    return len(re.findall(rf"bytes from {re.escape(peer)}:", text))


def test_two_guests_ping_each_other_through_our_back_end(uml):
    ping = "ping -c 3 -w 20 {peer}; cat /sys/class/net/eth0/address"
    a, b = run_pair([ping.format(peer="10.11.0.2"), ping.format(peer="10.11.0.1")],
                    ["10.11.0.1/24", "10.11.0.2/24"], kit=uml, timeout=60)
    assert a.returncode == 0 and b.returncode == 0, (a, b)
    # The one that boots first may lose a ping to the other's boot; each hears some.
    assert replies(a.stdout, "10.11.0.2") >= 1 and replies(b.stdout, "10.11.0.1") >= 1
    # The MACs our back-end gave the two ends, as the guests' drivers read them.
    assert a.stdout.split()[-1] == "52:54:00:00:00:01"
    assert b.stdout.split()[-1] == "52:54:00:00:00:02"


def meminfo(text, key):
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) // 1024


# Bit 15 of the features the driver took, as virtio's sysfs file spells them (a string
# of 0s and 1s, bit 0 first).
MRG_RXBUF_TAKEN = "cut -c16 /sys/bus/virtio/drivers/virtio_net/virtio*/features"


def test_a_64_mib_guest_with_our_net_device_keeps_its_memory(uml):
    # Without MRG_RXBUF Linux's virtio_net posted 256 rx buffers of ~72 KiB (GUEST_TSO):
    # measured here, 3 to 9 MiB MemAvailable in a 64 MiB guest with our net device, 23
    # to 30 MiB without one. With it, buffers of a page or less.
    look = f"{MRG_RXBUF_TAKEN}; sleep 1; cat /proc/meminfo"
    a, b = run_pair([look, look], ["10.11.1.1/24", "10.11.1.2/24"], kit=uml, timeout=60, mem=64)
    for r in (a, b):
        assert r.returncode == 0, r
        assert r.stdout.split()[0] == "1", r.stdout        # the driver took MRG_RXBUF
        assert meminfo(r.stdout, "MemAvailable") >= 16, r.stdout


def test_a_bulk_transfer_between_guests_arrives_whole_over_merged_buffers(uml):
    # 4 MiB of random bytes over TCP from guest b to guest a: b's driver sends 64 KiB
    # GSO frames (HOST_TSO), a's device spreads each over several of its driver's small
    # rx buffers (MRG_RXBUF); the checksums say every byte came in order.
    # busybox's nc exits at EOF on its stdin: the receiver hands the socket to a script
    # (-e) that saves all of it, and the sender's nc ends the connection at end of file.
    receive = ("printf '#!/bin/sh\\ncat >/tmp/r\\n' >/tmp/save; chmod +x /tmp/save; "
               "nc -l -p 5001 -e /tmp/save; wc -c </tmp/r; md5sum /tmp/r")
    send = ("dd if=/dev/urandom of=/tmp/f bs=65536 count=64 2>/dev/null; md5sum </tmp/f; "
            "for i in $(seq 40); do nc 10.11.2.1 5001 </tmp/f && break; sleep 0.5; done")
    ends = served.net_pair()
    a, b = run_pair([receive, send], ["10.11.2.1/24", "10.11.2.2/24"], kit=uml, timeout=90,
                    ends=ends)
    assert a.returncode == 0 and b.returncode == 0, (a, b)
    assert a.stdout.split()[:2] == ["4194304", b.stdout.split()[0]], (a.stdout, b.stdout)
    stats = ends[0].device.stats
    assert stats["rx_merged"] >= 10, stats             # frames over several buffers
    assert stats["rx_dropped"] == 0 and stats["rx_errors"] == 0, stats


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_guest_reaches_the_host_over_a_tap(uml):
    name = f"lgt{os.getpid() % 10000}"
    with Guest(kit=uml, net=f"tap:{name}:10.12.0.1/24", ip="10.12.0.2/24", timeout=40,
               root="initramfs", mem=64) as g:       # 64 is enough: see run_pair
        r = g.run("ping -c 2 -w 10 10.12.0.1")
    assert r.returncode == 0, r
    assert replies(r.stdout, "10.12.0.1") == 2
    assert not os.path.exists(f"/sys/class/net/{name}")      # the tap went with us


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_the_host_sends_a_guest_4_mib_over_the_tap_in_merged_buffers(uml):
    # The host's TCP hands the tap 64 KiB GSO frames (the tap takes TSO, the guest
    # GUEST_TSO): each comes out of one readv across many of the guest's small buffers.
    name = f"lgr{os.getpid() % 10000}"
    data = os.urandom(4 << 20)
    net = served.net_tap(f"tap:{name}:10.18.0.1/24")
    sent = []

    def send():
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not sent:
            try:
                with socket.create_connection(("10.18.0.2", 5001), timeout=5) as s:
                    s.sendall(data)
                    sent.append(True)
            except OSError:
                time.sleep(0.3)             # the guest (or the tap) is not up yet

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        with Guest(kit=uml, net=net, ip="10.18.0.2/24", mem=64, timeout=60,
                   root="initramfs") as g:
            r = g.run("printf '#!/bin/sh\\ncat >/tmp/r\\n' >/tmp/save; chmod +x /tmp/save; "
                      "nc -l -p 5001 -e /tmp/save; wc -c </tmp/r; md5sum </tmp/r")
        sender.join(10)
        stats = net.device.stats
    finally:
        net.close()
    assert r.returncode == 0 and sent, r
    assert r.stdout.split()[:2] == [str(len(data)), hashlib.md5(data).hexdigest()], r.stdout
    assert stats["rx_merged"] >= 10 and stats["rx_dropped"] == 0, stats


def ping_both(guests, peers, count=3):
    """Each guest pings its own host end, all at once; their results in order."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(len(guests)) as pool:
        runs = [pool.submit(g.run, f"ping -c {count} -w 20 {peer}") for g, peer in zip(guests, peers)]
        return [r.result() for r in runs]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_two_guests_on_two_taps_at_once_each_reach_their_host(uml):
    # Classful, both taps would route 10.0.0.0/8 and the host's replies to one guest would
    # leave by the other's tap; with /24 each tap routes its own subnet only.
    base = os.getpid() % 100
    names = [f"lgd{base}a", f"lgd{base}b"]
    hosts = [f"10.13.{base}.1", f"10.13.{base + 100}.1"]
    guests = [Guest(kit=uml, net=f"tap:{name}:{host}/24", ip=host[:-1] + "2/24", mem=64,
                    timeout=60, root="initramfs")
              for name, host in zip(names, hosts)]
    try:
        for g in guests:
            g.boot()                   # both up, both taps configured, before any ping
        results = ping_both(guests, hosts)
    finally:
        for g in guests:
            g.close()
    for r, host in zip(results, hosts):
        assert r.returncode == 0, r
        assert replies(r.stdout, host) == 3, r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_uml_takes_a_multiqueue_net_device_and_uses_one_pair(uml):
    # virtio_uml sets up every ring the driver asks for (2 pairs and the control queue)
    # and UML's virtio_net sends MQ_VQ_PAIRS_SET with min(pairs, CPUs): UML has one CPU.
    name = f"lgm{os.getpid() % 10000}"
    net = served.net_tap(f"tap:{name}:10.17.0.1/24,queues=2")
    try:
        with Guest(kit=uml, net=net, ip="10.17.0.2/24", mem=64, timeout=60,
                   root="initramfs") as g:
            r = g.run("ping -c 3 -w 20 10.17.0.1")
            live = [q is not None for q in net.device.queues]
        assert r.returncode == 0 and replies(r.stdout, "10.17.0.1") == 3, r
        assert live == [True] * 5                          # rx0 tx0 rx1 tx1 ctrl
        assert net.device.stats["ctrl"] == 1 and net.device.stats["pairs_set"] == 1
        assert net.device.stats["rx"] >= 3 and net.device.stats["tx"] >= 3
    finally:
        net.close()
