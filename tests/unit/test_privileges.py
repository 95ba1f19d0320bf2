"""Privilege dropping (as root, in a subprocess) and re-exec without leaked fds."""

import ast
import json
import os
import pwd
import subprocess
import sys
import textwrap

import pytest

from lguest import privileges
from lguest.errors import LauncherError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code, *args, timeout=30):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return result


def unprivileged_user():
    for name in ("nobody", "daemon"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry
    return None


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

DROP = """
    import json, os, sys
    from lguest.privileges import drop
    jail, outside, user = sys.argv[1:4]
    kept = os.open(outside, os.O_RDONLY)               # opened before the drop
    drop(chroot=jail, username=user)
    report = {"resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
              "cwd": os.getcwd(), "kept": os.pread(kept, 5, 0).decode()}
    try:
        open(outside).close()
        report["outside"] = "opened"
    except OSError as e:
        report["outside"] = type(e).__name__
    try:
        os.setuid(0)
        report["setuid0"] = "worked"
    except OSError as e:
        report["setuid0"] = type(e).__name__
    report["inside"] = open("/inside.txt").read()
    print(json.dumps(report))
"""


@needs_root
def test_drop_chroots_and_becomes_the_user_for_good(tmp_path):
    user = unprivileged_user()
    if user is None:
        pytest.skip("no unprivileged user (nobody, daemon) on this host")
    jail = tmp_path / "jail"
    jail.mkdir()
    (jail / "inside.txt").write_text("in the jail")
    outside = tmp_path / "outside.txt"
    outside.write_text("hello from outside")
    result = run_python(DROP, jail, outside, user.pw_name)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resuid"] == [user.pw_uid] * 3 and report["resgid"] == [user.pw_gid] * 3
    assert 0 not in report["groups"] or user.pw_gid == 0
    assert report["cwd"] == "/" and report["inside"] == "in the jail"
    assert report["outside"] in ("FileNotFoundError", "PermissionError")
    assert report["setuid0"] == "PermissionError"
    assert report["kept"] == "hello"


@needs_root
def test_chroot_alone_keeps_root(tmp_path):
    (tmp_path / "marker").write_text("")
    result = run_python("""
        import os, sys
        from lguest.privileges import drop
        drop(chroot=sys.argv[1])
        print(os.getcwd(), os.listdir("/"), os.geteuid())
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "/" and result.stdout.split()[-1] == "0"
    assert "'marker'" in result.stdout


def test_unknown_user_and_failed_chroot_are_launcher_errors(tmp_path):
    with pytest.raises(LauncherError, match="incorrect username"):
        privileges.drop(username="no-such-user-for-lguest")
    with pytest.raises(LauncherError, match='chroot\\(".*no-such-dir"\\) failed'):
        privileges.drop(chroot=str(tmp_path / "no-such-dir"))


def test_dropping_without_root_fails_cleanly():
    user = unprivileged_user()
    if user is None:
        pytest.skip("no unprivileged user on this host")
    # First become the user in a child, then ask to drop to root: a clear error.
    result = run_python("""
        import sys
        from lguest.privileges import drop
        from lguest.errors import LauncherError
        drop(username=sys.argv[1]) if __import__("os").geteuid() == 0 else None
        try:
            drop(username="root")
        except LauncherError as e:
            print("LauncherError:", e)
    """, user.pw_name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LauncherError:") and "failed for root" in result.stdout


REEXEC = """
    import os, socket, sys
    from lguest.privileges import reexec
    marker = open(sys.argv[1], "w")                     # Python's own: close-on-exec
    r, w = os.pipe()
    sock = socket.socket()
    leaky = os.open(sys.argv[1], os.O_RDONLY)
    os.set_inheritable(leaky, True)                     # someone asked for inheritance
    lister = ("import os; fds = os.listdir('/proc/self/fd');"
              "print({int(f): os.readlink('/proc/self/fd/' + f) for f in fds"
              " if os.path.exists('/proc/self/fd/' + f)})")
    reexec(["--ignored-by-c"], command=[sys.executable, "-c", lister])
"""


def test_reexec_leaks_no_file_descriptors(tmp_path):
    marker = tmp_path / "marker"
    result = run_python(REEXEC, marker)
    assert result.returncode == 0, result.stderr
    fds = ast.literal_eval(result.stdout)          # a dict literal printed by the child
    leaked = {fd: target for fd, target in fds.items()
              if fd > 2 and (target == str(marker) or target.startswith(("pipe:", "socket:")))}
    assert not leaked, fds
    assert {0, 1, 2} <= set(fds)


def test_reexec_runs_python_dash_m_lguest_with_the_remembered_arguments():
    result = run_python("""
        from lguest import privileges
        privileges.remember_argv(["--version"])
        privileges.reexec()
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lguest-py ")


def test_reexec_failure_is_a_launcher_error():
    with pytest.raises(LauncherError, match="Could not exec /no/such/python"):
        privileges.reexec([], command=["/no/such/python"])
