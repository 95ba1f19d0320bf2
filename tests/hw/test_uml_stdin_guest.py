"""stdin reaches the command in the guest, EOF included (L:823), through `lguest run`
and Guest.run, and a terminal makes `lguest run -- sh` interactive."""

import hashlib
import os
import pty
import select
import signal
import subprocess
import sys
import time

from lguest.uml.guest import Guest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LGUEST_RUN = [sys.executable, "-m", "lguest", "run", "--timeout", "120", "--"]


def lguest_run(args, stdin):
    return subprocess.run(LGUEST_RUN + args, cwd=ROOT, stdin=stdin, capture_output=True,
                          timeout=180)


def test_seq_into_wc_counts_every_line_and_sees_eof(uml):
    seq = subprocess.Popen(["seq", "1000"], stdout=subprocess.PIPE)
    r = lguest_run(["wc", "-l"], seq.stdout)
    seq.wait()
    assert (r.returncode, r.stdout.strip()) == (0, b"1000"), r.stderr


def test_echo_into_cat(uml):
    echo = subprocess.Popen(["echo", "hi"], stdout=subprocess.PIPE)
    r = lguest_run(["cat"], echo.stdout)
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr


def test_a_command_that_does_not_read_is_not_held_up_by_an_endless_stdin(uml):
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        started = time.monotonic()
        r = lguest_run(["echo", "done"], yes.stdout)
        assert (r.returncode, r.stdout) == (0, b"done\n"), r.stderr
        assert time.monotonic() - started < 120
    finally:
        yes.kill()
        yes.wait()


def test_stdin_from_devnull_is_empty(uml):
    r = lguest_run(["wc", "-c"], subprocess.DEVNULL)
    assert (r.returncode, r.stdout.strip()) == (0, b"0"), r.stderr


def test_guest_run_takes_bytes_and_files_in_one_booted_guest(uml, tmp_path):
    data = os.urandom(1 << 20)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    with Guest(kit=uml, timeout=120) as g:
        assert g.run("cat", stdin=b"one\ntwo\n").stdout == "one\ntwo\n"
        assert g.run("wc -c", stdin=b"").stdout.strip() == "0"
        assert g.run("cat", stdin=b"binary\0\xff\n", text=False).stdout == b"binary\0\xff\n"
        assert g.run("cat").stdout == ""              # no stdin: /dev/null, as before
        assert g.boots == 1                           # small stdins: one warm guest
        with open(path, "rb") as f:
            r = g.run("md5sum", stdin=f)
        assert r.stdout.split()[0] == hashlib.md5(data).hexdigest()
        # More than the guest's tty buffer may have left UML's tty4 dead (L:824): the
        # next command with a stdin gets a new guest, and its stdin arrives.
        assert g.run("echo warm").stdout == "warm\n" and g.boots == 1
        assert g.run("cat", stdin=b"after\n").stdout == "after\n"
        assert g.boots == 2


def test_a_large_stdin_through_md5sum_matches(uml):
    data = os.urandom(8 << 20)
    with Guest(kit=uml, timeout=240) as g:
        r = g.run("md5sum", stdin=data)
    assert r.stdout.split()[0] == hashlib.md5(data).hexdigest()


def read_until(fd, wanted, timeout=90):
    got, deadline = b"", time.monotonic() + timeout
    while wanted not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:                  # EIO: the other side closed
                break
            if not chunk:
                break
            got += chunk
    return got


def test_an_interactive_sh_on_a_terminal(uml):
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(LGUEST_RUN + ["sh"], cwd=ROOT, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    try:
        assert b"# " in read_until(master, b"# "), "no prompt from the guest's sh"
        os.write(master, b"echo $((6*7))\r")
        assert b"42" in read_until(master, b"42\r\n")
        os.write(master, b"stty size\r")
        assert b"33 101" in read_until(master, b"33 101")      # our window size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)                       # as the terminal would
        deadline, size = time.monotonic() + 30, b""
        while b"40 120" not in size and time.monotonic() < deadline:
            time.sleep(0.5)                                     # the guest sets it soon after
            os.write(master, b"stty size\r")
            size = read_until(master, b"\r\n/root # ", timeout=10)
        assert b"40 120" in size                                # a resize reaches the guest
        os.write(master, b"sleep 60; echo slept\r")
        time.sleep(1)
        interrupted = time.monotonic()
        os.write(master, b"\x03")                                # ^C: the guest's SIGINT
        os.write(master, b"echo after-$((1+1))\r")
        assert b"after-2" in read_until(master, b"after-2\r\n")
        assert time.monotonic() - interrupted < 30                 # not the sleep's 60 s
        os.write(master, b"exit 3\r")
        assert proc.wait(60) == 3
        assert termios.tcgetattr(slave) == before               # our terminal restored
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
