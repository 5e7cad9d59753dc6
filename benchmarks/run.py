"""Runs jdnn's benchmark suite: `python benchmarks/run.py [--quick] [--only NAME] [--out DIR]`.

The suite lives in `jdnn.bench` (so `jdnn bench` works from an installed jdnn); this script is
only its entry point. Results: `benchmarks/results/` (JSON per benchmark, report.md, PNGs).
"""

import sys

from jdnn.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
