"""Benchmark carvis against the I/O floor and the seed's method (same as `carvis bench`).

    .venv/bin/python scripts/bench.py ../shared/data/axionaut/race.mp4 \
        --model ../shared/data/axionaut/autopilot.hdf5 --profile models/axionaut.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carvis import cli

if __name__ == "__main__":
    sys.exit(cli.main(["bench", *sys.argv[1:]]))
