"""The pure parts of `lguest run`: the UML command line, the status line, failures."""

import base64
import os

import pytest

from lguest.errors import LauncherError
from lguest.uml import cli, init_script, process, servers
from lguest.uml.guest import Guest, GuestFailed, GuestTimeout, describe_failure
from lguest.uml.kit import Kit

KIT = Kit(kernel="/k/linux.uml", initrd="/k/init.cpio.gz", modules=("virtio_blk",))


def argv_of(command="true", **options):
    return process.kernel_arguments(KIT, command, "/w", (10, 11, 12, 13), **options)


def test_kernel_arguments_wire_the_four_channels_and_devices():
    argv = argv_of(devices=[("/w/blk0.sock", 2), ("/w/console.sock", 3)],
                   wait=["vda", "hvc0"], ip="10.0.0.2/24", stdout_device="hvc0", mem=96)
    assert argv[0] == "/k/linux.uml"
    assert "mem=96M" in argv and "initrd=/k/init.cpio.gz" in argv
    for i, fd in enumerate((10, 11, 12, 13)):
        assert f"con{i}=null,fd:{fd}" in argv
    assert argv.index("con=null") < argv.index("con0=null,fd:10")   # the default first
    assert "virtio_uml.device=/w/blk0.sock:2" in argv
    assert "virtio_uml.device=/w/console.sock:3" in argv
    assert "lguest_wait=vda,hvc0" in argv and "lguest_ip=10.0.0.2/24" in argv
    assert "lguest_stdout=hvc0" in argv and "uml_dir=/w" in argv


def mounts_file(tmp_path, *entries):
    path = tmp_path / f"mounts-{len(list(tmp_path.glob('mounts-*')))}"
    path.write_text("".join(f"dev {point} {kind} rw 0 0\n" for point, kind in entries))
    return str(path)


def test_guest_ram_goes_to_a_tmpfs_with_room_not_the_workdir(tmp_path):
    # L:841: a disk-backed memory file is written back and write-protected again and
    # again; a tmpfs one is not. The candidate must be a tmpfs with room for the RAM.
    shm = tmp_path / "shm"
    shm.mkdir()
    tmpfs = mounts_file(tmp_path, ("/", "ext4"), (str(shm), "tmpfs"))
    disk = mounts_file(tmp_path, ("/", "ext4"), (str(tmp_path / "elsewhere"), "tmpfs"))
    assert process.ram_dir(64, "/w", str(shm), tmpfs) == str(shm)
    assert process.ram_dir(64, "/w", str(shm), disk) == "/w"
    assert process.ram_dir(1 << 40, "/w", str(shm), tmpfs) == "/w"        # no room
    assert process.ram_dir(64, "/w", str(tmp_path / "missing"), tmpfs) == "/w"
    assert process.ram_dir(64, "/w", str(shm), str(tmp_path / "no-mounts")) == "/w"


def test_mount_type_takes_the_longest_mount_point_holding_the_path(tmp_path):
    mounts = mounts_file(tmp_path, ("/", "ext4"), ("/dev", "devtmpfs"), ("/dev/shm", "tmpfs"),
                         ("/dev/shmem", "xfs"), ("/a\\040b", "tmpfs"))
    assert process.mount_type("/dev/shm/x", mounts) == "tmpfs"
    assert process.mount_type("/dev/sh", mounts) == "devtmpfs"    # a prefix is not a parent
    assert process.mount_type("/usr", mounts) == "ext4"
    assert process.mount_type("/a b/c", mounts) == "tmpfs"        # /proc/mounts escapes spaces


def test_spawn_gives_uml_the_ram_directory_as_tmpdir(tmp_path):
    # The argv is a shell standing in for linux.uml; its mem= word is what spawn reads.
    r, w = os.pipe()
    try:
        proc = process.spawn(["/bin/sh", "-c", 'printf %s "$TMPDIR"', "mem=32M"],
                             str(tmp_path), (w,))
        os.close(w)
        proc.wait(10)
        said = os.read(r, 4096).decode()
    finally:
        os.close(r)
    assert said == process.ram_dir(32, str(tmp_path))
    assert process.memory_of(["linux", "mem=96M"]) == 96
    assert process.memory_of(["linux"]) == 64


def test_the_raid6_benchmark_is_skipped_only_without_block_devices():
    from lguest import virtio
    assert process.ID_BLOCK == virtio.ID_BLOCK
    bare = argv_of(devices=[("/w/fs0.sock", virtio.ID_FS)])
    assert "initcall_blacklist=calibrate_xor_blocks,raid6_select_algo" in bare
    with_disk = argv_of(devices=[("/w/blk0.sock", virtio.ID_BLOCK)])
    assert "initcall_blacklist=calibrate_xor_blocks" in with_disk


@pytest.mark.parametrize("command", ["echo 'a b' \"c\" $HOME; exit 3", "ünï\ncode\t\\"])
def test_command_travels_as_base64_without_quoting(command):
    argv = argv_of(command)
    (arg,) = [a for a in argv if a.startswith("lguest_cmd=")]
    value = arg[len("lguest_cmd="):]
    assert " " not in value and base64.b64decode(value).decode() == command


def test_overlong_command_is_refused_clearly():
    with pytest.raises(LauncherError, match="command too long"):
        argv_of("x" * 4000)


@pytest.mark.parametrize("text, status", [
    (b"lguest-exit-status 0\n", 0),
    (b"noise\nlguest-exit-status 42\r\n", 42),
    (b"lguest-exit-status 1\nlguest-exit-status 7\n", 7),
    (b"", None), (b"lguest-exit-status\n", None), (b"lguest-exit-status -1\n", None),
    (b"lguest-exit-status 12 extra\n", None),
])
def test_parse_status(text, status):
    assert process.parse_status(text) == status


def outcome(log="", timed_out=False, rc=0):
    return process.Outcome(None, timed_out, rc, log, 1.0)


def test_failures_are_described_by_cause():
    assert isinstance(describe_failure(outcome(timed_out=True), 5), GuestTimeout)
    assert "after 5 s" in str(describe_failure(outcome(timed_out=True), 5))
    panic = describe_failure(outcome("x\nKernel panic - not syncing: Attempted to kill init!\n"), 5)
    assert type(panic) is GuestFailed and "Attempted to kill init" in str(panic)
    other = describe_failure(outcome("", rc=-9), 5)
    assert "without reporting" in str(other) and "-9" in str(other)


def test_init_script_reports_status_on_its_own_line_and_powers_off():
    script = init_script.INIT_SCRIPT
    assert script.startswith("#!/bin/sh\n")
    # One-shot (the command on the kernel command line) and agent (L:821) answers.
    assert f'echo "{init_script.STATUS_MARKER} $status" >/dev/tty3' in script
    assert f'echo "{init_script.STATUS_MARKER} $token $status" >/dev/tty3' in script
    assert f'echo "{init_script.READY_MARKER}" >/dev/tty3' in script
    # stdout, stderr, and tty4 when the command ran on it as its terminal (L:823)
    assert script.count(f'"{init_script.END_MARKER}$token>>"') == 3
    assert script.rstrip().endswith("poweroff -f")


def test_block_specs(tmp_path):
    f = tmp_path / "d.img"
    f.write_bytes(b"")
    assert servers.parse_block_spec(str(f)) == (str(f), False)
    assert servers.parse_block_spec(f"{f},ro") == (str(f), True)
    with pytest.raises(LauncherError, match="only options"):
        servers.parse_block_spec(f"{f},rw,sync")
    with pytest.raises(LauncherError, match="is not a file"):
        servers.parse_block_spec(str(tmp_path / "absent"))
    with pytest.raises(LauncherError, match="is not a file"):
        Guest(block=[str(tmp_path)])


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--mem", "64"])
    assert e.value.code == 2 and "no command" in capsys.readouterr().err


def test_cli_reports_a_bad_block_file_in_one_line(tmp_path, capsys):
    assert cli.main(["--block", str(tmp_path / "nope"), "--", "true"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a file" in err
