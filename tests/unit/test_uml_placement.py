"""Where a guest and its back-ends run (L:887): --cpus, Guest(cpus=...), and the
affinity handed to UML's process and to the servers' threads."""

import os
import threading

import pytest

from lguest.devices.console import ConsoleDevice
from lguest.devices.inmemory import BufferSink
from lguest.errors import LauncherError
from lguest.uml import cli, placement, process
from lguest.uml.guest import Guest, memory_notes
from lguest.vhost_user.backend import VhostUserTransport
from lguest.vhost_user.frontend import Frontend
from lguest.vhost_user.server import VhostUserServer

ALLOWED = frozenset(os.sched_getaffinity(0))
SOME_CPU = max(ALLOWED)         # on a multi-CPU host, not the whole set


@pytest.mark.parametrize("text, cpus", [
    ("one", "one"), ("all", "all"), (" all ", "all"), ("3", {3}), ("0,2-3", {0, 2, 3}),
    ("1-1", {1}), ("2,0,2", {0, 2}),
])
def test_cpus_are_parsed_as_taskset_writes_them(text, cpus):
    assert placement.parse_cpus(text) == cpus


@pytest.mark.parametrize("text, says", [
    ("", "not 'one'"), ("x", "not 'one'"), ("1-", "not 'one'"), ("-1", "not 'one'"),
    ("0,,1", "not 'one'"), ("3-1", "backwards"), ("99999", "past the last CPU"),
    ("0-99999999999", "past the last CPU"),
])
def test_bad_cpu_lists_are_refused_saying_why(text, says):
    with pytest.raises(ValueError, match=says):
        placement.parse_cpus(text)


def test_describe_prints_ranges():
    assert placement.describe({0, 2, 3}) == "0,2-3"
    assert placement.describe({5}) == "5"
    assert placement.describe({0, 1, 2, 7, 9, 10}) == "0-2,7,9-10"


def test_one_is_a_single_cpu_we_may_use_and_all_is_the_schedulers():
    assert placement.resolve(placement.ALL) is None
    one = placement.resolve(placement.ONE)
    assert len(one) == 1 and one <= ALLOWED
    assert placement.current_cpu() in ALLOWED
    # A CPU we are not on is never picked if we may not use it.
    assert placement.resolve(placement.ONE, allowed={SOME_CPU}) == {SOME_CPU}


def test_cpus_this_process_may_not_use_are_refused():
    outside = max(ALLOWED) + 1
    with pytest.raises(LauncherError, match=f"CPU {outside} is not one this process may run on"):
        placement.resolve(frozenset({outside}))
    with pytest.raises(LauncherError, match="cpus="):
        Guest(cpus=str(outside), root="initramfs")
    for bad in ("x", [], ["a"], [-1], 5):
        with pytest.raises(LauncherError, match="cpus="):
            Guest(cpus=bad, root="initramfs")


def test_guest_defaults_to_one_cpu_and_enough_memory_for_python():
    g = Guest(root="initramfs")
    assert g.cpus == placement.ONE
    assert g.mem == 256
    assert Guest(cpus=[SOME_CPU], root="initramfs").cpus == {SOME_CPU}


def test_the_run_command_takes_cpus(capsys):
    args = cli.parser().parse_args(["--cpus", "0", "--", "true"])
    assert args.cpus == {0} and args.mem == 256
    assert cli.parser().parse_args(["--", "true"]).cpus == placement.ONE
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--cpus", "first", "--", "true"])
    assert "not 'one', 'all' or a list of CPUs" in capsys.readouterr().err


def test_uml_is_started_on_the_cpus_given(tmp_path):
    r, w = os.pipe()
    try:
        proc = process.spawn(["sh", "-c", "grep Cpus_allowed_list /proc/self/status; ulimit -c"],
                             str(tmp_path), (w,), cpus=frozenset({SOME_CPU}))
        os.close(w)
        w = None
        proc.wait(10)
        out = os.read(r, 4096).decode().split()
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    assert out == ["Cpus_allowed_list:", str(SOME_CPU), "0"]   # and no core dumps


def test_a_servers_ring_threads_inherit_its_cpus(tmp_path):
    sock = str(tmp_path / "con.sock")
    with VhostUserServer(VhostUserTransport(ConsoleDevice(BufferSink())), sock) as server:
        serving = server.serve_in_thread(frozenset({SOME_CPU}))
        with Frontend.connect(sock) as fe:
            fe.negotiate()
            fe.set_mem_table()
            fe.setup_queue(0, 8)
            out = fe.setup_queue(1, 8)
            out.ring.add_buffer([b"hi\n"], [])
            out.kick()
            out.wait_used()
            rings = [t for t in threading.enumerate() if t.name.startswith("vhost-user-vq")]
            assert rings
            for thread in rings + [serving]:
                assert os.sched_getaffinity(thread.native_id) == {SOME_CPU}, thread.name
    assert os.sched_getaffinity(0) == ALLOWED          # ours is untouched


OOM_LOG = (
    "[    3.120000] python3 invoked oom-killer: gfp_mask=0x140dca, order=0, oom_score_adj=0\n"
    "[    3.130000] Out of memory: Killed process 714 (python3) total-vm:240520kB, "
    "anon-rss:101212kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:300kB oom_score_adj:0\n"
    "[    3.140000] Memory cgroup out of memory: Killed process 80 (sh -c x) total-vm:10kB\n")


def test_an_oom_kill_in_the_kernel_log_becomes_a_note():
    assert memory_notes(OOM_LOG, 128) == [
        "the guest ran out of memory (128 MiB) and its kernel killed python3 (pid 714)",
        "the guest ran out of memory (128 MiB) and its kernel killed sh -c x (pid 80)"]
    assert memory_notes("[    1.0] virtio_uml: probed\n", 128) == []


def test_one_spreads_this_processs_guests_over_the_cpus_while_it_can(monkeypatch):
    monkeypatch.setattr(placement, "allowed_cpus", lambda: frozenset({0, 1}))
    monkeypatch.setattr(placement, "current_cpu", lambda: 0)
    monkeypatch.setattr(placement, "_claimed", placement.Counter())
    first = placement.claim(placement.ONE)
    second = placement.claim(placement.ONE)
    third = placement.claim(placement.ONE)                 # both taken: share again
    assert (first, second) == ({0}, {1}) and len(third) == 1
    assert placement.claim(placement.ALL) is None
    for cpus in (first, second, third, None):
        placement.release(cpus)
    assert placement.claim(placement.ONE) == {0}           # all free again: where we are
    monkeypatch.setattr(placement, "_claimed", placement.Counter())
    assert placement.claim(frozenset({1})) == {1}          # an explicit CPU counts too
    assert placement.claim(placement.ONE) == {0}
