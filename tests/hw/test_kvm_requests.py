"""Many whole virtio requests through the real vCPU (guest rngloop32.S, harness
guests/rngloop.py, which bench/kvm_exits.py times): the guest posts, kicks by
ioeventfd, waits (spinning, or halted until the device's interrupt) and logs each used
length. Correctness only; the timing is the bench's."""

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "guests"))
import build  # noqa: E402

if not os.access("/dev/kvm", os.R_OK | os.W_OK):
    pytest.skip("no usable /dev/kvm on this host", allow_module_level=True)
if build.missing_tools():
    pytest.skip(f"binutils missing: {build.missing_tools()}", allow_module_level=True)

import rngloop  # noqa: E402

N = 2000            # > 256 ring laps of the 8-entry queue, and 16-bit index arithmetic


@pytest.mark.parametrize("waitirq", [False, True], ids=["spin", "halt"])
def test_guest_completes_n_rng_requests_each_filled(waitirq):
    with tempfile.TemporaryDirectory(prefix="kvm-rngloop-") as d:
        r = rngloop.run(N, d, waitirq=waitirq, timeout=60)
    assert getattr(r.end, "status", None) == 0, r.end
    assert r.reported == [N]
    assert r.lengths == [16] * N                  # every used entry: the whole buffer
    assert r.empty == []                          # and every buffer got bytes
    if waitirq:
        # Some requests are served before the guest looks; the rest must have been
        # woken by the device's interrupt, or the hlt would never have returned. The
        # line is a level: only the handler's ISR read (one exit each) lowers it, and
        # without it the edge-triggered PIC would have seen one interrupt, not many.
        assert 0 < r.interrupts[0] <= N
        assert r.python_exits == r.interrupts[0]  # the ISR reads; no kick left the kernel
    else:
        assert r.interrupts == [0]
        assert r.python_exits == 0                # no kick left the kernel
