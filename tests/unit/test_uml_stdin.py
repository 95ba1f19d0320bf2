"""The host half of a command's stdin (L:823, L:824), driven without a guest."""

import os
import select
import selectors

import pytest

from lguest.uml import process, stdin
from lguest.uml.kit import Kit


def pump_all(source, *, go=True, framed=True, rounds=200):
    """Run a pump into a pipe until it has nothing left; return what reached the pipe."""
    r, w = os.pipe()
    sel = selectors.DefaultSelector()
    pump = stdin.StdinPump(source, w, "tok", framed=framed)
    pump.start(sel)
    got = bytearray()
    try:
        for _ in range(rounds):
            if go and framed and not pump.going and got:
                pump.guest_said(b"g")            # split across reads, as tty4 may
                pump.guest_said(b"o\n")
            for key, events in sel.select(0.01):
                key.data(events)
            while True:
                ready = select_ready(r)
                if not ready:
                    break
                got += os.read(r, 1 << 20)
            if pump.eof_sent and not pump.out or (not framed and pump.eof and not pump.out):
                break
        return bytes(got), pump
    finally:
        pump.stop()
        sel.close()
        os.close(r)
        os.close(w)


def select_ready(fd):
    return select.select([fd], [], [], 0)[0]


def test_frames_follow_the_token_line_and_end_with_an_empty_frame():
    got, _ = pump_all(b"hello\nworld\n")
    assert got == b"\ntok\n" + b"12\nhello\nworld\n" + b"0\n"


def test_nothing_but_the_token_line_goes_before_the_guest_says_go():
    got, pump = pump_all(b"data", go=False, rounds=5)
    assert got == b"\ntok\n" and not pump.eof_sent


def test_an_empty_stdin_is_just_the_end_of_file():
    assert pump_all(b"")[0] == b"\ntok\n0\n"


def test_a_pipe_source_is_framed_and_its_eof_forwarded():
    r, w = os.pipe()
    os.write(w, b"x" * 5000)
    os.close(w)
    try:
        got, _ = pump_all(r)
    finally:
        os.close(r)
    assert got == b"\ntok\n5000\n" + b"x" * 5000 + b"0\n"


def test_a_regular_file_source_which_epoll_refuses_is_read_anyway(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    with open(path, "rb") as f:
        got, pump = pump_all(f)
    assert not pump.pollable
    assert got == b"\ntok\n3000\n" + b"abc" * 1000 + b"0\n"


def test_large_input_is_cut_into_frames_no_bigger_than_max_frame():
    data = bytes(range(256)) * (stdin.MAX_FRAME // 256 * 2 + 10)
    got, _ = pump_all(data, rounds=2000)
    body, frames = got[len(b"\ntok\n"):], []
    while body:
        header, _, body = body.partition(b"\n")
        n = int(header)
        frames.append(body[:n])
        body = body[n:]
    assert frames[-1] == b"" and b"".join(frames) == data
    assert max(len(f) for f in frames) == stdin.MAX_FRAME


def test_a_terminal_passes_bytes_as_they_are_without_frames():
    got, _ = pump_all(b"echo hi\r\x04", framed=False)
    assert got == b"\ntok\necho hi\r\x04"


def test_command_mode_words():
    assert stdin.command_mode(None, None) == "-"
    assert stdin.command_mode(b"", None) == "p"
    assert stdin.command_mode(0, (40, 132)) == "t:40:132"


def test_a_bad_stdin_is_a_clear_type_error():
    with pytest.raises(TypeError, match="stdin must be bytes"):
        stdin.source_fd(3.5)


def test_the_agent_boot_wires_tty4_to_the_stdin_pipes():
    kit = Kit(kernel="/k/linux.uml", initrd="/k/i.cpio.gz", modules=())
    argv = process.kernel_arguments(kit, None, "/w", (10, 11, 12, 13), control=14,
                                    stdin_line=(15, 16))
    assert "con4=fd:15,fd:16" in argv
    with_winch = process.kernel_arguments(kit, None, "/w", (10, 11, 12, 13), control=14,
                                          stdin_line=(15, 16, 17))
    assert "con4=fd:15,fd:16" in with_winch and "con5=fd:17,null" in with_winch
    assert not [a for a in process.kernel_arguments(kit, "true", "/w", (10, 11, 12, 13))
                if a.startswith("con4=")]


def test_devnull_is_recognised_as_no_stdin():
    with open(os.devnull) as f:
        assert stdin.is_null_device(f.fileno())
    r, w = os.pipe()
    try:
        assert not stdin.is_null_device(r)
    finally:
        os.close(r)
        os.close(w)


def test_lguest_run_goes_interactive_only_when_both_ends_are_terminals():
    import pty
    master, slave = pty.openpty()
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert stdin.stdin_plan(slave, slave) == "tty"
        assert stdin.stdin_plan(slave, w) == "stream"        # `lguest run ... | cat`
        assert stdin.stdin_plan(r, slave) == "stream"        # `seq 10 | lguest run ...`
        assert stdin.stdin_plan(null, slave) == "none"
    finally:
        for fd in (master, slave, r, w, null):
            os.close(fd)


def test_raw_terminal_restores_the_terminal_however_the_block_ends():
    import pty
    import termios
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with stdin.raw_terminal(slave):
                assert termios.tcgetattr(slave) != before    # raw inside
                raise RuntimeError("leaving early")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
