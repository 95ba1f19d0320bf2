"""`lguest` command-line rough edges: bad sizes and timeouts refused in one line, a reader
that leaves early ends us quietly."""

import os
import subprocess
import sys

import pytest

from lguest.uml import cli as run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def refused(capsys, argv):
    with pytest.raises(SystemExit) as e:
        run_cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("mem", ["0", "-5", "16", "40", "99999999", "lots"])
def test_run_refuses_memory_sizes_that_cannot_boot(capsys, mem):
    line = refused(capsys, ["--mem", mem, "--", "true"])
    assert "--mem" in line and ("MiB" in line or "number" in line)


def test_run_accepts_the_smallest_memory_that_boots():
    args = run_cli.parser().parse_args(["--mem", str(run_cli.MIN_MEM_MB), "--", "true"])
    assert args.mem == run_cli.MIN_MEM_MB


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_run_refuses_timeouts_that_are_not_positive(capsys, timeout):
    line = refused(capsys, ["--timeout", timeout, "--", "true"])
    assert "--timeout" in line


def test_run_refuses_an_address_without_a_network_card(capsys):
    line = refused(capsys, ["--ip", "10.0.0.2/24", "--", "true"])
    assert "--ip" in line and "--net" in line


def test_tour_into_a_reader_that_leaves_early_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "tour"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()                      # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141
    assert first and "Traceback" not in err and "BrokenPipe" not in err, err
