"""One boot, many commands (L:821, L:822): a Guest keeps its UML between run()s.

Uses the plugin's `lguest_guest` fixture (lguest.testing.plugin), as a third-party test
would. Each test boots once (about 1.5 s here) and then runs commands in milliseconds.
"""

import hashlib
import time

import pytest

from lguest.uml.guest import GuestFailed, GuestTimeout

pytestmark = pytest.mark.hw("uml")


def test_commands_share_one_boot_but_not_their_state(lguest_guest):
    g = lguest_guest
    first = g.run("echo out; echo err >&2; cd /tmp && touch left-in-tmp; "
                  "cd /root && touch left-in-root; export LEAK=1; exit 5")
    assert (first.returncode, first.stdout, first.stderr) == (5, "out\n", "err\n")
    second = g.run("pwd; ls -A; echo \"leak=${LEAK-unset}\"; env | sort | cut -d= -f1; "
                   "ls /tmp/left-in-tmp")
    lines = second.stdout.splitlines()
    assert second.returncode == 0, second.stderr
    assert lines[0] == "/root"                       # a fresh, empty working directory
    assert lines[1] == "leak=unset"                  # and a fresh environment
    assert set(lines[2:-1]) == {"HOME", "PATH", "PWD", "SHLVL"}
    assert lines[-1] == "/tmp/left-in-tmp"           # /tmp does carry over, as documented
    assert g.boots == 1


def test_what_a_command_leaves_running_is_gone_before_the_next(lguest_guest):
    g = lguest_guest
    started = g.run("sleep 300 & echo $!")
    assert started.returncode == 0
    pid = started.stdout.strip()
    check = g.run(f"kill -0 {pid} 2>/dev/null && echo alive || echo gone")
    assert check.stdout == "gone\n"


def test_output_is_streamed_and_nothing_of_the_framing_shows(lguest_guest):
    chunks = []
    r = lguest_guest.run("for i in 1 2 3; do echo line$i; sleep 0.2; done; printf '<<lguest-e'",
                         on_stdout=chunks.append)
    assert r.stdout == "line1\nline2\nline3\n<<lguest-e"
    assert b"".join(chunks).decode() == r.stdout
    assert len(chunks) >= 3                          # as they came, not at the end


def test_a_command_that_kills_the_guest_is_reported_and_the_next_run_reboots(lguest_guest):
    g = lguest_guest
    assert g.run("true").returncode == 0
    with pytest.raises(GuestFailed, match="without reporting|panic"):
        g.run("poweroff -f")
    with pytest.raises(GuestFailed, match="Kernel panic"):
        g.run("echo c > /proc/sysrq-trigger")
    again = g.run("echo back")
    assert again.stdout == "back\n" and g.boots == 3


def test_a_hung_command_times_out_and_the_next_run_reboots(lguest_guest):
    g = lguest_guest
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="timed out after 2 s"):
        g.run("sleep 60", timeout=2)
    assert time.monotonic() - start < 6
    assert g.run("echo ok").stdout == "ok\n" and g.boots == 2


@pytest.fixture
def lguest_guest_options(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    # These tests pin down the busybox agent's own semantics (an empty /root, PATH and
    # HOME only, its poweroff): the initramfs root. The host root's: test_uml_host_root.
    return {"block": [str(disk)], "root": "initramfs"}


def test_block_writes_reach_the_file_when_run_returns(lguest_guest, tmp_path):
    g = lguest_guest
    disk = tmp_path / "disk.img"
    r = g.run("echo hello-from-the-guest | dd of=/dev/vda bs=512 seek=3 2>/dev/null")
    assert r.returncode == 0, r.stderr
    assert disk.read_bytes()[3 * 512:3 * 512 + 22] == b"hello-from-the-guest\n\x00"
    r = g.run("md5sum < /dev/vda")
    assert r.stdout.split()[0] == hashlib.md5(disk.read_bytes()).hexdigest()


@pytest.mark.lguest_guest(console=True)
def test_console_guest_frames_output_through_hvc0_too(lguest_guest):
    g = lguest_guest
    for word in ("one", "two"):
        r = g.run(f"echo {word}; echo to-stderr >&2")
        assert (r.stdout, r.stderr) == (f"{word}\n", "to-stderr\n")
    assert g.boots == 1


def test_any_command_text_arrives_as_written(lguest_guest):
    weird = "  lead \\t \\\\ \\c \\0101 %s %b 'q' \"dq\" $HOME `x` ünï \t tab, trailing  "
    command = f"cat <<'END'\n{weird}\n{weird}\nEND"
    r = lguest_guest.run(command)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{weird}\n{weird}\n"
    long = lguest_guest.run("echo " + "x" * 50000 + " | wc -c")
    assert long.stdout.strip() == "50001"


def test_an_overlong_command_is_refused_and_the_guest_stays_up(lguest_guest):
    from lguest.errors import LauncherError
    with pytest.raises(LauncherError, match="command too long"):
        lguest_guest.run("echo " + "y" * 70000)
    assert lguest_guest.run("echo still").stdout == "still\n"
    assert lguest_guest.boots == 1
