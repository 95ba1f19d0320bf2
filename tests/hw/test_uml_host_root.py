"""`lguest run` on the host's own files (L:886): real UML, our virtio-fs back-end.

By default the guest's root is the host's root, read-only, the current directory is
writable at the same path, and the command runs there as the caller. Each test boots a
guest or two (2-8 s each here; more under load), hence the generous timeouts.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from lguest.uml import kit as kit_module, shares
from lguest.uml.guest import Guest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 120
# The host's own Python, not a shim: where PATH leads in the guest is the host's PATH.
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


@pytest.fixture
def project():
    """A project directory in /tmp (short paths: the sockets live beside it too)."""
    path = tempfile.mkdtemp(prefix="lgproj-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def lguest_run(args, cwd, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, PATH=PATH, TMPDIR="/tmp")
    return subprocess.run([sys.executable, "-m", "lguest", "run", "--timeout", str(TIMEOUT),
                           *args], env=env, cwd=cwd, capture_output=True,
                          timeout=TIMEOUT + 30, **kwargs)


def host_python():
    found = shutil.which("python3", path=PATH)
    if not found:
        pytest.skip("no python3 on this host's PATH to run in the guest")
    return found


PROBE = ("import os, sys; print(sys.executable, sys.version.split()[0], os.getcwd(), "
         "os.getuid(), os.getgid(), open('/proc/version').read().split()[2])")


def test_the_hosts_python_runs_in_the_cwd_as_the_caller(uml, project):
    python = host_python()
    done = lguest_run(["--", "python3", "-c", PROBE], project)
    assert done.returncode == 0, done.stderr.decode()
    exe, version, cwd, uid, gid, kernel = done.stdout.decode().split()
    here = subprocess.run([python, "-c", "import sys; print(sys.executable, "
                           "sys.version.split()[0])"], capture_output=True, text=True,
                          env={"PATH": PATH}).stdout.split()
    assert [exe, version] == here
    assert (cwd, int(uid), int(gid)) == (project, os.getuid(), os.getgid())
    # /proc is the guest's own: its kernel is UML's, not the host's.
    assert kernel != os.uname().release and kernel.startswith("6.")


def test_a_file_written_in_the_cwd_lands_on_the_host_as_the_caller(uml, project):
    done = lguest_run(["--", "sh", "-c", "echo written-in-guest > out.txt; mkdir sub; "
                       "echo deeper > sub/f"], project)
    assert done.returncode == 0, done.stderr.decode()
    out = os.path.join(project, "out.txt")
    with open(out) as f:
        assert f.read() == "written-in-guest\n"
    st = os.stat(out)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    with open(os.path.join(project, "sub", "f")) as f:
        assert f.read() == "deeper\n"


def test_another_user_writes_as_that_user(uml, project):
    if os.geteuid() != 0:
        pytest.skip("only root can run the guest's commands as another user")
    os.chown(project, 1234, 5678)
    with Guest(kit=uml, timeout=TIMEOUT, cwd=project, user=(1234, 5678)) as g:
        r = g.run("id -u; id -g; echo mine > mine.txt; touch /tmp/ok && echo tmp-ok; "
                  "echo x > /root/denied 2>/dev/null || echo denied")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1234", "5678", "tmp-ok", "denied"]
    st = os.stat(os.path.join(project, "mine.txt"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert not os.path.exists("/root/denied")


def test_the_users_supplementary_groups_open_what_they_open_on_the_host(uml, project):
    if os.geteuid() != 0:
        pytest.skip("only root can run the guest's commands as another user")
    if not os.access(shares.SETPRIV, os.X_OK):
        pytest.skip(f"no {shares.SETPRIV} on this host")
    os.chown(project, 1234, 5678)
    for name, group in (("ours.txt", 4242), ("theirs.txt", 4343)):
        path = os.path.join(project, name)
        with open(path, "w") as f:
            f.write(f"{name}\n")
        os.chown(path, 0, group)
        os.chmod(path, 0o640)               # readable through the group only
    with Guest(kit=uml, timeout=TIMEOUT, cwd=project, user=(1234, 5678, (5678, 4242))) as g:
        r = g.run("id -u; id -G; cat ours.txt; cat theirs.txt 2>/dev/null || echo refused")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1234", "5678", "4242", "ours.txt", "refused"], r.stderr


def test_the_host_root_is_read_only(uml, project):
    host_python()
    victim, made = "/var/tmp/lguest-host-root-probe", "/usr/lguest-probe"
    guest_tmp = "/tmp/lguest-guest-tmp-probe"
    script = ("import errno, os\n"
              "def try_(f, *a):\n"
              "    try:\n"
              "        f(*a)\n"
              "        print('ok')\n"
              "    except OSError as e:\n"
              "        print(errno.errorcode[e.errno])\n"
              f"try_(lambda: open({victim!r}, 'w'))\n"
              f"try_(os.mkdir, {made!r})\n"
              f"try_(lambda: open({guest_tmp!r}, 'w'))\n")
    done = lguest_run(["--", "python3", "-c", script], project)
    assert done.returncode == 0, done.stderr.decode()
    # Outside the cwd the host's root refuses; /tmp is the guest's own tmpfs.
    assert done.stdout.decode().split() == ["EROFS", "EROFS", "ok"]
    assert not os.path.exists(victim) and not os.path.exists(made)
    assert not os.path.exists(guest_tmp)


def test_shares_read_only_and_read_write(uml, project):
    ro_dir, rw_dir = os.path.join(project, "ro"), os.path.join(project, "rw")
    os.mkdir(ro_dir)
    os.mkdir(rw_dir)
    with open(os.path.join(ro_dir, "keep.txt"), "w") as f:
        f.write("kept\n")
    done = lguest_run(["--share", f"{ro_dir}:/tmp/in,ro", "--share", f"{rw_dir}:/tmp/out",
                       "--", "sh", "-c",
                       "cat /tmp/in/keep.txt; echo x > /tmp/in/new || echo ro-refused; "
                       "cp /tmp/in/keep.txt /tmp/out/copy && echo rw-ok"], project)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["kept", "ro-refused", "rw-ok"]
    assert b"Read-only file system" in done.stderr
    assert os.listdir(ro_dir) == ["keep.txt"]
    with open(os.path.join(rw_dir, "copy")) as f:
        assert f.read() == "kept\n"


def test_a_bad_share_is_one_clear_line(uml, project):
    done = lguest_run(["--share", f"{project}:relative", "--", "true"], project)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (f"lguest run: --share {project}:relative: "
                                            "the guest path 'relative' must be absolute")


def test_root_initramfs_is_the_busybox_guest(uml, project):
    shared = os.path.join(project, "data")
    os.mkdir(shared)
    with open(os.path.join(shared, "f"), "w") as f:
        f.write("from-host\n")
    done = lguest_run(["--root=initramfs", "--share", f"{shared}:/mnt/data,ro", "--",
                       "sh", "-c", "pwd; readlink /bin/sh; env | sort | tr '\\n' ' '; echo; "
                       "cat /mnt/data/f; [ -e /usr/bin/python3 ] || echo no-python"], project)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "/root" and lines[1] == "busybox"
    assert {"HOME=/root", "PATH=/bin:/sbin:/usr/bin:/usr/sbin"} <= set(lines[2].split())
    assert not [v for v in lines[2].split() if v.startswith(("TERM=", "LANG="))]
    assert lines[3:] == ["from-host", "no-python"]


def shares_under_tmp():
    """The guest's /tmp is its own tmpfs (as virtme-ng's is): what this interpreter needs
    from the host's /tmp -- a checkout cloned there, its virtualenv -- is shared, read-only
    at the same path, so that the guest sees it (`--share`, as a user would)."""
    wanted = sorted({os.path.realpath(p) for p in [sys.prefix, *sys.path]
                     if os.path.realpath(p or ".").startswith("/tmp/")})
    tops = [p for p in wanted if not any(p.startswith(q + "/") for q in wanted)]
    return [arg for p in tops for arg in ("--share", f"{p}:{p},ro")]


def test_pytest_on_a_tiny_project(uml, project):
    with open(os.path.join(project, "test_tiny.py"), "w") as f:
        f.write("import os\n\n"
                "def test_adds():\n    assert 1 + 1 == 2\n\n"
                "def test_writes_here(tmp_path):\n"
                "    open('from-pytest.txt', 'w').write(os.uname().release)\n")
    done = lguest_run(["--mem", "256", *shares_under_tmp(), "--", sys.executable, "-m",
                       "pytest", "-q"], project)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "2 passed" in out
    assert "\x1b[" not in out      # the guest's tty1 is a tty, but our stdout is a pipe
    with open(os.path.join(project, "from-pytest.txt")) as f:
        assert f.read() != os.uname().release            # it ran in the guest's kernel


def test_a_warm_guest_starts_each_command_afresh_in_the_cwd(uml, project):
    with Guest(kit=uml, timeout=TIMEOUT, cwd=project) as g:
        first = g.run("export LEAK=1; cd /; sleep 300 & echo $!")
        second = g.run(f"pwd; echo leak=${{LEAK-unset}}; "
                       f"kill -0 {first.stdout.strip()} 2>/dev/null && echo alive || echo gone")
        env = g.run("env").stdout
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert second.stdout.split() == [project, "leak=unset", "gone"] and g.boots == 1
    # The caller's PATH, HOME, TERM, LANG (those set) and the shell's own PWD: no more.
    names = {line.split("=", 1)[0] for line in env.splitlines()}
    passed = {k for k in ("PATH", "HOME", "LANG") if os.environ.get(k)}
    assert names == passed | {"PATH", "HOME", "PWD", "TERM"}
    assert "TERM=dumb" in env.splitlines()          # our stdout is no terminal here
    assert f"PATH={os.environ.get('PATH', shares.DEFAULT_PATH)}" in env.splitlines()


def test_the_guest_has_its_own_proc_sys_dev_and_tmp(uml, project):
    done = lguest_run(["--", "sh", "-c", "stat -f -c %T /proc /sys /dev /tmp / .; "
                       "ls /dev/tty3 /dev/pts /dev/shm >/dev/null && echo dev-ok"], project)
    assert done.returncode == 0, done.stderr.decode()
    # FUSE file systems say "fuseblk" to stat -f: the host's files are only / and the cwd.
    assert done.stdout.decode().split() == ["proc", "sysfs", "tmpfs", "tmpfs", "fuseblk",
                                            "fuseblk", "dev-ok"]


NOBODY = 4321      # an unused uid/gid: as root we can be anyone


@pytest.fixture(scope="module")
def shared_cache(uml, tmp_path_factory):
    """A copy of the kit's .debs built into a cache anyone can read (ours is root's)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run lguest as another user")
    cache = tempfile.mkdtemp(prefix="lgcache-", dir="/tmp")
    try:
        debs = os.path.join(cache, "debs")
        shutil.copytree(os.path.join(kit_module.cache_dir(), "debs"), debs)
        kit_module.ensure_kit(cache)        # unpacked and built as root, then opened up
        subprocess.run(["chmod", "-R", "a+rX", cache], check=True)
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_a_non_root_user_runs_with_their_own_ids(uml, project, shared_cache):
    python = shutil.which("python3", path="/usr/bin:/bin")
    as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {"PATH": "/usr/bin:/bin", "HOME": project, "LGUEST_CACHE": shared_cache,
           "PYTHONPATH": ROOT, "TMPDIR": "/tmp"}
    probe = subprocess.run([*as_user, python or "python3", "-c", "import lguest.uml.cli"],
                           env=env, capture_output=True)
    if python is None or probe.returncode != 0:
        pytest.skip(f"this checkout is not importable by uid {NOBODY} with the system "
                    f"python3: {probe.stderr.decode()[-200:]}")
    os.chown(project, NOBODY, NOBODY)
    done = subprocess.run([*as_user, python, "-m", "lguest", "run", "--timeout",
                           str(TIMEOUT), "--", "sh", "-c",
                           "id -u; id -g; echo hi > mine; cat /etc/shadow >/dev/null 2>&1 "
                           "|| echo shadow-denied"], env=env, cwd=project,
                          capture_output=True, timeout=TIMEOUT + 30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == [str(NOBODY), str(NOBODY), "shadow-denied"]
    st = os.stat(os.path.join(project, "mine"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)


def test_with_its_own_proc_and_sys_unmounted_the_guest_sees_the_hosts_as_empty(uml, project):
    if os.geteuid() != 0:
        pytest.skip("only a root caller is root in the guest, where umount needs it")
    done = lguest_run(["--", "sh", "-c", "umount /sys && umount /proc && "
                       "ls -a /proc /sys | tr '\\n' ' '; cat /proc/version 2>/dev/null "
                       "|| echo no-version"], project)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["/proc:", ".", "..", "/sys:", ".", "..",
                                            "no-version"]
