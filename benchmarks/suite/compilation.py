"""Compilation: how often `fit` compiles, and what the persistent compilation cache saves.

- Per fit, in a fresh process (so nothing is cached yet): every XLA compilation is recorded
  through `jax.monitoring` with its function name, while `fit` trains the digits MLP for a few
  epochs with validation, then a second `fit` in the same process. The training epoch must be
  compiled exactly once and nothing may compile after the first epoch.
- Across processes: `jdnn train --epochs 1` runs twice in fresh subprocesses sharing one
  temporary cache folder; the second run's compile time (XLA compile or cache fetch, summed over
  every program) is the target. The CLI's own cache switch (`JDNN_CACHE_DIR`) is used when the
  CLI has one, else JAX's `JAX_COMPILATION_CACHE_DIR`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.suite import targets
from benchmarks.suite.context import Context

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
          "/jax/core/compile/backend_compile_duration": "compile_s"}


class Recorder:
    """Collects `(event, function name, seconds)` of every trace, lowering and XLA compile (a
    persistent-cache fetch counts as the program's compile), and counts persistent-cache hits."""

    def __init__(self):
        self.events: list[tuple[str, str, float]] = []
        self.cache_hits = 0

    def __call__(self, event: str, seconds: float, **kw) -> None:
        if event in EVENTS:
            self.events.append((EVENTS[event], str(kw.get("fun_name", "?")), seconds))

    def _event(self, event: str, **kw) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.cache_hits += 1

    def __enter__(self) -> Recorder:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(self)
        monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        from jax import monitoring

        monitoring.unregister_event_duration_listener(self)
        monitoring.unregister_event_listener(self._event)

    def compiles(self, since: int = 0) -> list[tuple[str, float]]:
        return [(name, s) for kind, name, s in self.events[since:] if kind == "compile_s"]

    def totals(self, since: int = 0) -> dict[str, float]:
        out = dict.fromkeys(EVENTS.values(), 0.0)
        for kind, _, seconds in self.events[since:]:
            out[kind] += seconds
        return out


def fit_compilations(epochs: int = 3) -> dict:
    """Runs `jdnn.fit` (digits MLP, Adam, validation) and counts what compiles, and when."""
    import jax
    import optax

    import jdnn

    (x, y), test = jdnn.data.digits()
    model = jdnn.serial(jdnn.Dense(128), jdnn.Relu(), jdnn.Dense(10))
    marks = []

    class Mark(jdnn.Callback):
        def on_epoch_end(self, run):
            marks.append(len(recorder.events))

    def one_fit():
        start = len(recorder.events)
        began = time.perf_counter()
        jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy,
                 optimizer=optax.adam(1e-3), epochs=epochs, batch_size=32,
                 key=jax.random.key(0), validation_data=test, progress=False,
                 callbacks=[Mark()])
        compiles = recorder.compiles(start)
        return {"wall_s": time.perf_counter() - began,
                "compilations": len(compiles),
                "epoch_compilations": sum("epoch" in name for name, _ in compiles),
                "after_first_epoch": len(recorder.compiles(marks[-epochs])),
                "by_function": _by_function(compiles), **recorder.totals(start)}

    with Recorder() as recorder:
        first = one_fit()
        second = one_fit()
    return {"epochs": epochs, "first_fit": first, "second_fit_same_process": second}


def _by_function(compiles: list[tuple[str, float]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, seconds in compiles:
        entry = out.setdefault(name, {"count": 0, "seconds": 0.0})
        entry["count"] += 1
        entry["seconds"] += seconds
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["seconds"]))


_CHILD = """
import json, sys, time
began = time.perf_counter()
from benchmarks.suite.compilation import Recorder
from jdnn import cli
with Recorder() as recorder:
    status = cli.main(sys.argv[2:])
compiles = recorder.compiles()
print("BENCH-JSON " + json.dumps({"status": status, "wall_s": time.perf_counter() - began,
      "compilations": len(compiles), "cli_cache": hasattr(cli, "enable_compilation_cache"),
      **recorder.totals()}))
"""


_FIT_CHILD = """
import json
from benchmarks.suite.compilation import fit_compilations
print("BENCH-JSON " + json.dumps(fit_compilations()))
"""


def _child(code: str, args: list[str], env: dict) -> dict:
    """Runs `code` in a fresh Python and returns the JSON it prints after `BENCH-JSON `."""
    done = subprocess.run([sys.executable, "-c", code, "-", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    raise RuntimeError(f"the child process failed ({done.returncode}): {done.stderr[-2000:]}")


def fit_in_fresh_process() -> dict:
    """`fit_compilations` in a new Python process, with the persistent cache off."""
    env = dict(os.environ, JDNN_CACHE_DIR="off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return _child(_FIT_CHILD, [], env)


def _train_once(cache: str, out: str) -> dict:
    import jdnn.cli

    env = dict(os.environ)
    env.pop("JDNN_CACHE_DIR", None)
    if hasattr(jdnn.cli, "enable_compilation_cache"):
        env["JDNN_CACHE_DIR"] = cache
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return _child(_CHILD, ["train", "--epochs", "1", "--out", out, "--no-progress"], env)


def cache_runs() -> dict:
    """`jdnn train --epochs 1` twice, in fresh processes, with one shared cache folder."""
    with tempfile.TemporaryDirectory(prefix="jdnn-bench-cache-") as folder:
        cache = os.path.join(folder, "cache")
        first = _train_once(cache, os.path.join(folder, "run1"))
        second = _train_once(cache, os.path.join(folder, "run2"))
    mechanism = ("the CLI's own cache (JDNN_CACHE_DIR)" if first["cli_cache"]
                 else "JAX_COMPILATION_CACHE_DIR set by the benchmark (the CLI has no cache)")
    return {"first_run": first, "second_run": second, "mechanism": mechanism}


def run(ctx: Context) -> dict:
    del ctx
    print("  fit compilations (fresh process)", flush=True)
    per_fit = fit_in_fresh_process()
    print("  jdnn train twice with a persistent cache", flush=True)
    cache = cache_runs()
    first = per_fit["first_fit"]
    second_run = cache["second_run"]
    found = [
        targets.check("one_compilation_per_fit", "exactly one compilation of the training epoch "
                      "per fit", first["epoch_compilations"], 1, "<=", unit="",
                      note=f"in a fresh process: {first['compilations']} XLA compilations in "
                           f"all during the fit (init, validation, small ops), "
                           f"{first['compile_s']:.2f} s"),
        targets.check("no_compilation_after_first_epoch", "no compilation after the first epoch",
                      first["after_first_epoch"], 0, "<=", unit=""),
        targets.check("cache_second_run", "second `jdnn train` compiles in <= 0.5 s (persistent "
                      "cache)", second_run["compile_s"], 0.5, "<=", unit="s",
                      note=f"{cache['mechanism']}; first run {cache['first_run']['compile_s']:.2f}"
                           f" s; tracing+lowering in the second run "
                           f"{second_run['trace_s'] + second_run['lower_s']:.2f} s"),
    ]
    return {"results": {"fit": per_fit, "cache": cache}, "targets": found}
