#!/usr/bin/env python3
"""Record a trap stream of the simulated guest for tests/data (trace format v1).

    scripts/make-trace-fake.py OUT.trace SEED DEVICE...    e.g.  x.trace 1 console block:8 rng

Each checked-in stream under tests/data was made by this script; its header says
with which arguments, and tests/unit/test_tracefile_streams.py replays it.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lguest.backends import tracefile  # noqa: E402
from lguest.simulation import simulate  # noqa: E402


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, seed, kinds = argv[0], int(argv[1]), argv[2:]
    records = []
    exit_, _, _ = simulate(kinds, seed=seed, record=records)
    if exit_.status != 0:
        print(f"the simulated guest failed: {exit_.reason}", file=sys.stderr)
        return 1
    header = {"config": {"devices": kinds, "mem_mb": 8, "seed": seed, "word_size": 8},
              "comment": "made by scripts/make-trace-fake.py " + " ".join(argv[1:])}
    tracefile.write_trace(out, header, records)
    print(f"{out}: {len(records)} records; {exit_.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
