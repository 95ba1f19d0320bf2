"""The host side of the guest agent's protocol (L:821, L:822), without a guest."""

import os

from hypothesis import given, strategies as st

from lguest.uml import agent, process
from lguest.uml.kit import Kit

MARKER = b"<<lguest-end 0123456789abcdef>>"


def framed(chunks):
    delivered = []
    stream = agent.FramedStream(MARKER, delivered.append)
    for chunk in chunks:
        stream.feed(chunk)
    return stream, b"".join(delivered)


@given(st.binary(max_size=200), st.binary(max_size=40), st.lists(st.integers(0, 300)))
def test_output_split_anywhere_is_delivered_whole_and_the_marker_never(body, after, cuts):
    wire = body + MARKER + after
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in zip(points, points[1:])]
    stream, delivered = framed(chunks)
    first = wire.find(MARKER)              # the body may itself end in a marker prefix
    assert stream.done
    assert delivered == bytes(stream.data) == wire[:first]


def test_a_marker_prefix_is_held_back_until_it_turns_out_not_to_be_one():
    stream, delivered = framed([b"abc<<lguest-e"])
    assert delivered == b"abc" and not stream.done
    stream.feed(b"xit\n")
    assert bytes(stream.data) == b"abc<<lguest-exit\n" and not stream.done


def test_another_tokens_marker_does_not_end_the_stream():
    stream, delivered = framed([b"<<lguest-end ffffffffffffffff>>", b"tail"])
    assert not stream.done and delivered.startswith(b"<<lguest-end ffff")


def test_agent_status_belongs_to_its_token():
    text = b"lguest-agent-ready\nlguest-exit-status aaaa 3\nlguest-exit-status bbbb 7\r\n"
    assert agent.parse_agent_status(text, "bbbb") == 7
    assert agent.parse_agent_status(text, "aaaa") == 3
    assert agent.parse_agent_status(text, "cccc") is None
    assert agent.parse_agent_status(b"lguest-exit-status bbbb -1\n", "bbbb") is None


def test_agent_boot_reads_commands_from_the_control_line():
    kit = Kit(kernel="/k/linux.uml", initrd="/k/i.cpio.gz", modules=())
    argv = process.kernel_arguments(kit, None, "/w", (10, 11, 12, 13), control=14)
    assert "con3=fd:14,fd:13" in argv
    assert not [a for a in argv if a.startswith("lguest_cmd=")]


def test_a_guest_that_never_started_is_stopped_and_released_quietly(tmp_path):
    booted = agent.BootedGuest(Kit("/nonexistent", "/x", ()), str(tmp_path), console=True)
    booted.console_write(b"nobody reads this")
    booted.stop()
    booted.release()
    booted.console_write(b"after release")       # a late device thread: no error
    assert not booted.alive
    assert os.listdir(tmp_path) == []


def printf_b(text):
    """What the guest's `printf %b` does with the two escapes encode_command makes."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "\\n":
            out.append("\\" if text[i + 1] == "\\" else "\n")
            i += 2
        else:
            assert text[i] != "\\", "a lone backslash would be an escape for printf %b"
            out.append(text[i])
            i += 1
    return "".join(out)


@given(st.text(alphabet=st.characters(blacklist_characters="\0"), max_size=200))
def test_a_command_travels_as_one_line_and_decodes_to_itself(command):
    line = agent.encode_command(command)
    assert "\n" not in line
    assert printf_b(line) == command


def test_a_nul_in_a_command_is_refused_clearly():
    import pytest
    from lguest.errors import LauncherError
    with pytest.raises(LauncherError, match="NUL"):
        agent.encode_command("a\0b")
