"""bench/run: every benchmark of lguest-py next to its reference, one table of ratios.

    bench/run [--quick] [--runs N] [--only blk,boot,...] [--results]

Sections (each a module in bench/): blk (vhost-user-blk vs qemu-storage-daemon),
blk-pairs (the same two as two disks of one guest, random reads in alternating slices),
blk-fe (the same two driven by our Python front-end, no guest, 2 queues really used),
boot (`lguest run -- true` vs plain UML), console (virtio console vs UML's own),
net (vhost-user net over a tap vs UML's tuntap), fs (our virtio-fs vs virtiofsd),
fs-pairs (the same two mounted in one guest, each phase on both in turns),
kvm (Python exit round trips vs a C loop; ioeventfd kicks), sim (fake backend driver
operations), memory (RSS beyond guest RAM; measured during blk and boot), lguest-host
(our launcher vs the seed's C launcher on a real lguest host under QEMU; runs when the
lguest host kernel is there, says why not otherwise).
--results rewrites bench/RESULTS.md's latest table with this run's.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HERE, ROOT, Row, StealMeter, say, table  # noqa: E402

SECTIONS = ("blk", "blk-pairs", "blk-fe", "boot", "console", "net", "fs", "fs-pairs", "kvm", "sim",
            "memory", "lguest-host")
MODULES = {"lguest-host": "lguest_host", "blk-fe": "blk_frontend", "blk-pairs": "blk_pairs",
           "fs-pairs": "fs_pairs"}      # section name -> bench module, where they differ
# Sections whose run is a round of a few seconds in one guest get more of them: one
# round's ratio spreads 0.2x-3x on this kind of machine, even between two identical
# servers (docs/virtiofs.md, "A fresh machine"), so five cannot place a median near a
# target. --runs N gives these N times as many rounds or pairs.
ROUNDS_PER_RUN = {"fs-pairs": 4, "blk-pairs": 2}


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    kvm = "KVM-PVM" if os.path.exists("/sys/module/kvm_pvm") else "KVM" if os.path.exists("/dev/kvm") else "no KVM"
    return (f"{model}, {os.cpu_count()} cores, {mem_kb // 1024} MiB RAM, Linux {platform.release()}, "
            f"{kvm}, Python {platform.python_version()}")


def commit():
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, 3 runs (about 2 minutes)")
    p.add_argument("--runs", type=int, help="runs per measurement (default 5, --quick 3)")
    p.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--results", action="store_true", help="write the table into bench/RESULTS.md")
    args = p.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    wanted = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {', '.join(sorted(unknown))}")
    started = time.monotonic()
    rows, rss = [], {}
    steal = StealMeter()
    if "blk" in wanted or "memory" in wanted:
        import blk
        blk_rows, peaks, _ = steal.measure("blk", lambda: blk.measure(runs, args.quick))
        if "blk" in wanted:
            rows += blk_rows
        rss["backend"] = peaks
    if "boot" in wanted or "memory" in wanted:
        import boot
        boot_rows, rss["launcher"] = steal.measure("boot", lambda: boot.measure(runs, args.quick))
        if "boot" in wanted:
            rows += boot_rows
    for name in ("blk-pairs", "blk-fe", "console", "net", "fs", "fs-pairs", "kvm", "sim",
                 "lguest-host"):
        if name not in wanted:
            continue
        try:
            module = __import__(MODULES.get(name, name))
            rows += steal.measure(name, lambda: module.measure(runs * ROUNDS_PER_RUN.get(name, 1),
                                                                 args.quick))
        except (Exception, SystemExit) as e:    # one broken section must not lose the rest
            say(f"{name}: section failed: {e!r}")
            rows.append(Row(name, f"section failed: {str(e)[:120]}", 0, None, "", ""))
    if "memory" in wanted:
        ours, qsd = rss["backend"]["ours"] / 1024, rss["backend"]["qsd"] / 1024
        rows.append(Row("memory", "vhost-user-blk back-end process, peak RSS minus guest RAM",
                        ours, qsd, "MiB", "<= 40 MiB", "ref: qemu-storage-daemon",
                        higher_is_better=False))
        rows.append(Row("memory", "`lguest run --block` launcher, peak RSS minus guest RAM",
                        rss["launcher"] / 1024, qsd, "MiB", "<= 40 MiB",
                        "ref: qemu-storage-daemon", higher_is_better=False))
    elapsed = time.monotonic() - started
    command = "bench/run" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = (f"{table(rows)}\n\nMachine: {machine()}\n{steal.line()}Command: `{command}` at commit "
            f"{commit()}, {time.strftime('%Y-%m-%d %H:%M')}, took {elapsed:.0f} s\n")
    print(text)
    if args.results:
        write_results(text)
    return 0


def write_results(text):
    """Replace the part of RESULTS.md between the 'latest' markers with this run."""
    path = os.path.join(HERE, "RESULTS.md")
    begin, end = "<!-- latest: begin -->", "<!-- latest: end -->"
    old = open(path).read() if os.path.exists(path) else f"# Results\n\n{begin}\n{end}\n"
    if begin not in old:
        old += f"\n{begin}\n{end}\n"
    head, _, rest = old.partition(begin)
    _, _, tail = rest.partition(end)
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text}{end}{tail}")
    say(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
