"""The pure parts of the UML image kit: ar and .deb parsing, cpio newc, modinfo."""

import gzip
import io
import lzma
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from lguest.errors import LauncherError
from lguest.uml import archive, kit, modinfo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_ar(members, gnu_names=False):
    out = bytearray(archive.AR_MAGIC)
    for name, body in members:
        shown = name + "/" if gnu_names else name
        out += (f"{shown:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n").encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    return bytes(out)


def make_tar(files, mode="w:xz"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


names = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=15).filter(
    lambda n: n not in (".", ".."))


@settings(max_examples=50)
@given(st.lists(st.tuples(names, st.binary(max_size=40)), max_size=5), st.booleans())
def test_ar_round_trips_members_of_odd_and_even_length(members, gnu):
    assert archive.read_ar(make_ar(members, gnu)) == members


def test_ar_rejects_bad_magic_truncation_and_bad_size():
    with pytest.raises(LauncherError, match="not an ar archive"):
        archive.read_ar(b"PK\x03\x04")
    good = make_ar([("data.tar.xz", b"x" * 10)])
    with pytest.raises(LauncherError, match="runs past the end"):
        archive.read_ar(good[:-3])
    bad_size = good.replace(b"10        `", b"zz        `")
    with pytest.raises(LauncherError, match="bad member size"):
        archive.read_ar(bad_size)
    with pytest.raises(LauncherError, match="bad member header"):
        archive.read_ar(good[:len(archive.AR_MAGIC) + 20])


@pytest.mark.parametrize("mode, suffix", [("w:xz", "xz"), ("w:gz", "gz"), ("w", "")])
def test_extract_deb_unpacks_its_data_tar(tmp_path, mode, suffix):
    data = make_tar({"usr/bin/hello": b"#!/bin/sh\necho hi\n"}, mode)
    member = "data.tar" + (f".{suffix}" if suffix else "")
    deb = tmp_path / "x.deb"
    deb.write_bytes(make_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b""), (member, data)]))
    archive.extract_deb(str(deb), str(tmp_path / "out"))
    assert (tmp_path / "out/usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"


@pytest.mark.skipif(not __import__("shutil").which("zstd"), reason="no zstd command")
def test_extract_deb_handles_zstd_data(tmp_path):
    plain = make_tar({"etc/z": b"zstd!"}, "w")
    packed = subprocess.run(["zstd", "-c"], input=plain, capture_output=True, check=True).stdout
    deb = tmp_path / "z.deb"
    deb.write_bytes(make_ar([("debian-binary", b"2.0\n"), ("data.tar.zst", packed)]))
    archive.extract_deb(str(deb), str(tmp_path / "out"))
    assert (tmp_path / "out/etc/z").read_bytes() == b"zstd!"


def test_extract_deb_refuses_paths_leaving_the_destination(tmp_path):
    data = make_tar({"../escape": b"no"}, "w:gz")
    deb = tmp_path / "evil.deb"
    deb.write_bytes(make_ar([("data.tar.gz", data)]))
    with pytest.raises(LauncherError, match="cannot unpack"):
        archive.extract_deb(str(deb), str(tmp_path / "out"))
    assert not (tmp_path / "escape").exists()


def test_deb_without_data_tar_is_a_clear_error():
    with pytest.raises(LauncherError, match="no data.tar"):
        archive.deb_data_tar(make_ar([("debian-binary", b"2.0\n")]))


@settings(max_examples=50)
@given(st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join),
                       st.binary(max_size=50), max_size=6))
def test_cpio_round_trips_files_and_creates_parents(files):
    w = archive.CpioWriter()
    for name, data in files.items():
        w.file(name, data)
    entries = archive.read_cpio(w.finish())
    got = {n: body for n, mode, body, _ in entries if stat.S_ISREG(mode)}
    dirs = {n for n, mode, _, _ in entries if stat.S_ISDIR(mode)}
    # A name that is also another file's parent directory stays a directory entry too.
    for name, data in files.items():
        if name not in dirs:
            assert got[name] == data
        for i in range(1, name.count("/") + 1):
            assert "/".join(name.split("/")[:i]) in dirs


def test_cpio_entries_are_aligned_and_typed():
    w = archive.CpioWriter()
    w.char_device("dev/console", 5, 1)
    w.symlink("bin/sh", "busybox")
    w.file("init", b"#!/bin/sh\n", perm=0o755)
    data = w.finish()
    assert len(data) % 4 == 0 and data.startswith(b"070701")
    entries = {n: (mode, body, rdev) for n, mode, body, rdev in archive.read_cpio(data)}
    assert stat.S_ISCHR(entries["dev/console"][0]) and entries["dev/console"][2] == (5, 1)
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert entries["init"][0] == stat.S_IFREG | 0o755
    assert stat.S_ISDIR(entries["dev"][0]) and stat.S_ISDIR(entries["bin"][0])
    assert b"TRAILER!!!\0" in data[-16:]


def test_busybox_image_has_what_a_small_init_needs(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really")
    cpio = archive.busybox_image(str(busybox), archive.BUSYBOX_DIRS + ("mnt",))
    cpio.file("init", b"#!/bin/sh\n", perm=0o755)
    entries = {n: (mode, body) for n, mode, body, _ in archive.read_cpio(cpio.finish())}
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF not really")
    assert entries["bin/sh"][1] == b"busybox" and stat.S_ISCHR(entries["dev/console"][0])
    assert all(stat.S_ISDIR(entries[d][0]) for d in ("proc", "sys", "tmp", "mnt", "sbin"))


@pytest.mark.parametrize("bad", ["../up", "a/../b", ""])
def test_cpio_refuses_names_that_escape(bad):
    with pytest.raises(LauncherError):
        archive.CpioWriter().file(bad, b"")


@pytest.mark.skipif(not __import__("shutil").which("cpio"), reason="no cpio command")
def test_cpio_is_readable_by_gnu_cpio(tmp_path):
    w = archive.CpioWriter()
    w.file("a/b/c.txt", b"hello")
    out = subprocess.run(["cpio", "-i", "-d", "--quiet"], cwd=tmp_path,
                         input=w.finish(), capture_output=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello"


def test_gzip_is_deterministic():
    assert archive.gzip_bytes(b"abc" * 100) == archive.gzip_bytes(b"abc" * 100)
    assert gzip.decompress(archive.gzip_bytes(b"xyz")) == b"xyz"


def test_parse_modinfo_splits_keys_and_keeps_repeats():
    info = modinfo.parse_modinfo(b"license=GPL\0alias=virtio:d00000001v*\0alias=b\0depends=net_failover,x-y\0\0")
    assert info["license"] == ["GPL"] and info["alias"] == ["virtio:d00000001v*", "b"]
    assert modinfo.depends(info) == ["net_failover", "x_y"]
    assert modinfo.depends(modinfo.parse_modinfo(b"depends=\0")) == []


def test_module_name_normalises_suffix_and_dashes():
    assert modinfo.module_name("/x/virtio-net.ko.xz") == "virtio_net"
    assert modinfo.module_name("virtio_blk.ko") == "virtio_blk"


def test_decompress_module_reads_xz_and_gz():
    assert modinfo.decompress_module("m.ko.xz", lzma.compress(b"\x7fELF")) == b"\x7fELF"
    assert modinfo.decompress_module("m.ko.gz", gzip.compress(b"\x7fELF")) == b"\x7fELF"
    with pytest.raises(LauncherError, match="cannot decompress"):
        modinfo.decompress_module("m.ko.xz", b"not xz")


def test_load_order_puts_dependencies_first_once():
    deps = {"virtio_net": ["net_failover"], "net_failover": ["failover"], "failover": [],
            "virtio_blk": [], "virtio_console": []}
    order = modinfo.load_order(["virtio_blk", "virtio_net", "virtio_console"], deps.__getitem__)
    assert order == ["virtio_blk", "failover", "net_failover", "virtio_net", "virtio_console"]


def test_load_order_reports_a_cycle():
    with pytest.raises(LauncherError, match="cycle: a -> b -> a"):
        modinfo.load_order(["a"], {"a": ["b"], "b": ["a"]}.__getitem__)


def test_modinfo_reads_the_section_of_a_real_elf(tmp_path):
    # Build a relocatable ELF with a .modinfo section using the host's assembler, if any.
    import shutil
    if not shutil.which("as"):
        pytest.skip("no assembler to build a test ELF")
    src = tmp_path / "m.s"
    src.write_text('.section .modinfo,"a"\n.asciz "depends=failover"\n.asciz "name=demo"\n')
    obj = tmp_path / "demo.ko"
    subprocess.run(["as", "-o", str(obj), str(src)], check=True)
    info = modinfo.modinfo(obj.read_bytes(), "demo")
    assert modinfo.depends(info) == ["failover"] and info["name"] == ["demo"]
    with pytest.raises(LauncherError, match="not an ELF"):
        modinfo.modinfo(b"garbage", "bad")


def test_resolve_finds_dependencies_across_the_tree(tmp_path):
    import shutil
    if not shutil.which("as"):
        pytest.skip("no assembler to build a test ELF")

    def module(path, deps):
        src = tmp_path / "t.s"
        src.write_text(f'.section .modinfo,"a"\n.asciz "depends={deps}"\n')
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["as", "-o", str(tmp_path / "t.o"), str(src)], check=True)
        data = (tmp_path / "t.o").read_bytes()
        path.write_bytes(lzma.compress(data) if path.name.endswith(".xz") else data)

    root = tmp_path / "mods"
    module(root / "net/top.ko.xz", "mid")
    module(root / "core/mid.ko", "base")
    module(root / "base.ko", "")
    got = modinfo.resolve(str(root), ["top"])
    assert [n for n, _ in got] == ["base", "mid", "top"]
    assert all(elf.startswith(b"\x7fELF") for _, elf in got)
    with pytest.raises(LauncherError, match="not found"):
        modinfo.resolve(str(root), ["absent"])


def test_initramfs_holds_busybox_modules_and_init(tmp_path):
    bb = tmp_path / "busybox"
    bb.write_bytes(b"\x7fELF-busybox")
    image = kit.build_initramfs(str(bb), [("failover", b"F"), ("virtio_net", b"N")])
    entries = {n: (mode, body) for n, mode, body, _ in archive.read_cpio(image)}
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"\x7fELF-busybox")
    assert entries["lib/modules/load-order"][1] == b"failover\nvirtio_net\n"
    assert entries["lib/modules/virtio_net.ko"][1] == b"N"
    assert entries["init"][0] & 0o111 and entries["init"][1].startswith(b"#!/bin/sh")
    assert "dev/console" in entries
    assert stat.S_ISDIR(entries["host"][0])          # the host root's mount point
    assert image[:6] == b"070701"                    # plain cpio newc, not gzip'd


def test_fetch_debs_uses_what_is_cached_without_apt(tmp_path, monkeypatch):
    for p in kit.PACKAGES:
        (tmp_path / f"{p}_1.0_amd64.deb").write_bytes(b"")

    def no_apt(*a, **k):
        raise AssertionError("apt-get must not run when the .debs are cached")
    monkeypatch.setattr(kit, "_apt_download", no_apt)
    got = kit.fetch_debs(str(tmp_path), progress=lambda m: None)
    assert got == {p: str(tmp_path / f"{p}_1.0_amd64.deb") for p in kit.PACKAGES}


def test_fetch_debs_reports_a_failed_download(tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 100, "E: Unable to locate package user-mode-linux"
    monkeypatch.setattr(kit, "_apt_download", lambda d, p: Failed())
    monkeypatch.setattr(kit.os, "geteuid", lambda: 1000)
    messages = []
    with pytest.raises(LauncherError, match="Unable to locate"):
        kit.fetch_debs(str(tmp_path), progress=messages.append)
    assert messages and "apt-get download" in messages[0]


def test_cache_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv("LGUEST_CACHE", "/somewhere/else")
    assert kit.cache_dir() == "/somewhere/else"
    monkeypatch.delenv("LGUEST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert kit.cache_dir() == "/xdg/lguest-py"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kit.cache_dir().endswith(os.path.join(".cache", "lguest-py"))


# A Python anyone may run: ours may live under a home only its owner can enter.
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def as_nobody():
    """preexec_fn for a child that runs as an unprivileged user (we may be root)."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)


@pytest.fixture
def open_tmp():
    """A directory everyone may enter (pytest's tmp_path is private to its owner)."""
    path = tempfile.mkdtemp(prefix="lguest-kit-test-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_a_cache_dir_that_cannot_be_created_is_one_clear_line(open_tmp):
    locked = open_tmp / "locked"
    locked.mkdir(mode=0o555)
    code = ("import sys; from lguest.uml import kit; from lguest.errors import LauncherError\n"
            "try:\n    kit.ensure_kit()\n"
            "except LauncherError as e:\n    print(e); sys.exit(3)\n")
    env = dict(os.environ, LGUEST_CACHE=str(locked / "cache"), PYTHONPATH=ROOT)
    r = subprocess.run([SYSTEM_PYTHON, "-c", code], env=env, capture_output=True,
                       text=True, preexec_fn=as_nobody, cwd="/", timeout=60)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert str(locked / "cache") in r.stdout and "LGUEST_CACHE" in r.stdout
    assert "XDG_CACHE_HOME" in r.stdout


def test_a_cache_unpacked_by_one_user_is_readable_by_others(open_tmp):
    deb = open_tmp / "pkg_1.0_all.deb"
    deb.write_bytes(make_ar([("data.tar.gz", make_tar({"usr/bin/x": b"1"}, "w:gz"))]))
    dest = kit.unpack(str(deb), str(open_tmp / "u"), progress=lambda m: None)
    assert os.stat(dest).st_mode & 0o777 == 0o755
    r = subprocess.run(["cat", os.path.join(dest, "usr/bin/x")], capture_output=True,
                       text=True, preexec_fn=as_nobody, timeout=60)
    assert r.stdout.strip() == "1", r.stderr


def test_unpack_happens_once_and_leaves_no_scratch(tmp_path):
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(make_ar([("data.tar.gz", make_tar({"usr/bin/x": b"1"}, "w:gz"))]))
    messages = []
    dest = kit.unpack(str(deb), str(tmp_path / "u"), progress=messages.append)
    assert open(os.path.join(dest, "usr/bin/x"), "rb").read() == b"1"
    assert kit.unpack(str(deb), str(tmp_path / "u"), progress=messages.append) == dest
    assert len(messages) == 1                          # the second call found it unpacked
    assert os.listdir(tmp_path / "u") == ["pkg_1.0_all"]


def test_a_hung_apt_get_is_a_clear_error_not_a_hang():
    with pytest.raises(LauncherError, match=r"`sleep 5` did not finish in 0.2 s"):
        kit._apt(["sleep", "5"], timeout=0.2)
