"""Seed 000's devices on a real lguest host: one guest boot, many checks.

The guest (the host's bzImage, its /init from --initrd) gets a console, a read-write
disk, a read-only disk, an rng and a --tunnet network, with the launcher chrooted and
running as nobody after set-up. Its /init reports each result as a `KEY:value` line;
we play the other side (type a line, ping it) and check the disks' bytes afterwards.
It ends by breaking a virtio rule: it writes the read-only ISR register through the
VIRTIO_PCI_CAP_PCI_CFG window (PCI config space, from sysfs: this guest has no /dev/mem,
so config space is how userspace reaches the device's registers), and the launcher must stop with the seed's "bad driver" message, cleanly.
Skips, saying why, off a real lguest host (see lguest_host_guests.py).
"""

import hashlib
import os
import subprocess

import pytest

from lguest.pci.config import CAP_OFFSET
from lguest.pci.registers import ISR_OFFSET
from lguest_host_guests import Launcher, guest_initrd, launcher_args, need_real_lguest
from patterns import pattern

HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
TYPED = "typed on the host side 42"
DISK_SECTORS = 2048                    # 1 MiB
WRITE_SECTOR = 8
WRITTEN = b"GUEST-WROTE-THIS"
WINDOW, ISR = CAP_OFFSET["cfg_access"], ISR_OFFSET   # cap.offset at +8, length +12, data +16

GUEST_SCRIPT = f"""
echo "CONSOLE-OUT:written by the guest"
echo PROMPT
read line
echo "CONSOLE-IN:[$line]"
echo "VDA-SERIAL:$(cat /sys/block/vda/serial)"
echo "VDA-SECTORS:$(cat /sys/block/vda/size)"
echo "VDA-CACHE:$(cat /sys/block/vda/queue/write_cache)"
echo "VDA-HEAD:$(dd if=/dev/vda bs=512 count=1 2>/dev/null | md5sum)"
last=$(( $(cat /sys/block/vda/size) - 1 ))
echo "VDA-TAIL:$(dd if=/dev/vda bs=512 skip=$last count=1 2>/dev/null | md5sum)"
printf '{WRITTEN.decode()}' > /tmp/w
dd if=/tmp/w of=/dev/vda bs=512 seek={WRITE_SECTOR} conv=sync,fsync 2>/dev/null
echo "VDA-WRITE:$?"
echo "VDB-RO:$(cat /sys/block/vdb/ro)"
blockdev --setrw /dev/vdb
dd if=/tmp/w of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null
echo "VDB-WRITE:$?"
echo "RNG-CURRENT:$(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG1:$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | hexdump -v -e '/1 "%02x"')"
echo "RNG2:$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | hexdump -v -e '/1 "%02x"')"
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
ping -c 3 -W 10 {HOST_IP} > /tmp/ping 2>&1
echo "GUEST-PING:$? $(grep -c 'bytes from' /tmp/ping)"
echo NET-UP
read line
echo "ETH0:$(cat /sys/class/net/eth0/statistics/rx_packets) $(cat /sys/class/net/eth0/statistics/tx_packets)"
echo "NET-MRG:$(cut -c16 /sys/bus/virtio/drivers/virtio_net/virtio*/features)"
echo BREAKING-A-RULE
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor) $(cat $d/device)" = "0x1af4 0x1044" ]; then
    printf '\\{ISR:03o}\\000\\000\\000\\001\\000\\000\\000' | dd of=$d/config bs=1 seek={WINDOW + 8} conv=notrunc 2>/dev/null
    printf '\\000' | dd of=$d/config bs=1 seek={WINDOW + 16} conv=notrunc
  fi
done
echo STILL-ALIVE
sleep 60
"""


@pytest.fixture(scope="module")
def boot(tmp_path_factory):
    need_real_lguest()
    tmp = tmp_path_factory.mktemp("devices")
    disk, ro_disk, jail = tmp / "disk.img", tmp / "ro.img", tmp / "jail"
    disk.write_bytes(pattern("rw", DISK_SECTORS * 512))
    ro_disk.write_bytes(pattern("ro", 128 * 512))
    jail.mkdir()
    initrd = guest_initrd(tmp / "guest.cpio.gz", GUEST_SCRIPT)
    run = Launcher(launcher_args(f"--block={disk}", f"--block={ro_disk},ro", "--rng",
                                 f"--tunnet={HOST_IP}", f"--initrd={initrd}",
                                 f"--chroot={jail}", "--username=nobody"))
    run.host = {}
    try:
        if run.wait_for("PROMPT"):
            # By now the launcher has dropped its privileges: see what it became.
            with open(f"/proc/{run.pid}/status") as f:
                run.host["uid"] = next(l.split()[1:] for l in f if l.startswith("Uid:"))
            run.host["root"] = os.readlink(f"/proc/{run.pid}/root")
            run.send(TYPED.encode() + b"\n")
        if run.wait_for("NET-UP"):
            ping = subprocess.run(["ping", "-c", "3", "-W", "10", GUEST_IP],
                                  capture_output=True, text=True, timeout=120)
            run.host["ping"] = (ping.returncode, ping.stdout.count("bytes from"))
            run.send(b"pinged\n")
        run.status = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    run.disk, run.ro_disk = disk.read_bytes(), ro_disk.read_bytes()
    run.disk_before = pattern("rw", DISK_SECTORS * 512)
    run.ro_before = pattern("ro", 128 * 512)
    run.jail = str(jail)
    return run


def md5(data):
    return hashlib.md5(data).hexdigest()


def test_a_bzimage_boots_its_initrd_and_the_console_carries_its_output(boot):
    assert boot.value("CONSOLE-OUT") == "written by the guest", boot.report()


def test_console_input_reaches_the_guest(boot):
    assert boot.value("CONSOLE-IN") == f"[{TYPED}]", boot.report()


def test_block_capacity_is_the_file_size_in_sectors(boot):
    assert boot.value("VDA-SECTORS") == str(DISK_SECTORS), boot.report()


def test_block_get_id_answers_the_file_name(boot):
    assert boot.value("VDA-SERIAL") == "disk.img", boot.report()


def test_block_reads_the_host_files_bytes(boot):
    assert boot.value("VDA-HEAD").split()[0] == md5(boot.disk_before[:512]), boot.report()
    assert boot.value("VDA-TAIL").split()[0] == md5(boot.disk_before[-512:]), boot.report()


def test_block_write_lands_in_the_host_file_and_nothing_else_changes(boot):
    assert boot.value("VDA-WRITE") == "0", boot.report()
    start = WRITE_SECTOR * 512
    assert boot.disk[start:start + 512] == WRITTEN.ljust(512, b"\0")
    assert boot.disk[:start] == boot.disk_before[:start]
    assert boot.disk[start + 512:] == boot.disk_before[start + 512:]


def test_block_flush_is_offered_and_an_fsync_through_it_succeeds(boot):
    # "write back" is what virtio_blk sets when VIRTIO_BLK_F_FLUSH was negotiated; the
    # dd above ended with fsync(), which sends a FLUSH and fails if it is refused.
    assert boot.value("VDA-CACHE") == "write back", boot.report()
    assert boot.value("VDA-WRITE") == "0", boot.report()


def test_read_only_block_is_read_only_to_the_guest(boot):
    assert boot.value("VDB-RO") == "1", boot.report()


def test_read_only_block_refuses_a_forced_write(boot):
    # blockdev --setrw lifts the guest kernel's own check: the write reaches the
    # device, which must refuse it (IOERR, so fsync fails) and leave the file alone.
    assert boot.value("VDB-WRITE") not in (None, "0"), boot.report()
    assert boot.ro_disk == boot.ro_before


def test_rng_feeds_the_guests_hwrng(boot):
    assert boot.value("RNG-CURRENT").startswith("virtio_rng"), boot.report()
    first, second = boot.value("RNG1"), boot.value("RNG2")
    assert len(first) == 64 and len(second) == 64, boot.report()
    assert first != second and len(set(first)) > 4


def test_the_guest_pings_the_host_over_tunnet(boot):
    assert boot.value("GUEST-PING") == "0 3", boot.report()


def test_the_host_pings_the_guest_over_tunnet(boot):
    assert boot.host.get("ping") == (0, 3), boot.report()


def test_frames_went_both_ways_through_the_net_device(boot):
    rx, tx = (int(n) for n in boot.value("ETH0").split())
    # Six echo requests and replies each way at least (ARP aside).
    assert rx >= 6 and tx >= 6, boot.report()


def test_the_net_driver_took_mergeable_rx_buffers(boot):
    # Bit 15 of the features virtio_net took (sysfs spells them bit 0 first): MRG_RXBUF
    # (L:387), so its rx ring holds small buffers, not 18 pages each.
    assert boot.value("NET-MRG") == "1", boot.report()


def test_chroot_is_applied_after_set_up(boot):
    assert boot.host.get("root") == boot.jail, boot.report()


def test_username_is_applied_after_set_up(boot):
    assert boot.host.get("uid") == ["65534"] * 4, boot.report()


def test_a_driver_breaking_a_rule_gets_the_seeds_message(boot):
    err = boot.err.decode("utf-8", "replace")
    assert "bad driver: Unexpected write to isr" in err, boot.report()
    assert "rng" in err.split("bad driver")[0], boot.report()


def test_a_driver_breaking_a_rule_is_a_clean_exit(boot):
    err = boot.err.decode("utf-8", "replace")
    assert "BREAKING-A-RULE" in boot.out, boot.report()
    assert boot.status == 1, boot.report()
    assert "Traceback" not in err, boot.report()
    assert "bad driver" in err.strip().splitlines()[-1], boot.report()
    assert "STILL-ALIVE" not in boot.out, boot.report()
