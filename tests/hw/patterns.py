"""Test data that tells its bytes apart: a sha256 stream, the same for the same seed."""

import hashlib


def pattern(seed, size):
    """`size` bytes from sha256("seed:0"), sha256("seed:1"), ...: no two sectors alike."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])
