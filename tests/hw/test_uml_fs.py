"""Real Linux (UML's virtiofs driver) on a host directory through our virtio-fs back-end.

One boot runs a script of many checks against two shares (a read-write one and a
read-only one holding the script), printing `CHECK name value` lines; each test below
asserts on some of them and on what the host sees afterwards. The boot takes ~15-40 s
here, most of it the 256 MiB file read, copied back, and hashed on both sides.
"""

import calendar
import hashlib
import os
import stat

import pytest

from kits import kit_or_skip
from lguest.uml import kit
from uml_fs import boot_with_shares, parse_checks

BIG = 256 << 20
MANY = 10_000

GUEST_SCRIPT = r"""
R=/mnt/rw; C=/mnt/ctl
c() { echo "CHECK $*"; }
# open, unlink, then read, append and fstat through the open descriptors
echo "still here" > $R/ou; exec 3<$R/ou; exec 4>>$R/ou; rm $R/ou
echo appended >&4
c open_unlink_stat "$(stat -L -c '%s %h' /proc/self/fd/3)"
c open_unlink_read "$(cat <&3 | tr '\n' '|')"
c open_unlink_gone "$([ -e $R/ou ] && echo present || echo gone)"
exec 3<&- 4>&-
# rename over a file that is open
echo old > $R/ro1; echo new > $R/ro2; exec 5<$R/ro1; mv $R/ro2 $R/ro1
c rename_open "$(cat <&5) $(cat $R/ro1)"
exec 5<&-
# hard links and symlinks
echo data > $R/h1; ln $R/h1 $R/h2
c hardlink "$(stat -c '%h %i' $R/h1) $(stat -c %i $R/h2)"
ln -s h1 $R/sl
c symlink "$(readlink $R/sl) $(cat $R/sl)"
# modes, owners, mtimes
touch $R/m; chown 1234:5678 $R/m; chmod 4751 $R/m
c mode "$(stat -c '%a %u %g' $R/m)"
mkdir -p /etc; echo 'root:x:0:0::/root:/bin/sh' >> /etc/passwd; echo 'u:x:1234:5678::/tmp:/bin/sh' >> /etc/passwd; echo 'g:x:5678:' >> /etc/group
mkdir $R/pub; chmod 777 $R/pub
su u -c "echo mine > $R/pub/userfile; mkdir $R/pub/userdir"
c owner "$(stat -c '%u:%g' $R/pub/userfile) $(stat -c '%u:%g' $R/pub/userdir)"
su u -c "echo x > $R/notmine" 2>/dev/null; c user_denied $?
touch -d '2001-02-03 04:05:06' $R/t
c mtime "$(stat -c %Y $R/t)"
# a big file, host to guest and back
c big_read "$(md5sum $R/big | cut -d' ' -f1)"
dd if=$R/big of=$R/bigcopy bs=1M 2>/dev/null; c big_copy $?
# a big directory
c many "$(ls $R/many | wc -l) $(ls $R/many | md5sum | cut -d' ' -f1)"
c many_find "$(find $R/many -type f | wc -l)"
# two writers appending to one file
(for i in $(seq 1 400); do echo "A$i" >> $R/two; done) &
(for i in $(seq 1 400); do echo "B$i" >> $R/two; done) &
wait
c two_writers "$(wc -l < $R/two)"
# a sparse file
truncate -s 1G $R/sparse; echo end | dd of=$R/sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null
c sparse "$(stat -c %s $R/sparse) $(du -k $R/sparse | cut -f1)"
# escapes: symlinks resolve in the guest, ".." is the guest's
ln -s / $R/toroot; ln -s ../outside.txt $R/up; ln -s /OUTSIDE-MARKER $R/abs
c esc_up_read "$(cat $R/up 2>/dev/null || echo refused)"
echo pwned > $R/up 2>/dev/null; echo pwned > $R/abs 2>/dev/null
c esc_marker "$(ls $R/toroot/ | grep -c outside)"
c esc_dotdot "$(ls $R/.. | tr '\n' ' ')"
# the read-only share
c ro_read "$(cat $C/keep.txt)"
c ro_create "$( (echo x > $C/new) 2>&1 | grep -c 'Read-only')"
c ro_rm "$( rm $C/keep.txt 2>&1 | grep -c 'Read-only')"
c ro_mkdir "$( mkdir $C/d 2>&1 | grep -c 'Read-only')"
c ro_touch "$( touch $C/keep.txt 2>&1 | grep -c 'Read-only')"
sync
umount $R; c umount_rw $?
"""

BOOT_COMMAND = ("mkdir -p /mnt/rw /mnt/ctl && mount -t virtiofs rw /mnt/rw && "
                "mount -t virtiofs ctl /mnt/ctl && sh /mnt/ctl/checks.sh")


def snapshot(top, skip):
    out = {}
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            if p in skip:
                continue
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    uml = kit_or_skip(kit.ensure_kit, "UML")
    if "virtiofs" not in uml.modules:
        pytest.skip("the UML kit has no virtiofs module")
    top = tmp_path_factory.mktemp("fs")
    (top / "outside.txt").write_text("host secret")
    rw, ctl = top / "rw", top / "ctl"
    rw.mkdir()
    ctl.mkdir()
    (ctl / "checks.sh").write_text(GUEST_SCRIPT)
    (ctl / "keep.txt").write_text("kept")
    big = os.urandom(BIG)
    (rw / "big").write_bytes(big)
    (rw / "many").mkdir()
    names = [f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(MANY)]
    for n in names:
        (rw / "many" / n).touch()
    skip = {str(rw), str(ctl)}
    outside_before = snapshot(top, skip)
    ctl_before = snapshot(ctl, set())
    outcome, stats = boot_with_shares(uml, BOOT_COMMAND,
                                      [(str(rw), "rw", False), (str(ctl), "ctl", True)],
                                      timeout=300)
    if outcome.status is None:
        pytest.fail(f"guest did not finish: {outcome.log[-2000:]}")
    return {
        "checks": parse_checks(outcome.stdout), "stderr": outcome.stderr.decode(errors="replace"),
        "status": outcome.status, "top": top, "rw": rw, "ctl": ctl, "stats": stats,
        "big_md5": hashlib.md5(big).hexdigest(),
        "names_md5": hashlib.md5("".join(n + "\n" for n in sorted(names)).encode()).hexdigest(),
        "outside_before": outside_before, "ctl_before": ctl_before, "skip": skip,
    }


def check(run, name):
    assert name in run["checks"], f"no CHECK {name}; stderr: {run['stderr'][-1500:]}"
    return run["checks"][name]


def test_the_script_ran_to_the_end_and_no_request_hit_a_bug(run):
    assert check(run, "umount_rw") == "0"
    assert all(s["bugs"] == 0 and s["malformed"] == 0 for s in run["stats"])
    assert run["stats"][0]["requests"] > 10_000


def test_open_unlink_fstat(run):
    assert check(run, "open_unlink_stat") == "20 0"
    assert check(run, "open_unlink_read") == "still here|appended|"
    assert check(run, "open_unlink_gone") == "gone"
    assert not (run["rw"] / "ou").exists()


def test_rename_over_an_open_file(run):
    assert check(run, "rename_open") == "old new"
    assert (run["rw"] / "ro1").read_text() == "new\n" and not (run["rw"] / "ro2").exists()


def test_hard_links_and_symlinks(run):
    nlink, ino1, ino2 = check(run, "hardlink").split()
    assert nlink == "2" and ino1 == ino2
    h1, h2 = os.stat(run["rw"] / "h1"), os.stat(run["rw"] / "h2")
    assert h1.st_ino == h2.st_ino == int(ino1) and h1.st_nlink == 2
    assert check(run, "symlink") == "h1 data"
    assert os.readlink(run["rw"] / "sl") == "h1"


def test_modes_owners_and_mtimes(run):
    assert check(run, "mode") == "4751 1234 5678"
    st = os.stat(run["rw"] / "m")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4751, 1234, 5678)
    assert check(run, "owner") == "1234:5678 1234:5678"
    if os.geteuid() == 0:       # the back-end makes files as the requesting user
        for name in ("userfile", "userdir"):
            st = os.stat(run["rw"] / "pub" / name)
            assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (run["rw"] / "pub" / "userfile").read_text() == "mine\n"
    assert check(run, "user_denied") != "0" and not (run["rw"] / "notmine").exists()
    want = calendar.timegm((2001, 2, 3, 4, 5, 6))
    assert check(run, "mtime") == str(want)
    assert os.stat(run["rw"] / "t").st_mtime == want


def test_256_mib_file_both_ways(run):
    assert check(run, "big_read") == run["big_md5"]
    assert check(run, "big_copy") == "0"
    with open(run["rw"] / "bigcopy", "rb") as f:
        assert hashlib.file_digest(f, "md5").hexdigest() == run["big_md5"]


def test_readdir_of_ten_thousand_entries(run):
    assert check(run, "many") == f"{MANY} {run['names_md5']}"
    assert check(run, "many_find") == str(MANY)


def test_two_writers_appending(run):
    assert check(run, "two_writers") == "800"
    lines = (run["rw"] / "two").read_text().splitlines()
    assert sorted(lines) == sorted([f"A{i}" for i in range(1, 401)] + [f"B{i}" for i in range(1, 401)])
    assert [x for x in lines if x[0] == "A"] == [f"A{i}" for i in range(1, 401)]


def test_sparse_file(run):
    size, kib = check(run, "sparse").split()
    assert size == str(1 << 30) and int(kib) < 1024
    st = os.stat(run["rw"] / "sparse")
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < (1 << 20)
    with open(run["rw"] / "sparse", "rb") as f:
        f.seek(512 << 20)
        assert f.read(4) == b"end\n"


def test_escapes_from_the_guest_touch_nothing_outside(run):
    assert check(run, "esc_up_read") == "refused"             # the guest has no /outside.txt
    assert check(run, "esc_marker") == "0"                    # / is the guest's root
    assert "rw" in check(run, "esc_dotdot").split()           # .. is the guest's /mnt
    assert (run["top"] / "outside.txt").read_text() == "host secret"
    assert snapshot(run["top"], run["skip"]) == run["outside_before"]
    assert not os.path.exists("/OUTSIDE-MARKER")
    assert os.readlink(run["rw"] / "up") == "../outside.txt"


def test_read_only_share_refuses_writes(run):
    assert check(run, "ro_read") == "kept"
    for name in ("ro_create", "ro_rm", "ro_mkdir", "ro_touch"):
        assert check(run, name) == "1", name
    assert snapshot(run["ctl"], set()) == run["ctl_before"]
