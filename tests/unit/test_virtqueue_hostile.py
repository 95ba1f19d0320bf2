"""A hostile guest: random bytes and random fields in the rings.

Whatever the guest writes, the device side may only ever raise GuestError with one of
the known rules, never another exception; and it never touches memory outside the
guest: the guest memory is small and has PROT_NONE guard pages on both sides, so a
stray access would kill the test process, and every buffer handed out is checked to
lie inside guest memory. The strategies are lguest.testing's (lguest/testing/rings.py),
the same a tool uses against a device of its own.
"""

from hypothesis import given, settings
from hypothesis_budget import examples

from lguest.devices.rng import RngDevice
from lguest.devices.inmemory import CountingEntropy
from lguest.testing import (exercise_queue, random_address_rings, random_byte_rings,
                            random_field_rings, ring_memory, serve_hostile)
from lguest.virtqueue import SEED_RULES


def exercise(ring, rounds=8):
    with ring_memory() as mem:
        vq = ring.build(mem)
        rules = exercise_queue(mem, vq, rounds)
        del vq
    return rules


@settings(max_examples=examples(150))
@given(ring=random_byte_rings())
def test_random_bytes_in_the_rings(ring):
    assert set(exercise(ring)) <= SEED_RULES


@settings(max_examples=examples(200))
@given(ring=random_field_rings())
def test_random_fields_in_descriptors(ring):
    """Structured garbage reaches deeper than random bytes."""
    assert set(exercise(ring)) <= SEED_RULES


@settings(max_examples=examples(50))
@given(ring=random_address_rings())
def test_random_ring_addresses(ring):
    assert set(exercise(ring, rounds=2)) <= SEED_RULES


@settings(max_examples=examples(50))
@given(ring=random_field_rings())
def test_a_real_device_on_a_hostile_ring_raises_only_guest_errors(ring):
    errors = serve_hostile(RngDevice(CountingEntropy()), ring)
    # The ring's rules, or the device's own: a readable buffer is the driver's fault.
    assert {e.rule for e in errors} <= SEED_RULES | {"Output buffers in rng?"}
    assert all(e.device == "rng" for e in errors)
