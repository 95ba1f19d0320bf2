"""DPDK's dpdk-testpmd as a VM-less vhost-user front-end (virtio-user) for the hw tests.

Debian 12 ships dpdk-testpmd in `dpdk-dev`, whose install pulls in ~225 packages (the
headers, every PMD, udev and systemd upgrades: 171 MB). The binary itself needs far
less: the librte libraries it links (readelf -d: NEEDED) and two plugins it loads with
-d, the virtio PMD (net_virtio_user) and the ring mempool. So, as the UML and QEMU
kits do, we `apt-get download` just those .debs (13 MB, ~2 s here) into the cache
(~/.cache/lguest-py/dpdk, $LGUEST_CACHE/dpdk), unpack them into one tree and run
testpmd from it with LD_LIBRARY_PATH. Nothing is installed on the system.

No hugepages: since DPDK 19.02, --no-huge backs EAL memory with a memfd, which
virtio-user passes to the back-end in SET_MEM_TABLE like any front-end's memory.
"""

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from lguest.errors import LauncherError
from lguest.uml import archive, kit as uml_kit

# dpdk-dev for usr/bin/dpdk-testpmd only; then the packages of its NEEDED libraries
# (Debian 12, DPDK 22.11), and the two plugins. The host's libc, libnuma, libbsd, ...
# are not here: where one is missing, ensure_kit's probe names it.
BINARY_PACKAGE = "dpdk-dev"
LIBRARY_PACKAGES = (
    "librte-eal23 librte-kvargs23 librte-telemetry23 librte-ethdev23 librte-net23 "
    "librte-mbuf23 librte-mempool23 librte-ring23 librte-meter23 librte-cmdline23 "
    "librte-crypto-scheduler23 librte-cryptodev23 librte-rcu23 librte-bus-vdev23 "
    "librte-reorder23 librte-bitratestats23 librte-metrics23 librte-bpf23 librte-gro23 "
    "librte-gso23 librte-latencystats23 librte-pdump23 librte-pcapng23 librte-net-bnxt23 "
    "librte-bus-pci23 librte-pci23 librte-net-i40e23 librte-hash23 librte-net-ixgbe23 "
    "librte-security23 librte-bus-dpaa23 librte-common-dpaax23 librte-eventdev23 "
    "librte-timer23 librte-mempool-dpaa23 librte-net-dpaa23 librte-net-bond23 "
    "librte-sched23 librte-ip-frag23 librte-net-ice23 librte-common-iavf23 "
    "librte-net-mlx5-23 librte-common-mlx5-23 librte-bus-auxiliary23 libpcap0.8 "
    "librte-net-virtio23 librte-mempool-ring23 "
    # librte-common-mlx5 links libmlx5.so.1 (rdma-core's providers, which Debian's qemu
    # only recommends) and libibverbs.so.1: a fresh machine may have neither.
    "ibverbs-providers libibverbs1").split()
PLUGINS = ("librte_net_virtio.so.23", "librte_mempool_ring.so.23")
LIB = "usr/lib/x86_64-linux-gnu"
KIT_VERSION = 2            # a new package list: a new tree, not one missing a library


@dataclass(frozen=True)
class TestpmdKit:
    binary: str
    libdir: str | None     # LD_LIBRARY_PATH (None: a system-installed testpmd)
    plugins: tuple         # -d paths (empty: the system's PMD directory loads them)

    def env(self):
        env = dict(os.environ)
        if self.libdir:
            env["LD_LIBRARY_PATH"] = self.libdir
        return env

    def argv(self, vdevs, app_args, prefix):
        """testpmd with two lcores on one CPU (main and one forwarding core): the machine
        has two CPUs and the forwarding core busy-polls at 100%, so the back-end under
        test keeps the other. --no-shconf and a file prefix per run: no files shared
        between runs (or with another DPDK process on the host)."""
        cpu = min(os.sched_getaffinity(0))       # CPU 0, unless we may not run there
        eal = [f"--lcores=0@{cpu},1@{cpu}", "--no-huge", "-m", "256", "--no-pci", "--no-shconf",
               "--no-telemetry", f"--file-prefix={prefix}"]
        for p in self.plugins:
            eal += ["-d", p]
        for v in vdevs:
            eal += [f"--vdev={v}"]
        # testpmd sizes its mbuf pool for real NICs (155456 mbufs here, 330 MB), more
        # than -m 256 holds: 4096 fill two queue pairs' rings of 256 many times over
        # (a later --total-num-mbufs in app_args wins: bigger rings need more).
        return [self.binary, *eal, "--", "-i", "--nb-cores=1", "--total-num-mbufs=4096",
                *app_args]


def runtime_dir(prefix):
    """Where EAL makes its run directory for a file prefix (eal_create_runtime_dir:
    /var/run/dpdk for root, else $XDG_RUNTIME_DIR/dpdk or /tmp/dpdk). Even with
    --no-shconf it is left behind, one per prefix: we remove ours."""
    if os.geteuid() == 0:
        base = "/var/run"
    else:
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, "dpdk", prefix)


def root_dir():
    return os.path.join(uml_kit.cache_dir(), "dpdk")


def _fetch(debs):
    packages = [BINARY_PACKAGE, *LIBRARY_PACKAGES]
    missing = [p for p in packages if not glob.glob(os.path.join(debs, f"{p}_*.deb"))]
    if missing:
        done = uml_kit._apt_download(debs, missing)
        if done.returncode != 0 and os.geteuid() == 0:
            uml_kit._apt(["apt-get", "update", "-qq"])    # a fresh machine: no lists yet
            done = uml_kit._apt_download(debs, missing)
        if done.returncode != 0:
            raise LauncherError(f"apt-get download of {len(missing)} DPDK packages failed: "
                                f"{done.stderr.strip()[-300:]}")
    return [sorted(glob.glob(os.path.join(debs, f"{p}_*.deb")))[-1] for p in packages]


def _unpack_all(debs, dest):
    """Unpack every .deb into one tree, beside then renamed (as uml_kit.unpack)."""
    if os.path.isdir(dest):
        return dest
    scratch = tempfile.mkdtemp(prefix=".unpacking-", dir=os.path.dirname(dest))
    try:
        for deb in debs:
            archive.extract_deb(deb, scratch)
        os.chmod(scratch, 0o755)
        os.rename(scratch, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest


def _probe(kit):
    """Run testpmd's EAL once with no device (`--help` after EAL init): a missing
    library, plugin or refused plugin path shows here, with the loader's own words."""
    prefix = f"lgprobe{os.getpid()}"
    try:
        done = subprocess.run(kit.argv([], ["--help"], prefix),
                              env=kit.env(), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except OSError as e:
        raise LauncherError(f"cannot run {kit.binary}: {e}") from None
    except subprocess.TimeoutExpired:
        raise LauncherError(f"{kit.binary} --help did not finish in 60 s") from None
    finally:
        shutil.rmtree(runtime_dir(prefix), ignore_errors=True)
    out = done.stdout + done.stderr
    if "Cannot init EAL" in out or "error while loading shared libraries" in out \
            or "usage:" not in out.lower():
        tail = "\n".join(out.strip().splitlines()[-10:])
        if "world-writable" in out:
            # EAL loads plugins only from a path no other user can write (each parent
            # directory checked), so a cache under /tmp cannot serve.
            tail += (f"\n(the kit is under {root_dir()}: set LGUEST_CACHE to a directory "
                     "whose parents are not world-writable)")
        raise LauncherError(f"dpdk-testpmd cannot start here (exit {done.returncode}):\n{tail}")


def ensure_kit():
    """The testpmd kit, fetched and unpacked once; LauncherError says why not."""
    if not shutil.which("apt-get"):
        system = shutil.which("dpdk-testpmd")
        if system is None:
            raise LauncherError("dpdk-testpmd is not installed and apt-get is missing "
                                "(Debian: apt-get install dpdk-dev)")
        kit = TestpmdKit(binary=system, libdir=None, plugins=())
    else:
        root = root_dir()
        debs = os.path.join(root, "debs")
        try:
            os.makedirs(debs, exist_ok=True)
        except OSError as e:
            raise uml_kit.unwritable_cache(root, e) from None
        paths = _fetch(debs)
        key = "-".join(os.path.basename(p).split("_")[1] for p in paths[:1])
        tree = _unpack_all(paths, os.path.join(root, f"tree-{KIT_VERSION}-{key}"))
        lib = os.path.join(tree, LIB)
        kit = TestpmdKit(binary=os.path.join(tree, "usr", "bin", "dpdk-testpmd"), libdir=lib,
                         plugins=tuple(os.path.join(lib, "dpdk", "pmds-23.0", p)
                                       for p in PLUGINS))
    _probe(kit)
    return kit


class Testpmd:
    """One interactive testpmd: commands on its stdin, its output to a file."""

    # Those not quit yet: a test that fails between start and quit must not leave one
    # spinning at 100% of a CPU (quit_all, from the tests' teardown).
    live = set()

    def __init__(self, kit, workdir, vdevs, app_args=(), name="pmd"):
        self.out_path = os.path.join(workdir, f"{name}.out")
        self._out = open(self.out_path, "wb")
        self.prefix = f"lg{name}{os.getpid()}"
        self.argv = kit.argv(vdevs, list(app_args), self.prefix)
        self.proc = subprocess.Popen(self.argv, env=kit.env(), stdin=subprocess.PIPE,
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.commands = 0
        Testpmd.live.add(self)

    def output(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def wait_prompt(self, timeout=30):
        """Until testpmd has printed its prompt once more than the commands sent so far
        (the first one: the ports are configured and their links checked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count("testpmd> ") > self.commands:
                return
            if self.proc.poll() is not None:
                raise LauncherError(f"dpdk-testpmd exited ({self.proc.returncode}):\n"
                                    + self.tail())
            time.sleep(0.1)
        raise LauncherError(f"no testpmd prompt in {timeout} s:\n" + self.tail())

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        self.commands += 1
        self.wait_prompt()

    def quit(self, timeout=30):
        """`quit`, wait for the exit; return the whole output."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)
        Testpmd.live.discard(self)
        return self.output()

    def tail(self, lines=30):
        return "\n".join(self.output().splitlines()[-lines:])


def quit_all():
    for pmd in list(Testpmd.live):
        pmd.quit(timeout=10)


# "show port stats all": one block per port.
_STATS = re.compile(r"NIC statistics for port (\d+)\s+#+\s+RX-packets:\s*(\d+)\s+RX-missed:\s*"
                    r"(\d+)\s+RX-bytes:\s*(\d+)\s+RX-errors:\s*(\d+).*?TX-packets:\s*(\d+)\s+"
                    r"TX-errors:\s*(\d+)\s+TX-bytes:\s*(\d+)", re.S)


def port_stats(output):
    """{port: {"rx_packets", "rx_missed", "rx_bytes", "rx_errors", "tx_packets",
    "tx_errors", "tx_bytes"}} from the last `show port stats all` in the output."""
    stats = {}
    for m in _STATS.finditer(output):
        values = [int(v) for v in m.groups()]
        stats[values[0]] = dict(zip(("rx_packets", "rx_missed", "rx_bytes", "rx_errors",
                                     "tx_packets", "tx_errors", "tx_bytes"), values[1:]))
    return stats
