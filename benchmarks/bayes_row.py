"""The vectorized section's `bayes_end_to_end` part alone, full plan, written to
benchmarks/results/bayes.json in the suite's format:

    python benchmarks/bayes_row.py

`python benchmarks/run.py --only vectorized` runs the same part with the rest of the section
(and the same target, `bayes_vs_sequential`); this runs it in a minute or two. Needs Optuna.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.suite import fits, machine, report, vectorized  # noqa: E402
from benchmarks.suite.context import Context  # noqa: E402
from jdnn.cli.commands import enable_compilation_cache  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main() -> None:
    enable_compilation_cache()  # as benchmarks/run.py does; the timed calls turn it off
    ctx = Context.create(quick=False)
    info = machine.describe()
    began = time.perf_counter()
    result = fits.run_one("bayes", ctx)
    info["load_average_end"] = machine.load_average()
    results = {"bayes_end_to_end": result}
    targets = [t for t in vectorized.targets_for(results) if t["key"] == "bayes_vs_sequential"]
    payload = {"name": "bayes", "mode": "full", "machine": info,
               "seconds": time.perf_counter() - began,
               "command": "python benchmarks/bayes_row.py (the vectorized section's "
                          "bayes_end_to_end part alone)",
               "results": results, "targets": targets, "failed": {}, "skipped": {}}
    print(report.write_result(RESULTS, "bayes", payload))
    for t in targets:
        print(t["status"], t["measured"], t["q1"], t["q3"], t["target"])
    for side, e in result["sides"].items():
        print(side, e["seconds"]["median"], e.get("ratio", {}).get("median"),
              result["compile"][side]["compile_s"]["median"])


if __name__ == "__main__":
    main()
