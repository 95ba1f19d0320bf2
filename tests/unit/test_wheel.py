"""`pip wheel .` gives a wheel with the `lguest` command and the pytest plugin, and the
wheel installed into a fresh venv runs an example from outside the source tree.

Offline: the wheel is built without build isolation (the venv's own setuptools) and
installed without dependencies; the fresh venv borrows this venv's site-packages
(pytest, pyelftools) through a .pth line, after its own, so `lguest` comes from the
wheel. About 10-20 s."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(argv, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, **kw)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    try:
        import setuptools
    except ImportError:
        pytest.skip("no setuptools in this venv to build the wheel offline")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; pyproject.toml needs >= 77")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "lguest"), src / "lguest",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(src)])
    (path,) = out.glob("lguest-*.whl")
    return path


def test_the_wheel_has_the_command_the_plugin_and_type_marker(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points).decode()
    assert {"lguest/testing/plugin.py", "lguest/py.typed", "lguest/uml/agent.py"} <= names
    assert "[pytest11]\nlguest = lguest.testing.plugin" in text
    assert "[console_scripts]\nlguest = lguest.cli:main" in text
    assert not [n for n in names if n.startswith(("tests/", "examples/", "bench/"))]


def test_installed_wheel_runs_an_example_outside_the_source_tree(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(purelib.strip(), "borrowed.pth"), "w") as f:
        f.write("\n".join(sorted(borrowed)) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)])
    project = tmp_path / "their-project"
    project.mkdir()
    shutil.copy(os.path.join(ROOT, "examples", "record_replay.py"), project)
    where = run([str(python), "-c", "import lguest; print(lguest.__file__)"], cwd=project)
    assert where.startswith(str(venv)), where
    assert "lguest run" in run([str(venv / "bin" / "lguest"), "run", "--help"], cwd=project)
    out = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "record_replay.py"],
              cwd=project)
    assert "2 passed" in out
