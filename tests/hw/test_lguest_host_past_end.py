"""A block request past the end of the disk, from a real guest on a real lguest host.

Linux's block layer never sends one (it checks every bio against the capacity), so the
guest unbinds virtio_blk from the disk and drives the device itself: a few lines of
Python (the host's i386 python3.11, copied into the guest's initrd) reset it, set up one
virtqueue in four pages it marks (the kernel has no /proc/self/pagemap, so the host
finds them in the launcher's mapping of guest memory and types their addresses on the
guest's console), and post a
write of one sector at sector = capacity. The registers are reached through the
VIRTIO_PCI_CAP_PCI_CFG window in PCI config space (sysfs), as this guest has no /dev/mem.
The seed's answer is bad_driver_vq(vq, "Write past end ..."): one line and exit 1; we
also check the file was neither extended nor written (the seed truncated it back).
"""

import glob
import os
import subprocess
import sys

import pytest

from lguest.pci.config import CAP_OFFSET
from lguest.pci.registers import DEVICE_CFG_OFFSET, NOTIFY_OFFSET, OFFSET
from lguest_host_guests import BUSYBOX, PRELUDE, Launcher, launcher_args, need_real_lguest
from lguest.uml import archive

SECTORS = 64
GUEST_MB = 64

DRIVER = f"""
import mmap, os, struct, sys
print("DRIVER-START", flush=True)
slot = sys.argv[1]
cfg = os.open(f"/sys/bus/pci/devices/{{slot}}/config", os.O_RDWR)
WINDOW = {CAP_OFFSET["cfg_access"]}             # cap.offset +8, cap.length +12, data +16

def window(off, length):
    os.pwrite(cfg, struct.pack("<II", off, length), WINDOW + 8)

def wr(off, length, value):
    window(off, length)
    os.pwrite(cfg, value.to_bytes(length, "little"), WINDOW + 16)

def rd(off, length):
    window(off, length)
    return int.from_bytes(os.pread(cfg, length, WINDOW + 16), "little")

PAGE = 4096
mem = mmap.mmap(-1, 4 * PAGE)
token = f"{{os.getpid()}}x{{os.times().elapsed}}"   # not urandom: getrandom() blocks for entropy here
for i in range(4):
    mem[i * PAGE:i * PAGE + 32] = f"LGUEST-PAGE-{{i}}-{{token}}".encode().ljust(32, b".")
# No /proc/self/pagemap in this kernel: the host finds our pages in guest memory.
print(f"FIND:{{token}}", flush=True)
line = input()
print(f"GOT:{{line}}", flush=True)
desc, avail, used, data = (int(a) for a in line.split()[1:5])
mem[:] = bytes(4 * PAGE)
S = {OFFSET["device_status"]}
wr(S, 1, 0)
wr(S, 1, 1)
wr(S, 1, 3)
for select, bits in ((1, 1), (0, 0)):               # VIRTIO_F_VERSION_1 only
    wr({OFFSET["driver_feature_select"]}, 4, select)
    wr({OFFSET["driver_feature"]}, 4, bits)
wr(S, 1, 11)
assert rd(S, 1) & 8, "FEATURES_OK refused"
wr({OFFSET["queue_select"]}, 2, 0)
wr({OFFSET["queue_size"]}, 2, 4)
for name, address in (("desc", desc), ("avail", avail), ("used", used)):
    wr({OFFSET["queue_desc_lo"]} + 8 * ("desc", "avail", "used").index(name), 4, address)
wr({OFFSET["queue_enable"]}, 2, 1)
wr(S, 1, 15)
capacity = rd({DEVICE_CFG_OFFSET}, 4) | rd({DEVICE_CFG_OFFSET + 4}, 4) << 32
print(f"CAPACITY:{{capacity}}", flush=True)
d = 3 * PAGE                                        # header, then 512 bytes, then status
mem[d:d + 16] = struct.pack("<IIQ", 1, 0, capacity)   # VIRTIO_BLK_T_OUT at the end
mem[d + 512:d + 1024] = b"P" * 512
struct.pack_into("<QIHH", mem, 0, data, 16, 1, 1)          # NEXT
struct.pack_into("<QIHH", mem, 16, data + 512, 512, 1, 2)  # NEXT (device reads it)
struct.pack_into("<QIHH", mem, 32, data + 1024, 1, 2, 0)   # WRITE: the status byte
struct.pack_into("<HHH", mem, PAGE, 0, 1, 0)               # avail: flags, idx 1, ring[0] 0
print("NOTIFYING", flush=True)
wr({NOTIFY_OFFSET}, 2, 0)
print("STATUS-BYTE:%d" % mem[d + 1024], flush=True)
"""

GUEST_SCRIPT = """
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor) $(cat $d/device)" = "0x1af4 0x1042" ]; then slot=${d##*/}; fi
done
echo $slot > /sys/bus/pci/drivers/virtio-pci/unbind
echo "UNBOUND:$slot $(ls /sys/block)"
python3 -S /driver.py $slot
echo "DRIVER-EXIT:$?"
sleep 60
"""


def python_files():
    """{guest path: host path} for the host's python3.11 and what the driver imports."""
    listing = subprocess.run(
        [sys.executable, "-S", "-c", "import mmap, os, struct, sys\n"
         "print('\\n'.join(m.__file__ for m in list(sys.modules.values())"
         " if getattr(m, '__file__', None)))"], capture_output=True, text=True, check=True)
    files = {"/usr/bin/python3": os.path.realpath(sys.executable)}
    for source in listing.stdout.split():
        files[source] = source
        for pyc in glob.glob(os.path.join(os.path.dirname(source), "__pycache__",
                                          os.path.basename(source)[:-3] + ".cpython-311*.pyc")):
            files[pyc] = pyc
    for libdir in ("/lib/i386-linux-gnu", "/usr/lib/i386-linux-gnu"):
        for lib in glob.glob(os.path.join(libdir, "lib*.so*")):
            if not os.path.basename(lib).startswith(("libcrypto", "libssl")):
                files[lib] = lib
    files["/lib/ld-linux.so.2"] = os.path.realpath("/lib/ld-linux.so.2")
    return files


def find_guest_pages(pid, token, count, size):
    """Guest-physical addresses of the guest's marked pages, read from the launcher's
    mapping of guest memory (guest physical 0 is its first byte)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = [(int(a, 16), int(b, 16), perms) for a, b, perms in
                (line.split()[0].split("-") + [line.split()[1]] for line in f)]
    # GuestMemory: read-write memory between two PROT_NONE guard pages (the kernel may
    # show it as several VMAs side by side).
    starts = []
    for i, (gs, ge, gp) in enumerate(maps):
        if not (gp.startswith("---") and ge - gs == 4096):
            continue
        end = ge
        for start, stop, perms in maps[i + 1:]:
            if start != end or not perms.startswith("rw"):
                break
            end = stop
        if end - ge == size:
            starts.append(ge)
    assert len(starts) == 1, f"guest memory mapping not found uniquely: {maps}"
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(starts[0])
        image = mem.read(size)
    found = []
    for i in range(count):
        # Python's own copies of the marker lie about the heap too: take the one
        # that starts a page.
        marker, at = f"LGUEST-PAGE-{i}-{token}".encode(), -1
        while (at := image.find(marker, at + 1)) >= 0 and at % 4096:
            pass
        assert at >= 0, f"page {i} not found in guest memory"
        found.append(at)
    return found


def driver_initrd(path):
    cpio = archive.busybox_image(BUSYBOX)
    for guest, host in sorted(python_files().items()):
        with open(host, "rb") as f:
            cpio.file(guest.lstrip("/"), f.read(), perm=os.stat(host).st_mode & 0o777)
    cpio.file("driver.py", DRIVER.encode())
    cpio.file("init", (PRELUDE + GUEST_SCRIPT).encode(), perm=0o755)
    with open(path, "wb") as f:
        f.write(archive.gzip_bytes(cpio.finish()))
    return str(path)


@pytest.fixture(scope="module")
def past_end(tmp_path_factory):
    need_real_lguest()
    if not os.path.exists("/lib/ld-linux.so.2"):
        pytest.skip("no i386 python3.11 here to copy into the guest")
    tmp = tmp_path_factory.mktemp("past-end")
    disk = tmp / "end.img"
    disk.write_bytes(b"D" * (SECTORS * 512))
    initrd = driver_initrd(tmp / "driver.cpio.gz")
    run = Launcher(launcher_args(f"--block={disk}", f"--initrd={initrd}", mem=str(GUEST_MB)))
    try:
        if run.wait_for("FIND:", timeout=150):
            pages = find_guest_pages(run.pid, run.value("FIND"), 4, GUEST_MB << 20)
            run.send(("ADDRS " + " ".join(str(a) for a in pages) + "\n").encode())
        run.status = run.finish(timeout=150)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    run.disk = disk.read_bytes()
    return run


def test_a_write_past_the_end_gets_the_seeds_message(past_end):
    assert past_end.value("CAPACITY") == str(SECTORS), past_end.report()
    err = past_end.err.decode("utf-8", "replace")
    assert "bad driver: Write past end" in err.strip().splitlines()[-1], past_end.report()
    assert "Traceback" not in err, past_end.report()


def test_a_write_past_the_end_is_a_clean_exit_and_leaves_the_file_alone(past_end):
    assert "NOTIFYING" in past_end.out, past_end.report()
    assert past_end.status == 1, past_end.report()
    assert "STATUS-BYTE" not in past_end.out, past_end.report()   # we stopped at the notify
    assert past_end.disk == b"D" * (SECTORS * 512)
