"""Runs jdnn's benchmark suite: `python benchmarks/run.py [--quick] [--only NAME] [--out DIR]`.

The suite is the package `benchmarks.suite` in this repository (it is not installed with jdnn);
this script puts the repository root on the import path and calls it. Results:
`benchmarks/results/` (JSON per benchmark, report.md, PNGs). See benchmarks/README.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.suite.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
