"""The worked examples of docs/library.md run, as a user would run them: each file is
a script that runs its own tests (example (c), which boots UML, is run by
tests/hw/test_examples_hw.py)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("example, tests", [("echo_device.py", 4), ("record_replay.py", 2)])
def test_example_runs_and_its_tests_pass(example, tests, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", example)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tests} passed" in done.stdout
    assert "warning" not in done.stdout.lower()


def test_the_docs_show_each_example_file():
    with open(os.path.join(ROOT, "docs", "library.md")) as f:
        text = f.read()
    for name in ("echo_device.py", "record_replay.py", "test_guest_command.py"):
        assert f"examples/{name}" in text
