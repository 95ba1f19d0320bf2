"""What every section of bench/run shares: tools, caches, the bench kit, medians, RSS.

Nothing built or downloaded here lands in the repository: compiled helpers and the
bench's initramfs live under the kit's cache directory ($LGUEST_CACHE or
~/.cache/lguest-py), in bench/, keyed by a hash of their inputs.
"""

import dataclasses
import hashlib
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lguest.uml import archive, kit as kit_module  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def say(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def cache_dir():
    path = os.path.join(kit_module.cache_dir(), "bench")
    os.makedirs(path, exist_ok=True)
    return path


_apt_updated = False


def ensure_command(command, packages):
    """The path of `command`, installing Debian `packages` with apt-get if it is missing."""
    global _apt_updated
    found = shutil.which(command)
    if found:
        return found
    say(f"{command} is missing: apt-get install {' '.join(packages)}")
    for attempt in range(2):
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages],
                              capture_output=True, text=True,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if done.returncode == 0 or _apt_updated:
            break
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        _apt_updated = True
    found = shutil.which(command)
    if not found:
        raise SystemExit(f"bench: could not install {command}: {done.stderr.strip()[-300:]}")
    return found


def compile_c(source, *, static=False, name=None):
    """Compile bench/<source> (once per content) with gcc -O2; return the binary's path."""
    gcc = ensure_command("gcc", ["gcc", "libc6-dev"])
    path = os.path.join(HERE, source)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read() + repr(static).encode()).hexdigest()[:12]
    out = os.path.join(cache_dir(), f"{name or source[:-2]}-{digest}")
    if not os.path.exists(out):
        argv = [gcc, "-O2", "-Wall", *(["-static"] if static else []), "-o", out + ".tmp", path]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: gcc {source} failed:\n{done.stderr}")
        os.replace(out + ".tmp", out)
    return out


def bench_kit(extra):
    """The lguest kit with `extra` ({guest path: host file}) added to its initramfs.

    The kernel unpacks concatenated (compressed) cpio archives one after the other, so
    the kit's image is left as it is and a second archive with our files is appended:
    no hook in the kit is needed, and the guest is otherwise exactly `lguest run`'s."""
    base = kit_module.ensure_kit()
    h = hashlib.sha256(base.initrd.encode())
    for guest_path, host_path in sorted(extra.items()):
        with open(host_path, "rb") as f:
            h.update(guest_path.encode() + f.read())
    image = os.path.join(cache_dir(), f"initramfs-{h.hexdigest()[:16]}.cpio.gz")
    if not os.path.exists(image):
        cpio = archive.CpioWriter()
        for guest_path, host_path in sorted(extra.items()):
            with open(host_path, "rb") as f:
                cpio.file(guest_path, f.read(), perm=0o755)
        with open(base.initrd, "rb") as f:
            data = f.read() + archive.gzip_bytes(cpio.finish())
        with open(image + ".tmp", "wb") as f:
            f.write(data)
        os.replace(image + ".tmp", image)
    return dataclasses.replace(base, initrd=image)


def busybox_path():
    import glob
    found = glob.glob(os.path.join(kit_module.cache_dir(), "unpacked", "busybox-static_*",
                                   "bin", "busybox"))
    if not found:
        kit_module.ensure_kit()
        return busybox_path()
    return found[0]


def median(values):
    return statistics.median(values)


def rss_kib(pid, exclude=()):
    """Resident KiB of a process, leaving out mappings whose name contains any of
    `exclude` (the guest's RAM, which a vhost-user back-end maps shared)."""
    total = 0
    skip = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                name = line.split(None, 5)[5].strip() if len(line.split(None, 5)) > 5 else ""
                skip = any(e in name for e in exclude)
            elif first == "Rss:" and not skip:
                total += int(line.split()[1])
    return total


def _proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()     # fields from the 3rd (state) on


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def tree_cpu_seconds(pid):
    """User + system CPU seconds of a process, every thread and live descendant, and
    the children it has already reaped: what a back-end has cost so far, even one that
    serves each session in a forked child (ours does)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = _proc_stat(p)
        except OSError:
            continue                       # gone between listing and reading
        # utime, stime, cutime, cstime: fields 14-17, so 11-14 counted from the state.
        total += sum(int(v) for v in fields[11:15])
        todo += _children(p)
    return total / tick


@dataclasses.dataclass
class Row:
    section: str
    metric: str
    ours: float
    reference: float | None
    unit: str
    target: str = ""          # e.g. ">= 0.9x"
    note: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self):
        if self.reference in (None, 0):
            return None
        return self.ours / self.reference

    def holds(self):
        """True/False against the target (">= 0.9x", "<= 10x" on the ratio; "<= 40 MiB"
        on our own figure), None without one."""
        if not self.target:
            return None
        op, value, *unit = self.target.split()
        on_ratio = value.endswith("x")
        measured = self.ratio if on_ratio else self.ours
        if measured is None:
            return None
        limit = float(value.rstrip("x"))
        return measured >= limit if op == ">=" else measured <= limit


def cpu_times(stat="/proc/stat"):
    """(steal, total) jiffies of all CPUs: steal is time the hypervisor gave to other
    guests while ours wanted to run."""
    try:
        with open(stat) as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


class StealMeter:
    """The share of CPU time stolen by the hypervisor while a section ran. On a shared
    VM (this one) a run with much steal is slower for reasons outside both sides, and
    more so for the side that needs more CPU: the table says how much there was."""

    def __init__(self):
        self.shares = {}

    def measure(self, name, run):
        before = cpu_times()
        try:
            return run()
        finally:
            after = cpu_times()
            if before and after and after[1] > before[1]:
                self.shares[name] = (after[0] - before[0]) / (after[1] - before[1])

    def line(self):
        if not self.shares:
            return ""
        parts = ", ".join(f"{name} {share:.0%}" for name, share in self.shares.items())
        return f"Steal (CPU time the hypervisor gave to other guests), per section: {parts}\n"


def fmt(value):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows):
    """A markdown table: what we measured, the reference, the ratio, the target."""
    head = ["section", "metric", "ours", "reference", "unit", "ours/ref", "target", "holds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        holds = r.holds()
        lines.append("| " + " | ".join([
            r.section, r.metric + (f" ({r.note})" if r.note else ""), fmt(r.ours),
            fmt(r.reference), r.unit, "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "", {None: "", True: "yes", False: "NO"}[holds]]) + " |")
    return "\n".join(lines)
