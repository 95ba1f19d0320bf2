"""bench/run section lguest-host: our launcher next to the seed's C launcher on a real
lguest host (Linux 4.9.154 i386 under qemu-system-i386 TCG, from issue 16's kit).

One host is booted; inside it lguest_host_side.py runs both launchers, alternating, on
the same guest kernel (the host's own bzImage), initrd and arguments: boot to /init and
to exit, hvc0 output, block read and write. The seed is compiled here, at bench time
(seed_launcher.py). Figures are medians of the runs; the machine is shared, so read the
ratios. `python bench/lguest_host.py [RUNS]` runs this section alone.
"""

import json
import os
import statistics
import time

from common import HERE, Row, say

SECTION = "lguest-host"
HOST_MEM_MB = 512
HOST_TIMEOUT = 5400           # seconds for the whole host run


def _kit():
    """issue 16's kit and QEMU runner, or SystemExit saying why this section cannot run."""
    try:
        from lguest.lguest_host import kit, qemu
    except ImportError as e:
        raise SystemExit(f"the lguest-host kit (lguest.lguest_host, issue 16) is missing: {e}")
    from lguest.errors import LauncherError
    try:
        kernel = kit.host_kernel()
    except LauncherError as e:
        raise SystemExit(f"no lguest host kernel: {e}")
    return kit, qemu, kernel


def host_results(runs):
    """Boot the host once and return the BENCH-RESULT records its side printed."""
    import seed_launcher
    kit, qemu, kernel = _kit()
    from lguest.lguest_host.runner import host_init
    seed = seed_launcher.build()
    files = {"/bench/lguest-seed": seed, "/lguest-host/bzImage": kernel,
             "/bench/lguest_host_side.py": os.path.join(HERE, "lguest_host_side.py"),
             "/bench/lguest_traps.py": os.path.join(HERE, "lguest_traps.py")}
    initramfs = kit.build_initramfs(host_init(f"python3 /bench/lguest_host_side.py {runs}",
                                                  what="the bench"), files,
                                    project=True, pip_packages=("pyelftools",))
    records, pending = [], b""

    def output(data):
        nonlocal pending
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("BENCH-RESULT "):
                record = json.loads(line.split(" ", 1)[1])
                records.append(record)
                say(f"{SECTION}: {_summary(record)}")
            elif line.startswith(("lguest-host:", "Traceback", "BENCH-")) or "Error" in line:
                say(f"{SECTION}: host: {line[:200]}")

    started = time.monotonic()
    try:
        status = qemu.run_host(initramfs, kernel=kernel, mem_mb=HOST_MEM_MB,
                               timeout=HOST_TIMEOUT, output=output)
    finally:
        os.unlink(initramfs)
    say(f"{SECTION}: host finished with status {status} in {time.monotonic() - started:.0f} s")
    return records


def _summary(record):
    if "counts" in record:
        c = record["counts"]
        return (f"counted run of ours: {c['traps']} traps, {c['getreg']} GETREG, "
                f"{c['setreg']} SETREG, exit {record['run']['exit']:.1f} s")
    if "python" in record:
        p = record["python"]
        return (f"Python under TCG: os.pread {p['pread_us']:.1f} us, os.pwrite {p['pwrite_us']:.1f} us, "
                f"empty call {p['call_us']:.2f} us; trap stream ours {p['stream_ours_us']:.0f} us, "
                f"syscall floor {p['stream_floor_us']:.0f} us a trap")
    if "error" in record:
        return f"{record['error']} failed: {record.get('stderr', '')[-300:]}"
    init = record["marks"].get("BENCH-INIT", (None,))[0]
    text = (f"{record['kind']} run {record['round']} {record['which']}: /init at "
            f"{'-' if init is None else f'{init:.2f} s'}, exit {record['exit']:.2f} s, "
            f"status {record['status']}")
    if record.get("io"):
        io = record["io"]
        text += (f"; hvc0 {io['hvc_Bps'] / 1024:.1f} KiB/s, read {io['read_MBps']:.1f} MB/s, "
                 f"write {io['write_MBps']:.1f} MB/s")
    return text


def rows_from(records):
    def values(which, pick, kinds=("boot", "io")):
        out = []
        for r in records:
            # A run counts only if its guest got to /init (a launcher that failed early
            # would otherwise look fast).
            if r.get("which") == which and r.get("kind") in kinds and "BENCH-INIT" in r["marks"]:
                v = pick(r)
                if v is not None:
                    out.append(v)
        return out

    def row(metric, pick, unit, target, kinds=("boot", "io"), higher=True, scale=1.0):
        ours, c = values("ours", pick, kinds), values("c", pick, kinds)
        if not ours or not c:
            return Row(SECTION, metric + " (no figure: a run failed)", 0, None, unit)
        note = (f"median of {len(ours)}; ours {min(ours) * scale:.3g}-{max(ours) * scale:.3g}, "
                f"C {min(c) * scale:.3g}-{max(c) * scale:.3g}")
        return Row(SECTION, metric, statistics.median(ours) * scale,
                   statistics.median(c) * scale, unit, target, note, higher_is_better=higher)

    init = lambda r: r["marks"].get("BENCH-INIT", (None,))[0]  # noqa: E731
    io = lambda key: (lambda r: r["io"][key] if r.get("io") else None)  # noqa: E731
    rows = [row("start -> guest /init", init, "s", "<= 1.5x", higher=False),
            row("start -> launcher exit (boot, poweroff)", lambda r: r["exit"], "s", "<= 1.5x",
                kinds=("boot",), higher=False)]
    counted = next((r for r in records if "counts" in r), None)
    if counted:
        c = counted["counts"]
        traps = c["traps"]
        rows.append(Row(SECTION, "traps per boot (ours, counted run; same guest for C)", traps,
                        None, "traps",
                        note=f"{c['getreg'] / traps:.2f} GETREG, {c['setreg'] / traps:.2f} "
                             "SETREG a trap"))
        rows.append(row("cost per trap: (start -> exit) / traps", lambda r: r["exit"] / traps,
                        "us", "", kinds=("boot",), higher=False, scale=1e6))
    rows += [row("hvc0 output", io("hvc_Bps"), "KiB/s", ">= 0.7x", kinds=("io",), scale=1 / 1024),
             row(f"block read {32} MiB (dd bs=1M)", io("read_MBps"), "MB/s", ">= 0.8x",
                 kinds=("io",)),
             row(f"block write {16} MiB + fsync (dd bs=1M)", io("write_MBps"), "MB/s", ">= 0.8x",
                 kinds=("io",))]
    return rows


def profile_lines(records):
    counted = next((r for r in records if "counts" in r), None)
    if not counted:
        return []
    groups, traps = counted["counts"]["profile"], counted["counts"]["traps"]
    total = sum(groups.values()) or 1
    lines = [f"Profile of ours in the host (cProfile, counted run, {traps} traps, "
             f"{total / traps * 1e6:.0f} us/trap under the profiler):"]
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds / traps * 1e6:7.1f} us  {name}")
    return lines


def measure(runs, quick):
    records = host_results(1 if quick else max(1, min(runs, 3)))
    for line in profile_lines(records):
        say(f"{SECTION}: {line}")
    return rows_from(records)


if __name__ == "__main__":
    import argparse
    from common import table
    p = argparse.ArgumentParser(description="the lguest-host bench section alone: ours vs "
                                "the seed's C launcher on a real lguest host")
    p.add_argument("runs", nargs="?", type=int, default=3,
                   help="boots of each launcher, alternating (1..3; default 3)")
    args = p.parse_args()
    if args.runs < 1:
        p.error("runs must be at least 1")
    print(table(measure(args.runs, False)))
