"""How a guest ends, on a real lguest host: power-off, panic, reboot, ^C^C^C; two at once.

Seed 000 ends with errx(1, "%s", reason) when the guest dies (lguest_user.c's read
fails with ENOENT and the next read gives the reason), re-executes itself on a reboot
(ERESTART), and stops on three ^C typed within a second. Two launchers run together:
one boots the ELF vmlinux and powers off, the other boots the bzImage and panics; each
waits on its console until both are up, which proves they ran at the same time. A third
reboots once (the launcher re-executes itself: same pid, a second boot) and is then
stopped with ^C^C^C. Skips, saying why, off a real lguest host (lguest_host_guests.py).
"""

import os
import subprocess
import time

import pytest

from lguest_host_guests import Launcher, guest_initrd, launcher_args, need_real_lguest

WAIT_THEN = """
echo "UP:$(uname -r)"
read line
echo "TOLD:$line"
{then}
echo NOT-GONE
sleep 120
"""

REBOOT_SCRIPT = """
echo WAITING
read line
if [ "$line" = reboot ]; then reboot -f; fi
echo "NOT-REBOOTING:$line"
sleep 120
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The ELF vmlinux powering off and the bzImage panicking, side by side."""
    need_real_lguest("LGUEST_VMLINUX")
    tmp = tmp_path_factory.mktemp("pair")
    off = guest_initrd(tmp / "off.cpio.gz", WAIT_THEN.format(then="poweroff -f"))
    panic = guest_initrd(tmp / "panic.cpio.gz", WAIT_THEN.format(then="exit 3"))
    runs = {"off": Launcher(launcher_args(f"--initrd={off}", kernel=os.environ["LGUEST_VMLINUX"])),
            "panic": Launcher(launcher_args(f"--initrd={panic}"))}
    try:
        # Neither guest can finish before it is told to, so both being up at once
        # proves two guests ran on the one /dev/lguest at the same time.
        both_up = all(run.wait_for("UP:") for run in runs.values())
        alive = [run.proc.poll() is None for run in runs.values()]
        for run in runs.values():
            run.send(b"go\n")
        for run in runs.values():
            run.status = run.finish()
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.finish()
    runs["off"].both_up = both_up and all(alive)
    return runs


@pytest.fixture(scope="module")
def rebooted(tmp_path_factory):
    """A guest that reboots once, then is stopped with ^C^C^C."""
    need_real_lguest()
    tmp = tmp_path_factory.mktemp("reboot")
    initrd = guest_initrd(tmp / "reboot.cpio.gz", REBOOT_SCRIPT)
    run = Launcher(launcher_args(f"--initrd={initrd}"))
    run.pids = []
    try:
        if run.wait_for("WAITING"):
            run.pids.append(_launcher_pid_of(run))
            run.send(b"reboot\n")
        if run.wait_for("WAITING", times=2):
            run.pids.append(_launcher_pid_of(run))
            run.presses = press_ctrl_c_three_times(run)
        run.status = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    return run


def press_ctrl_c_three_times(run, attempts=3):
    """Type ^C three times, as a person would: each its own read, 0.3 s apart (the seed
    counts a read of exactly one ^C, and three within a second stop it). Under TCG the
    guest may not have put its next input buffer back in time, and then two ^C arrive
    in one read, which (as in the seed) starts the count again: so try again, a few
    times. Returns how many tries it took (None: it never stopped)."""
    for attempt in range(1, attempts + 1):
        for _ in range(3):
            run.send(b"\x03")
            time.sleep(0.3)
        try:
            run.proc.wait(timeout=10)
            return attempt
        except subprocess.TimeoutExpired:
            time.sleep(2)                 # let the count's window pass
    return None


def _launcher_pid_of(run):
    """Our child's pid and what it runs now (a re-exec keeps the pid)."""
    with open(f"/proc/{run.pid}/cmdline", "rb") as f:
        return run.pid, f.read().split(b"\0")[1:3]


def test_two_guests_run_at_once(pair):
    assert pair["off"].both_up, pair["off"].report() + pair["panic"].report()


def test_an_elf_vmlinux_boots(pair):
    assert pair["off"].value("UP"), pair["off"].report()      # uname -r of the guest
    assert pair["off"].value("TOLD") == "go", pair["off"].report()


def test_power_off_ends_with_status_1_and_the_guests_reason(pair):
    # The kernel's LHCALL_SHUTDOWN handler says kill_guest(cpu, "CRASH: %s", msg), so
    # even a clean power-off reads "CRASH: Power down", and the seed printed it so.
    run = pair["off"]
    assert run.status == 1, run.report()
    assert run.err.decode().strip().splitlines()[-1] == "lguest: CRASH: Power down", run.report()
    assert "NOT-GONE" not in run.out


def test_a_panic_ends_with_status_1_and_the_panic_message(pair):
    run = pair["panic"]
    assert run.status == 1, run.report()
    last = run.err.decode().strip().splitlines()[-1]
    assert last.startswith("lguest: CRASH: Attempted to kill init!"), run.report()
    assert "exitcode=0x00000300" in last, run.report()     # exit 3, as the /init did


def test_no_traceback_when_a_guest_dies(pair):
    for run in pair.values():
        assert "Traceback" not in run.err.decode(), run.report()


def test_reboot_re_executes_the_launcher(rebooted):
    assert rebooted.count("WAITING") == 2, rebooted.report()
    (pid1, cmd1), (pid2, cmd2) = rebooted.pids
    assert pid1 == pid2 and cmd1 == cmd2 == [b"-m", b"lguest"], rebooted.report()
    assert "NOT-REBOOTING" not in rebooted.out


def test_ctrl_c_three_times_stops_the_launcher(rebooted):
    assert rebooted.presses is not None, rebooted.report()
    assert rebooted.status == 130, rebooted.report()
    assert "Traceback" not in rebooted.err.decode(), rebooted.report()
    assert "NOT-REBOOTING" not in rebooted.out
