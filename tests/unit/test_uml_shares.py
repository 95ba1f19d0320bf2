"""The --share / --root options of `lguest run` and the share plan (lguest/uml/shares.py)."""

import os
import shlex

import pytest

from lguest.errors import LauncherError
from lguest.uml import cli, shares
from lguest.uml.shares import Share, parse_share, plan


def test_a_share_defaults_to_the_same_path_read_write(tmp_path):
    assert parse_share(str(tmp_path)) == Share(str(tmp_path), str(tmp_path), False)


def test_a_share_with_a_guest_path_and_ro(tmp_path):
    assert parse_share(f"{tmp_path}:/srv/data,ro") == Share(str(tmp_path), "/srv/data", True)
    assert parse_share(f"{tmp_path}:/srv/data/,rw") == Share(str(tmp_path), "/srv/data", False)
    assert parse_share(f"{tmp_path},ro") == Share(str(tmp_path), str(tmp_path), True)


def test_a_host_directory_may_have_a_colon_in_its_name(tmp_path):
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert parse_share(str(odd)) == Share(str(odd), str(odd), False)
    assert parse_share(f"{odd}:/srv/x,ro") == Share(str(odd), "/srv/x", True)
    assert parse_share(f"{tmp_path}:/srv/c:d") == Share(str(tmp_path), "/srv/c:d", False)
    with pytest.raises(LauncherError, match="must be absolute"):
        parse_share(f"{tmp_path}:relative")


def test_the_host_path_is_resolved(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    share = parse_share(f"{tmp_path}/link/../real")
    assert share.host == str(tmp_path / "real")


@pytest.mark.parametrize("spec, says", [
    ("/no/such/dir", "is not a directory on this host"),
    (":/x", "no host directory"),
    ("{tmp}:relative", "must be absolute"),
    ("{tmp}:", "must be absolute"),
    ("{tmp}:/", "its root"),
    ("{tmp}://", "its root"),
    ("{tmp}:/proc/x", "the guest's own"),
    ("{tmp}:/dev", "the guest's own"),
    ("{tmp}/file", "is not a directory"),
])
def test_bad_shares_are_clear_errors(tmp_path, spec, says):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LauncherError, match=says):
        parse_share(spec.format(tmp=tmp_path))


def test_duplicate_guest_paths_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with pytest.raises(LauncherError, match="two shares for the guest path /tmp/x"):
        plan([f"{a}:/tmp/x", f"{b}:/tmp/x/,ro"], root="initramfs")
    with pytest.raises(LauncherError, match="two shares"):
        plan([str(a), f"{b}:{a}"], root="host", cwd="/")


def test_an_unknown_root_is_refused():
    with pytest.raises(LauncherError, match="host, initramfs"):
        plan(root="nfs")


def test_host_root_plan_shares_root_read_only_and_cwd_read_write(tmp_path):
    p = plan(root="host", cwd=str(tmp_path), user=(1000, 100),
             environ={"PATH": "/usr/bin:/bin", "HOME": "/home/u", "TERM": "xterm",
                      "LANG": "C.UTF-8", "SECRET": "no"}, terminal=True)
    assert p.served == [("/", "lgroot", True), (str(tmp_path), "lgshare0", False)]
    assert p.env == {"PATH": "/usr/bin:/bin", "HOME": "/home/u", "TERM": "xterm",
                     "LANG": "C.UTF-8"}
    words = shlex.split(p.wrap("echo 'hi there'"))
    assert words[:5] == ["unset", "PWD", "OLDPWD", "SHLVL;", "export"]
    assert "SECRET=no" not in words and "HOME=/home/u" in words
    at = words.index("nsenter")
    assert words[at:at + 7] == ["nsenter", "-F", "-r/host", f"-w/host{tmp_path}",
                                "-S", "1000", "-G"]
    assert words[-3:] == ["/bin/sh", "-c", "echo 'hi there'"]


def test_supplementary_groups_go_through_the_hosts_setpriv(tmp_path):
    p = plan(root="host", cwd=str(tmp_path), user=(1000, 100, (100, 27, 100, 999)))
    assert p.groups == (100, 27, 999)
    words = shlex.split(p.wrap("id"))
    at = words.index("nsenter")
    # No -S/-G: nsenter stays root in the chroot, and setpriv drops to the ids and groups.
    assert words[at:at + 9] == ["nsenter", "-F", "-r/host", f"-w/host{tmp_path}",
                                shares.SETPRIV, "--reuid=1000", "--regid=100",
                                "--groups=100,27,999", "/bin/sh"]
    only_gid = plan(root="host", cwd=str(tmp_path), user=(1000, 100, (100,)))
    assert "-S" in shlex.split(only_gid.wrap("id")) and only_gid.groups == (100,)


def test_without_setpriv_the_groups_are_dropped_and_said(tmp_path, capsys):
    assert shares.supplementary_groups(100, (100, 27), setpriv=str(tmp_path / "none")) == ()
    assert "without the supplementary groups 27" in capsys.readouterr().err
    assert shares.supplementary_groups(100, (100,), setpriv=str(tmp_path / "none")) == (100,)
    assert capsys.readouterr().err == ""


def test_host_root_plan_defaults_to_the_caller(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = plan(environ={})
    assert p.cwd == str(tmp_path) and p.user == (os.getuid(), os.getgid())
    if os.access(shares.SETPRIV, os.X_OK):
        assert set(p.groups) == set(os.getgroups())
    assert p.env == {"PATH": shares.DEFAULT_PATH, "HOME": "/", "TERM": "dumb"}


def test_term_is_the_callers_only_when_our_stdout_is_a_terminal():
    # The guest's stdout is a tty (a UML console line) even when ours is a pipe.
    environ = {"TERM": "xterm-256color", "PATH": "/bin"}
    assert plan(root="host", cwd="/", environ=environ).env["TERM"] == "dumb"
    assert plan(root="host", cwd="/", environ=environ,
                terminal=True).env["TERM"] == "xterm-256color"


def test_an_explicit_share_of_the_cwd_replaces_the_writable_one(tmp_path):
    p = plan([f"{tmp_path},ro"], root="host", cwd=str(tmp_path))
    assert p.served == [("/", "lgroot", True), (str(tmp_path), "lgshare0", True)]


def test_no_writable_share_for_a_cwd_of_root_or_in_the_guests_own_dirs():
    assert plan(root="host", cwd="/").served == [("/", "lgroot", True)]
    assert plan(root="host", cwd="/proc").served == [("/", "lgroot", True)]


def test_with_the_host_root_a_guest_path_must_exist_or_be_under_tmp(tmp_path):
    with pytest.raises(LauncherError, match="is in the host's root .read-only. but "
                       "/no-such-top-dir-here is not a directory there"):
        plan([f"{tmp_path}:/no-such-top-dir-here"], root="host", cwd="/")
    p = plan([f"{tmp_path}:/tmp/new/place"], root="host", cwd="/")
    assert p.served[1] == (str(tmp_path), "lgshare0", False)
    assert p.mount_points_to_make() == ["/tmp/new/place"]            # in the guest's tmpfs
    assert plan(root="host", cwd="/").mount_points_to_make() == []


def test_a_share_inside_another_must_exist_in_that_one(tmp_path):
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    for root in ("host", "initramfs"):
        with pytest.raises(LauncherError, match=f"is in the share at /tmp/a but {outer}/b "):
            plan([f"{outer}:/tmp/a", f"{inner}:/tmp/a/b"], root=root, cwd="/")
    (outer / "b").mkdir()
    p = plan([f"{outer}:/tmp/a", f"{inner}:/tmp/a/b"], root="initramfs")
    assert p.mount_points_to_make() == ["/tmp/a"]


def test_parents_are_mounted_before_children(tmp_path):
    inner = tmp_path / "inner"
    (inner / "b").mkdir(parents=True)
    p = plan([f"{tmp_path}:/tmp/a/b", f"{inner}:/tmp/a"], root="host", cwd="/")
    assert [s.guest for s in p.shares] == ["/", "/tmp/a", "/tmp/a/b"]
    script = p.setup_script()
    # One retried mount for the root, then one `mount -a`: the guest's own file systems
    # over the host's, then the shares, parents first.
    assert "lg_mount lgroot /host ro" in script
    fstab = script[script.index("printf '%s' '") + 13:script.index("' > /lguest.fstab")]
    assert [line.split()[1] for line in fstab.splitlines()] == [
        "/dev/pts", "/dev/shm", "/host/proc", "/host/sys", "/host/dev", "/host/tmp",
        "/host/tmp/a", "/host/tmp/a/b"]


def test_fstab_fields_are_escaped(tmp_path):
    p = plan([f"{tmp_path}:/tmp/a b\\c"], root="initramfs")
    p2 = plan([f"{tmp_path}:/tmp/x", f"{tmp_path}:/tmp/a b\\c,ro"], root="initramfs")
    assert "lg_mount lgshare0 '/tmp/a b\\c' rw" in p.setup_script()
    assert "lgshare1 /tmp/a\\040b\\134c virtiofs ro 0 0" in p2.setup_script()


def test_initramfs_plan_mounts_at_the_guest_path_and_runs_commands_as_they_are(tmp_path):
    p = plan([f"{tmp_path}:/mnt/data,ro"], root="initramfs")
    assert p.served == [(str(tmp_path), "lgshare0", True)]
    assert p.wrap("uname -a") == "uname -a"
    assert "lg_mount lgshare0 /mnt/data ro" in p.setup_script()
    assert "mkdir -p /mnt/data" in p.setup_script()
    assert "/host" not in p.setup_script()
    assert plan(root="initramfs").setup_script() is None


def test_tuples_work_as_shares(tmp_path):
    p = plan([(str(tmp_path), "/tmp/t", True)], root="initramfs")
    assert p.shares == [Share(str(tmp_path), "/tmp/t", True, "lgshare0")]


def test_cli_takes_root_and_repeated_shares(tmp_path):
    args = cli.parser().parse_args(["--root=initramfs", "--share", str(tmp_path),
                                    "--share", f"{tmp_path}:/x,ro", "--", "true"])
    assert args.root == "initramfs" and args.share == [str(tmp_path), f"{tmp_path}:/x,ro"]
    assert cli.parser().parse_args(["--", "true"]).root == "host"


def test_cli_reports_a_bad_share_in_one_line(capsys):
    assert cli.main(["--share", "/no/such/dir", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("lguest run: --share /no/such/dir: /no/such/dir is not a "
                           "directory on this host")


def test_init_skips_the_modules_of_devices_this_boot_does_not_have():
    from lguest.uml import kit, process
    k = kit.Kit(kernel="/k", initrd="/i", modules=("virtio_blk", "failover", "net_failover",
                                                   "virtio_net", "virtio_console", "fuse",
                                                   "virtiofs", "something_new"))
    assert kit.unused_modules(k, [26, 26]) == ("virtio_blk", "failover", "net_failover",
                                               "virtio_net", "virtio_console")
    assert kit.unused_modules(k, [1, 2, 3, 26]) == ()
    assert kit.unused_modules(k, []) == ("virtio_blk", "failover", "net_failover",
                                         "virtio_net", "virtio_console", "fuse", "virtiofs")
    argv = process.kernel_arguments(k, None, "/w", (1, 2, 3, 4), control=5,
                                    skip_modules=("virtio_blk", "fuse"))
    assert "lguest_skip=virtio_blk,fuse" in argv
    assert not [a for a in process.kernel_arguments(k, None, "/w", (1, 2, 3, 4), control=5)
                if a.startswith("lguest_skip=")]


def test_a_working_directory_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(LauncherError, match="is not a directory on this host"):
        plan(root="host", cwd=str(tmp_path / "gone"))


def test_what_the_guests_own_directories_hide_is_named(tmp_path):
    made = plan(cwd=str(tmp_path), user=(1000, 1000))
    assert made.hidden_from_guest(str(tmp_path / "venv" / "bin" / "python")) is None  # the cwd
    assert made.hidden_from_guest("/tmp/elsewhere/python") == "/tmp"
    assert made.hidden_from_guest("/tmp") == "/tmp"
    assert made.hidden_from_guest("/tmpfoo/python") is None
    assert made.hidden_from_guest("/dev/shm/tool") == "/dev"
    assert made.hidden_from_guest("/usr/bin/python3") is None
    shared = plan(["/tmp:/tmp,ro"], cwd=str(tmp_path), user=(1000, 1000))
    assert shared.hidden_from_guest("/tmp/elsewhere/python") is None
    assert plan(root="initramfs").hidden_from_guest("/tmp/x") is None


def test_a_program_under_the_hosts_tmp_gets_a_note_naming_the_share_it_needs(tmp_path):
    import tempfile
    venv = tempfile.mkdtemp(prefix="lgvenv-", dir="/tmp")
    try:
        os.mkdir(os.path.join(venv, "bin"))
        program = os.path.join(venv, "bin", "python")
        with open(program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(program, 0o755)
        made = plan(cwd=str(tmp_path), user=(1000, 1000),
                    environ={"PATH": f"{venv}/bin:/usr/bin"})
        note = cli.hidden_program_note(made, program)
        assert note == (f"{program} is under the host's /tmp, which the guest does not see "
                        f"(it has its own /tmp); --share {venv},ro shows it there")
        assert cli.hidden_program_note(made, "python") == note      # found on PATH
        assert cli.hidden_program_note(made, "sh") is None           # /usr/bin/sh
        assert cli.hidden_program_note(made, "no-such-program-here") is None
    finally:
        import shutil
        shutil.rmtree(venv)
