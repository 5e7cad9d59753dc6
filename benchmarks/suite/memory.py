"""Peak memory per side: what training costs in RAM beyond the libraries themselves.

Each (side, workload) runs in its own fresh Python process (`python -m benchmarks.suite.memory
SIDE WORKLOAD`), so one side's allocator pools and caches never count against another. The
process imports everything, records its resident set (RSS) after imports, makes the workload's
problem (the shared data and initial parameters, the same for every side), records the RSS
again and resets the kernel's peak counter, then builds the side's runner
(`sides.SIDES[name].build(problem)`) and trains a few steps. Reported, in MiB:

- `peak_over_imports`: the process's peak RSS minus its RSS after imports: the problem's data,
  the side's copies of it, its parameters and optimizer state, activations, compilation,
  allocator slack. The peak is the kernel's `VmHWM` of this process's own address space, not
  `ru_maxrss`: after a `fork`/`vfork` + `exec`, `ru_maxrss` starts at the PARENT's peak (the
  suite's process, hundreds of MiB), which would drown every side's number;
- `training_peak`: the peak while the side was built and trained, over the RSS once the
  problem existed (the kernel's `VmHWM`, reset through `/proc/self/clear_refs`): the side's own
  cost, without the shared inputs; None where the counter cannot be reset;
- JAX sides: XLA's own view, `jax.devices()[0].memory_stats()` (None on the CPU backend, which
  keeps no such statistics; said so), and for jdnn's sides the compiled program's
  `memory_analysis()`: argument + output + temporary buffer bytes of one step (or one epoch).

RSS counts pages touched, not bytes asked for: a framework that reserves and reuses a pool looks
the same as one that allocates exactly, and freed memory kept by the allocator still counts.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import time

SIDES = ("jdnn_step", "jdnn_epoch", "numpy", "reference", "raw_jax", "torch", "equinox",
         "linen")
QUICK_SIDES = ("jdnn_step", "jdnn_epoch", "numpy", "raw_jax", "torch")
WORKLOADS = ("mlp_b128", "mlp_b1024", "cnn_b64")
QUICK_WORKLOADS = ("mlp_b128",)
TIMEOUT_S = 240
# What importing a side's library means: the modules its side uses.
_LIBRARY_MODULES = {"torch": ("torch", "torch.nn", "torch.optim"),
                    "flax": ("flax", "flax.linen", "flax.nnx", "optax"),
                    "equinox": ("equinox", "optax")}
MIB = 2**20


def _workload(name: str):
    from benchmarks.suite import workloads

    return {"mlp_b128": lambda: workloads.mlp(128), "mlp_b1024": lambda: workloads.mlp(1024),
            "cnn_b64": lambda: workloads.cnn(64)}[name]()


# --- the child --------------------------------------------------------------------------------


def rss_bytes() -> int:
    """The process's resident set now (`VmRSS`), in bytes."""
    return _status_kib("VmRSS") * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_bytes() -> int:
    """The peak resident set of this address space since exec (or the last `reset_peak`), in
    bytes (`VmHWM`)."""
    return _status_kib("VmHWM") * 1024


def ru_maxrss_bytes() -> int:
    """`ru_maxrss` (KiB on Linux), in bytes: includes the parent's peak when started by fork."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    """Resets the kernel's peak-RSS counter (`VmHWM`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _compiled_analysis(side: str, problem) -> dict | None:
    """The compiled step's (or epoch's) `memory_analysis()` for jdnn's sides, else None."""
    if side not in ("jdnn_step", "jdnn_epoch"):
        return None
    import jax
    import numpy as np

    import jdnn
    from benchmarks.suite.sides import jdnn_side

    w = problem.workload
    state = jdnn_side.train_state(problem)
    loss, opt = jdnn_side.loss_fn(w), jdnn_side.optimizer(w)
    if side == "jdnn_step":
        fn = jdnn.make_train_step(problem.model, loss, opt)
        args = (state, problem.x[:w.batch], problem.y[:w.batch])
    else:
        from jdnn.train.fit import make_epoch
        from jdnn.train.step import train_step_fn

        fn = make_epoch(train_step_fn(problem.model, loss, opt), w.batch)
        args = (state, problem.x, problem.y, np.arange(len(problem.x)))
    stats = fn.lower(*jax.tree.map(_abstract, args)).compile().memory_analysis()
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {f: int(getattr(stats, f)) for f in fields if hasattr(stats, f)}


def _abstract(leaf):
    """`leaf`'s shape and dtype, for lowering without running."""
    import jax
    import numpy as np

    return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype if hasattr(leaf, "dtype")
                                else np.asarray(leaf).dtype)


def child(side: str, workload: str, steps: int | None = None) -> dict:
    """One side on one workload in this fresh process; the dict `main` prints."""
    began = time.perf_counter()
    import jax

    from benchmarks.suite.sides import SIDES as ALL_SIDES
    from benchmarks.suite.sides import Skipped
    from benchmarks.suite.workloads import make_problem

    library = ALL_SIDES[side].library
    if library is not None:   # the side's own library counts as an import, not as training
        try:
            for name in _LIBRARY_MODULES.get(library, (library,)):
                importlib.import_module(name)
        except ImportError as error:
            return {"side": side, "workload": workload,
                    "skipped": f"{library} is not installed ({error})"}
    gc.collect()
    after_imports = rss_bytes()
    problem = make_problem(_workload(workload))
    gc.collect()
    after_problem = rss_bytes()
    setup_peak = peak_rss_bytes()
    can_reset = reset_peak()
    try:
        runner = ALL_SIDES[side].build(problem)
    except Skipped as reason:
        return {"side": side, "workload": workload, "skipped": str(reason)}
    n = steps if steps is not None else max(runner.quantum, 3)
    n = -(-n // runner.quantum) * runner.quantum
    runner.run(n)
    runner.run(n)   # again: buffers reused or grown, optimizer state in place
    training_peak = peak_rss_bytes() if can_reset else None
    peak = max(setup_peak, peak_rss_bytes())
    result = {"side": side, "workload": workload, "steps": 2 * n,
              "after_imports_mib": after_imports / MIB,
              "problem_mib": (after_problem - after_imports) / MIB,
              "peak_over_imports_mib": (peak - after_imports) / MIB,
              "training_peak_mib": (None if training_peak is None
                                    else (training_peak - after_problem) / MIB),
              "ru_maxrss_mib": ru_maxrss_bytes() / MIB,
              "seconds": time.perf_counter() - began}
    if side in ("jdnn_step", "jdnn_epoch", "raw_jax", "equinox", "linen"):
        stats = jax.devices()[0].memory_stats()
        result["xla_memory_stats"] = (
            {k: v for k, v in stats.items() if "bytes" in k} if stats else None)
        result["xla_memory_stats_note"] = (None if stats else
                                          f"memory_stats() is None on {jax.default_backend()}")
        try:
            result["compiled"] = _compiled_analysis(side, problem)
        except Exception as error:  # noqa: BLE001 - an analysis the backend lacks is reported
            result["compiled"] = None
            result["compiled_note"] = f"{type(error).__name__}: {error}"[:200]
    return result


def main(argv: list[str]) -> int:
    steps = int(argv[2]) if len(argv) > 2 else None
    print("BENCH-JSON " + json.dumps(child(argv[0], argv[1], steps)), flush=True)
    return 0


# --- the parent -------------------------------------------------------------------------------


def launch(side: str, workload: str, steps: int | None = None,
           timeout: float = TIMEOUT_S) -> dict:
    """One side on one workload in a fresh Python process: its result dict, or
    `skipped`/`error`."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    args = [side, workload] + ([str(steps)] if steps is not None else [])
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.suite.memory", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"side": side, "workload": workload, "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    return {"side": side, "workload": workload,
            "error": f"exit {done.returncode}: {done.stderr.strip()[-600:]}"}


def run(ctx) -> dict:
    sides = QUICK_SIDES if ctx.quick else SIDES
    chosen = QUICK_WORKLOADS if ctx.quick else WORKLOADS
    results: dict[str, dict] = {}
    for workload in chosen:
        print(f"  memory: {workload}", flush=True)
        row = results.setdefault(workload, {"description": _workload(workload).describe(),
                                            "sides": {}})
        for side in sides:
            result = launch(side, workload)
            row["sides"][side] = result
            if "peak_over_imports_mib" in result:
                training = result["training_peak_mib"]
                print(f"    {side:11s} peak over imports {result['peak_over_imports_mib']:7.1f} "
                      f"MiB, training {'?' if training is None else f'{training:.1f}'} MiB",
                      flush=True)
    return {"results": {"workloads": results}, "targets": []}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
