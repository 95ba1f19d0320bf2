"""QEMU on its defaults as the front-end of `lguest vhost-user`: block, rng, net.

QEMU 7.2 under TCG, Debian's cloud kernel and its real virtio_pci drivers (the kit:
tests/hw/qemu_kit.py). Two boots carry every case, to keep the file within a few minutes:
- `-smp 1`: disk A on QEMU's defaults (queue-size 128, num-queues = 1 vCPU), disk B with
  queue-size=256,num-queues=2 (more queues than vCPUs: the guest uses one), rng on its
  defaults, and (root, /dev/net/tun) virtio-net-pci with vectors=0 on a tap back-end;
- `-smp 2 -machine q35 -m 4096` (two memory regions): disk C on the defaults (num-queues = 2 vCPUs), disk D with queue-size=256,
  disk E with queue-size=1024,num-queues=1.
In each boot the guest writes 256 MiB from /dev/urandom to the first disk with O_DIRECT,
reads it back (md5), copies it to each other disk and reads those back; the test checks
both sums against the host's files. Each disk carries a label in its last MiB so the
guest's vdX can be matched to the host file whatever order the devices probe in.
"""

import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading

import pytest

import qemu_kit
from kits import kit_or_skip
from qemu_run import Backend, boot, hmp, qemu_path, wait_for_console

pytestmark = pytest.mark.skipif(qemu_path() is None,
                                reason="qemu-system-x86_64 is missing (Debian: qemu-system-x86)")

DATA_MB = 256
DISK_MB = DATA_MB + 1          # the last MiB holds the label
TAP_HOST, TAP_GUEST = "10.33.0.1", "10.33.0.2"
NET_MB = 8                      # each way over TCP: TSO frames both ways


@pytest.fixture(scope="module")
def kit():
    return kit_or_skip(qemu_kit.ensure_kit, "QEMU")


def make_disk(path, label):
    with open(path, "wb") as f:
        f.truncate(DISK_MB << 20)
        f.seek((DISK_MB << 20) - 512)
        f.write(label.encode())


def host_md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for _ in range(DATA_MB):
            h.update(f.read(1 << 20))
    return h.hexdigest()


DISK_SCRIPT = f"""
disks=$(cd /sys/block && ls -d vd*)
for d in $disks; do
  label=$(dd if=/dev/$d bs=512 skip=$(({DISK_MB} * 2048 - 1)) count=1 2>/dev/null | tr -d '\\0')
  echo "RESULT disk $d $label $(ls /sys/block/$d/mq | wc -l) $(cat /sys/block/$d/mq/0/nr_tags) $(cat /sys/block/$d/queue/max_segments)"
done
dd if=/dev/urandom of=/dev/vda bs=1M count={DATA_MB} oflag=direct 2>/dev/null && echo "RESULT wrote vda"
echo "RESULT md5 vda $(dd if=/dev/vda bs=1M count={DATA_MB} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
for d in $disks; do
  [ $d = vda ] && continue
  dd if=/dev/vda of=/dev/$d bs=1M count={DATA_MB} iflag=direct oflag=direct 2>/dev/null && echo "RESULT wrote $d"
  echo "RESULT md5 $d $(dd if=/dev/$d bs=1M count={DATA_MB} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
done
"""

RNG_SCRIPT = """
echo "RESULT rng-current $(cat /sys/class/misc/hw_random/rng_current)"
echo "RESULT rng $(timeout 30 dd if=/dev/hwrng bs=16 count=4 2>/dev/null | wc -c)"
# The driver again: QEMU stops the ring (GET_VRING_BASE) and starts a new one at 0.
rmmod virtio_rng && insmod /lib/modules/virtio_rng.ko
echo "RESULT rng-again $(timeout 30 dd if=/dev/hwrng bs=16 count=4 2>/dev/null | wc -c)"
"""

# After DISK_SCRIPT, with two vCPUs: a reader pinned to each CPU at once (virtio_blk
# maps queue N to CPU N), then vda's driver unbound and bound again (a device reset:
# QEMU stops the rings and starts new ones) and the whole 256 MiB read once more.
HALF_MB = DATA_MB // 2
PARALLEL_SCRIPT = f"""
for cpu in 0 1; do
  (taskset $((1 << cpu)) dd if=/dev/vda bs=1M skip=$((cpu * {HALF_MB})) count={HALF_MB} iflag=direct \
     2>/dev/null | md5sum | sed "s/^/RESULT half $cpu /; s/ *-$//") &
done
wait
grep -o 'virtio[0-9]*-req[.][0-9]*' /proc/interrupts | while read q; do
  echo "RESULT irqs $q $(grep "$q" /proc/interrupts | awk '{{print $2 + $3}}')"
done
virt=$(basename $(readlink /sys/block/vda/device))
echo $virt > /sys/bus/virtio/drivers/virtio_blk/unbind
echo $virt > /sys/bus/virtio/drivers/virtio_blk/bind
n=0; while [ ! -e /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
echo "RESULT md5-rebound $(dd if=/dev/vda bs=1M count={DATA_MB} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"""

NET_SCRIPT = f"""
ip link set lo up; ip link set eth0 up && ip addr add {TAP_GUEST}/24 dev eth0
ping -c 3 -w 20 {TAP_HOST} > /tmp/ping 2>&1; cat /tmp/ping; echo "uptime $(cat /proc/uptime)"; ip neigh; grep eth0 /proc/net/dev
echo "RESULT ping $(grep -c 'bytes from {TAP_HOST}' /tmp/ping)"
echo "RESULT net-features $(cat /sys/class/net/eth0/device/features)"
dd if=/dev/urandom of=/tmp/up bs=1M count={NET_MB} 2>/dev/null
echo "RESULT up-md5 $(md5sum < /tmp/up | cut -d' ' -f1)"
timeout 60 nc {TAP_HOST} {{up_port}} < /tmp/up; rm /tmp/up
echo "RESULT down-md5 $(timeout 60 nc {TAP_HOST} {{down_port}} < /dev/null | md5sum | cut -d' ' -f1)"
"""


class TcpPeer:
    """The host's end of the guest's two TCP transfers: it takes what the guest sends (md5)
    on one port and sends NET_MB random bytes on the other, then closes each."""

    def __init__(self):
        self.sent = os.urandom(NET_MB << 20)
        self.got_md5 = None
        self.up, self.down = (socket.create_server(("0.0.0.0", 0)) for _ in range(2))
        self.ports = {"up_port": self.up.getsockname()[1], "down_port": self.down.getsockname()[1]}
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        for s in (self.up, self.down):
            s.settimeout(150)
        try:
            conn, _ = self.up.accept()
            with conn:
                h = hashlib.md5()
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                self.got_md5 = h.hexdigest()
            conn, _ = self.down.accept()
            with conn:
                conn.sendall(self.sent)
        except OSError:
            pass              # the guest never came: the test says what the guest printed

    def close(self):
        self.up.close()
        self.down.close()


def can_tap():
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


def blk_args(backend, name, options, chardev=""):
    return ["-chardev", f"socket,id={name},path={backend.socket}{chardev}",
            "-device", f"vhost-user-blk-pci,chardev={name}{options}"]


class Run:
    """One boot: its back-ends, disks and result."""

    def __init__(self, kit, disks, smp, rng=False, net=False, net_options="", after="",
                 chardev="", disk_script=None, watch=None, **boot_args):
        self.dir = tempfile.mkdtemp(prefix="lgq-", dir="/tmp")
        self.disks, self.backends, args, script = {}, {}, [], ""
        self.tcp = None
        try:
            if net:
                tap = f"lgq{os.getpid() % 10000}"
                # A /24: with the classful /8 of a bare 10.x address, other 10.x taps on
                # the host (other tests, other users) route 10.0.0.0/8 too, and the host's
                # replies to our guest left by one of them (sniffed on our tap: ARP
                # answered, ICMP never; 0 of 3 pings in 1 boot of 4).
                self.backends["net"] = b = Backend(self.dir, "net",
                                                   [f"--net=tap:{tap}:{TAP_HOST}/24"])
                args += ["-chardev", f"socket,id=n0,path={b.socket}",
                         "-netdev", "vhost-user,id=net0,chardev=n0",
                         "-device", f"virtio-net-pci,netdev=net0{net_options or ',vectors=0'}"]
                self.tcp = TcpPeer()
                script += NET_SCRIPT.format(**self.tcp.ports)
            if rng:
                self.backends["rng"] = b = Backend(self.dir, "rng", ["--rng"])
                args += ["-chardev", f"socket,id=r0,path={b.socket}",
                         "-device", f"vhost-user-rng-pci,chardev=r0"]
                script += RNG_SCRIPT
            for label, options in disks:
                path = os.path.join(self.dir, f"{label}.img")
                make_disk(path, label)
                self.disks[label] = (path, options)
                self.backends[label] = b = Backend(self.dir, label, [f"--block={path}"])
                args += blk_args(b, label, options, chardev)
            script += (DISK_SCRIPT if disk_script is None else disk_script) + after
            if watch is not None:
                boot_args["watch"] = lambda console, _: watch(self, console)
            self.boot = boot(kit, qemu_kit.initramfs(kit, script), self.dir, args, smp=smp,
                             **boot_args)
        finally:
            for name, b in self.backends.items():
                if hasattr(self, "boot"):
                    self.boot.backend_logs[name] = b.stop()
                else:
                    b.stop()

    def close(self):
        if self.tcp:
            self.tcp.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def one_cpu(kit):
    run = Run(kit, [("A", ""), ("B", ",queue-size=256,num-queues=2")], smp=1,
              rng=True, net=can_tap())
    yield run
    run.close()


@pytest.fixture(scope="module")
def two_cpus(kit):
    # E: QEMU's largest ring (its VIRTQUEUE_MAX_SIZE); refused until we took 1024.
    # q35 with 4 GiB: QEMU's memory table has two regions (0-2 GiB, 4-6 GiB), not one.
    run = Run(kit, [("C", ""), ("D", ",queue-size=256"), ("E", ",queue-size=1024,num-queues=1")],
              smp=2, machine="q35", mem_mb=4096, after=PARALLEL_SCRIPT)
    yield run
    run.close()


# What QEMU 7.2 says on stderr on every good run: its vhost-user net and rng devices
# have no config space to get from a back-end, and ours offers PROTOCOL_F_CONFIG (for
# virtio_uml, which reads the MAC and the rest through it). Anything else fails a test.
KNOWN_QEMU_WARNING = re.compile(
    r"warning: vhost-user backend supports VHOST_USER_PROTOCOL_F_CONFIG but QEMU does not")


def check_qemu_quiet(b):
    unexpected = [l for l in b.stderr.splitlines() if l.strip() and not KNOWN_QEMU_WARNING.search(l)]
    assert not unexpected, "QEMU said:\n" + "\n".join(unexpected) + b.tail()


def check_disks(run, expected):
    """expected: {label: (queues the guest uses, ring size)}."""
    b = run.boot
    assert b.returncode == 0 and not b.timed_out, "QEMU did not power off cleanly" + b.tail()
    check_qemu_quiet(b)
    seen = {}
    for name, label, nqueues, tags, segs in b.results("disk"):
        seen[label] = name
        assert (int(nqueues), int(tags)) == expected[label], f"disk {label} ({name})" + b.tail()
        # seg_max 126 whatever the ring: QEMU reads the config before it sizes rings,
        # and Linux's longer chains go indirect (we take tables of up to 1024).
        assert int(segs) == 126, f"disk {label} max_segments" + b.tail()
    assert sorted(seen) == sorted(expected), "the guest did not see every disk" + b.tail()
    assert sorted(w for w, in b.results("wrote")) == sorted(seen.values()), \
        "a dd write failed" + b.tail()
    sums = {name: md5 for name, md5 in b.results("md5")}
    for label, name in seen.items():
        assert sums.get(name) == host_md5(run.disks[label][0]), \
            f"disk {label} ({name}): the guest's md5 differs from the host file's" + b.tail()
    assert len(set(sums.values())) == 1, "the copies differ from vda" + b.tail()
    for name, log in b.backend_logs.items():
        assert "Traceback" not in log and "error" not in log.lower(), \
            f"back-end {name} logged:\n{log[-1500:]}" + b.tail()


def test_blk_one_vcpu_defaults_and_256_entries_2_queues(one_cpu):
    # With one vCPU the guest's virtio_blk uses min(num-queues, CPUs) = 1 queue.
    check_disks(one_cpu, {"A": (1, 128), "B": (1, 256)})


def test_blk_two_vcpus_default_num_queues_is_the_vcpu_count(two_cpus):
    regions = [l for l in two_cpus.boot.backend_logs["C"].splitlines() if "region guest" in l]
    assert any("region guest 0x100000000-" in l for l in regions), regions
    check_disks(two_cpus, {"C": (2, 128), "D": (2, 256), "E": (1, 1024)})


def test_blk_two_vcpus_both_queues_at_once_then_a_driver_rebind(two_cpus):
    b, path = two_cpus.boot, two_cpus.disks["C"][0]
    assert two_cpus.boot.results("disk")[0][1] == "C", "vda is not disk C" + b.tail()
    with open(path, "rb") as f:
        halves = [hashlib.md5(f.read(HALF_MB << 20)).hexdigest() for _ in range(2)]
    got = {cpu: md5 for cpu, md5 in b.results("half")}
    assert got == {"0": halves[0], "1": halves[1]}, "parallel reads differ" + b.tail()
    irqs = {q: int(n) for q, n in b.results("irqs")}
    vda_queues = sorted(q for q in irqs if q.endswith((".0", ".1")))
    # Some virtioN has both req.0 and req.1 busy: the two CPUs used their own queues.
    devices = {q.split("-")[0] for q in vda_queues}
    assert any(irqs.get(f"{d}-req.0", 0) > 0 and irqs.get(f"{d}-req.1", 0) > 0
               for d in devices), f"one queue did all the work: {irqs}" + b.tail()
    assert b.result("md5-rebound")[0] == host_md5(path), "after the rebind" + b.tail()


def test_rng_on_defaults_returns_bytes(one_cpu):
    b = one_cpu.boot
    assert b.result("rng-current")[0].startswith("virtio_rng"), b.tail()
    assert b.result("rng") == ["64"], "a read of /dev/hwrng did not return 64 bytes" + b.tail()
    assert b.result("rng-again") == ["64"], "after reloading virtio_rng" + b.tail()


@pytest.mark.skipif(not can_tap(), reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_net_vectors0_pings_the_host_over_a_tap(one_cpu):
    b = one_cpu.boot
    # Pings sent while ARP resolves wait in the neighbour queue: all three come back.
    assert int(b.result("ping")[0]) == 3, "ping from the guest to the tap failed" + b.tail()


@pytest.mark.skipif(not can_tap(), reason="a tap needs /dev/net/tun and root (CAP_NET_ADMIN)")
def test_net_tcp_both_ways_with_the_offloads_qemu_negotiates(one_cpu):
    b, tcp = one_cpu.boot, one_cpu.tcp
    # What the guest's driver negotiated (a string of 0/1 per bit): TSO both ways, so
    # frames up to 64 KiB cross our back-end in each direction, and mergeable rx buffers
    # (L:387), so each one coming down is spread over several of the driver's.
    features = b.result("net-features")[0]
    for bit in (0, 1, 7, 11, 15):      # CSUM, GUEST_CSUM, GUEST_TSO4, HOST_TSO4, MRG_RXBUF
        assert features[bit] == "1", f"feature bit {bit} not negotiated: {features}" + b.tail()
    assert tcp.got_md5 == b.result("up-md5")[0], "guest -> host TCP data differ" + b.tail()
    assert b.result("down-md5")[0] == hashlib.md5(tcp.sent).hexdigest(), \
        "host -> guest TCP data differ" + b.tail()


# While the guest reads in a loop: 512 MiB of memory plugged in (QEMU sends SET_MEM_TABLE
# with a second region while the ring runs; the guest onlines it), then the session
# process killed: QEMU (reconnect=1) connects again, sets the rings up anew from the
# used index (its GET_VRING_BASE on the dead socket fails, so requests in flight are
# served again) and the guest's reads go on, every one right.
RECONNECT_PASSES = 10
RECONNECT_SCRIPT = f"""
dd if=/dev/urandom of=/dev/vda bs=1M count=16 oflag=direct 2>/dev/null
echo "RESULT md5-first $(dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
i=0; while [ $i -lt {RECONNECT_PASSES} ]; do
  echo "RESULT pass $i $(timeout 60 dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
  for m in /sys/devices/system/memory/memory*/state; do grep -q offline $m && echo online > $m; done
  echo "RESULT mem $i $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
  i=$((i + 1)); sleep 0.5
done
"""


def test_blk_memory_hotplug_then_session_killed_qemu_reconnects_reads_go_on(kit):
    killed = []

    def plug_then_kill(run, console):
        if wait_for_console(console, "RESULT pass 2 "):
            hmp(run.dir, "object_add memory-backend-memfd,id=m2,size=512M,share=on",
                "device_add pc-dimm,id=d2,memdev=m2")
        if wait_for_console(console, "RESULT pass 5 "):
            killed.append(run.backends["A"].kill_sessions())

    run = Run(kit, [("A", "")], smp=1, chardev=",reconnect=1", disk_script=RECONNECT_SCRIPT,
              watch=plug_then_kill, hotplug=True)
    try:
        b = run.boot
        assert killed == [1], f"no session to kill: {killed}" + b.tail()
        first = b.result("md5-first")[0]
        passes = b.results("pass")
        assert [p[0] for p in passes] == [str(i) for i in range(RECONNECT_PASSES)], b.tail()
        assert all(p[1:] == [first] for p in passes), "a read differs" + b.tail()
        mem = [int(m[1]) for m in b.results("mem")]
        assert mem[-1] - mem[0] >= 500 << 10, f"the plugged memory did not show: {mem}" + b.tail()
        log = b.backend_logs["A"]
        assert "session ended by SIGKILL" in log and log.count("front-end connected") == 2, log
        # The second region came mid-session, and again after the reconnect.
        assert log.count("region guest 0x100000000-0x120000000") == 2, log
    finally:
        run.close()


WRITE_LOOP = """
i=0; while [ $i -lt 40 ]; do
  dd if=/dev/urandom of=/dev/vda bs=1M count=8 oflag=direct 2>/dev/null; echo "RESULT wpass $i"
  i=$((i + 1))
done
echo "RESULT md5 $(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
"""


def test_qemu_killed_mid_write_costs_only_its_session(kit):
    # SIGKILL to QEMU with writes in flight: the session ends (its rings with it), and
    # the same back-end serves the next QEMU, whose writes land in the file.
    workdir = tempfile.mkdtemp(prefix="lgq-", dir="/tmp")
    path = os.path.join(workdir, "A.img")
    make_disk(path, "A")
    backend = Backend(workdir, "A", [f"--block={path}"])
    initrd = qemu_kit.initramfs(kit, WRITE_LOOP)

    def kill_at_pass_3(console, qemu):
        if wait_for_console(console, "RESULT wpass 3"):
            qemu.kill()

    try:
        args = blk_args(backend, "A", "")
        first = boot(kit, initrd, workdir, args, watch=kill_at_pass_3)
        assert first.returncode == -9 and not first.results("md5"), \
            "QEMU was not killed mid-loop" + first.tail()
        os.unlink(os.path.join(workdir, "console.log"))
        second = boot(kit, initrd, workdir, args)
        log = backend.stop()
        second.backend_logs["A"] = log
        assert second.returncode == 0, "the next QEMU was not served" + second.tail()
        with open(path, "rb") as f:
            want = hashlib.md5(f.read(8 << 20)).hexdigest()
        assert second.result("md5") == [want], second.tail()
        assert log.count("front-end connected") == 2 and "Traceback" not in log, log
    finally:
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
