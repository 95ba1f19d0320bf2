"""`lguest run` into a reader that leaves early: quiet, and the guest is gone."""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_into_head_ends_quietly_and_leaves_nothing(uml):
    tmp = tempfile.mkdtemp(prefix="lgh-", dir="/tmp")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lguest", "run", "--timeout", "60", "--",
             "sh", "-c", "while :; do seq 1 2000; done"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, TMPDIR=tmp))
        first = proc.stdout.readline()
        proc.stdout.close()                                  # `| head -1`
        err = proc.stderr.read().decode()
        rc = proc.wait(60)
        assert first == b"1\n"
        assert rc == 141 and "Traceback" not in err, err
        assert os.listdir(tmp) == []                         # boot dir and sockets gone
        leftover = subprocess.run(["pgrep", "-f", f"uml_dir={tmp}"], capture_output=True)
        assert leftover.stdout == b""                        # UML stopped, not waited out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_sigterm_stops_the_guest_and_cleans_up(uml):
    import signal
    import time
    tmp = tempfile.mkdtemp(prefix="lgt-", dir="/tmp")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lguest", "run", "--", "sh", "-c", "echo up; sleep 60"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, TMPDIR=tmp))
        assert proc.stdout.readline() == b"up\n"               # the guest is running
        assert subprocess.run(["pgrep", "-f", f"uml_dir={tmp}"], capture_output=True).stdout
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        err = proc.stderr.read().decode()
        assert rc == 143 and "Traceback" not in err and "terminated" in err, err
        assert time.monotonic() - started < 10                # not the sleep waited out
        assert subprocess.run(["pgrep", "-f", f"uml_dir={tmp}"], capture_output=True).stdout == b""
        assert os.listdir(tmp) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
