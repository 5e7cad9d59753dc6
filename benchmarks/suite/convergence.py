"""Time to 97% test accuracy on scikit-learn's digits, end to end, each side in a fresh process.

A small job is compile-bound, and what a user waits for starts at `python train.py`: imports,
first-call costs and compilation included. So every run here is a NEW Python process
(`python -m benchmarks.suite.convergence SIDE ...`), and the sides race the same 64-128-10 MLP
with Adam (lr 1e-3) at batch 32, from the same initial parameters (those `jdnn.fit(key=0)`
draws), evaluating the 450 test digits after every epoch and stopping at 97%:

- `jdnn_cold`: `jdnn.fit` with validation and a stopping callback, the persistent compilation
  cache on but EMPTY (a first run on a new machine);
- `jdnn_warm`: the same, the cache filled by an earlier (untimed) process (every later run);
- `numpy`: the tight hand-written float32 NumPy loop (`sides.tight_numpy.TightNet`);
- `reference`: `jdnn.reference`, the generic NumPy interpreter over specs: the correctness
  oracle, not a speed contender;
- `torch_fused`: PyTorch eager with `torch.optim.Adam(fused=True)`;
- `keras`: Keras 3 on JAX, `model.fit` (jit_compile, one epoch per execution), if installed.

Each process reports: seconds from its launch to 97% (`total_s`), of which importing the
side's library (`import_s`) and compiling (`compile_s`, JAX sides: trace + lower + XLA compile
or cache fetch), the epochs, and the time from launch to the first completed training step
(`first_step_s`; for jdnn, whose epoch is one compiled call, the end of the first epoch). The
harness's own imports (the shared workload definitions pull in JAX) are timed apart
(`harness_s`) and taken out of every side's times. Medians over the rounds' processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

TARGET_ACCURACY = 0.97
MAX_EPOCHS = 100
SIDES = ("jdnn_cold", "jdnn_warm", "numpy", "reference", "torch_fused", "keras")
QUICK_SIDES = ("jdnn_cold", "jdnn_warm", "numpy", "torch_fused")
TIMEOUT_S = 300


# --- the child: one side, one process --------------------------------------------------------

_LIBRARIES = {"jdnn_cold": ("jax", "jdnn", "optax"), "jdnn_warm": ("jax", "jdnn", "optax"),
              "numpy": ("numpy",), "reference": ("numpy", "jdnn.reference"),
              "torch_fused": ("numpy", "torch"), "keras": ("keras",)}


class Clock:
    """Times since the process was launched (`launched`, the parent's `time.time()`)."""

    def __init__(self, launched: float):
        self.launched = launched
        self.first_step: float | None = None
        self.harness_s = 0.0

    def since_launch(self) -> float:
        return time.time() - self.launched - self.harness_s

    def stepped(self) -> None:
        if self.first_step is None:
            self.first_step = self.since_launch()


def _import_side(side: str) -> float:
    """Imports the side's own libraries first, timed; raises `Skipped`-like ImportError."""
    import importlib

    if side == "keras":
        os.environ.setdefault("KERAS_BACKEND", "jax")
    began = time.perf_counter()
    for name in _LIBRARIES[side]:
        importlib.import_module(name)
    return time.perf_counter() - began


def _problem(data: dict):
    """The digits MLP problem with the shared initial parameters and the data."""
    from benchmarks.suite.workloads import Problem, build_model, digits_mlp, plan

    w = digits_mlp()
    params = {name: {"w": data[f"{name}/w"], "b": data[f"{name}/b"]}
              for name in data["names"]}
    model = build_model(w)
    for name in [n for n in _names(model) if n not in params]:
        params[name] = {}
    return Problem(w, model, plan(w), params, {n: {} for n in params}, data["x"], data["y"])


def _names(model) -> list[str]:
    from jdnn.core import child_name

    return [child_name(i, spec) for i, spec in enumerate(model.spec.children)]


def run_jdnn(problem, train, test, clock: Clock, max_epochs: int) -> dict:
    import optax

    import jdnn
    from benchmarks.suite.compilation import Recorder

    w = problem.workload

    class Stop(jdnn.Callback):
        def on_epoch_end(self, run):
            clock.stepped()
            if run.history.records[-1]["val_accuracy"] >= TARGET_ACCURACY:
                run.stop_reason = "target accuracy reached"

    with Recorder() as recorder:
        _, history = jdnn.fit(problem.model, train, loss=jdnn.losses.softmax_cross_entropy,
                              optimizer=optax.adam(w.lr), epochs=max_epochs,
                              batch_size=w.batch, key=0, validation_data=test, progress=False,
                              callbacks=[Stop()])
    totals = recorder.totals()
    return {"epochs": len(history.records), "accuracy": history.records[-1]["val_accuracy"],
            "compile_s": totals["compile_s"] + totals["trace_s"] + totals["lower_s"],
            "xla_compile_s": totals["compile_s"], "programs": len(recorder.compiles()),
            "cache_hits": recorder.cache_hits, "cache": jdnn.train.compilation_cache.cache_folder()}


def run_numpy(problem, train, test, clock: Clock, max_epochs: int) -> dict:
    from benchmarks.suite.sides import tight_numpy

    w = problem.workload
    net = tight_numpy.TightNet(problem.ops, problem.params, w.optimizer, w.lr, max_batch=w.batch)

    def step(x, y):
        net.step(x, y)

    def accuracy(x, y):
        return float(np.mean(np.argmax(net.predict(x), axis=1) == y))

    with tight_numpy.blas_limit(tight_numpy.blas_threads(w)):
        return _loop(w, train, test, step, accuracy, clock, max_epochs)


def run_reference(problem, train, test, clock: Clock, max_epochs: int) -> dict:
    from jdnn import reference

    w = problem.workload
    net = reference.build(problem.model.spec)
    opt = reference.optimizers.adam(w.lr)
    params = {k: dict(v) for k, v in problem.params.items()}
    opt_state = opt.init(params)

    def step(x, y):
        nonlocal params, opt_state
        _, grads, _ = net.loss_and_grads(params, problem.state, x, y, dtype=np.float32)
        params, opt_state = opt.update(grads, opt_state, params)

    def accuracy(x, y):
        out, _, _ = net.forward(params, problem.state, x)
        return float(np.mean(np.argmax(out, axis=1) == y))

    return _loop(w, train, test, step, accuracy, clock, max_epochs)


def run_torch_fused(problem, train, test, clock: Clock, max_epochs: int) -> dict:
    import torch

    from benchmarks.suite.sides import torch_side

    w = problem.workload
    net = torch_side.torch_model(problem, problem.params)
    opt = torch.optim.Adam(net.parameters(), lr=w.lr, eps=1e-8, fused=True)
    loss = torch.nn.functional.cross_entropy

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss(net(torch.from_numpy(x)), torch.from_numpy(y).long()).backward()
        opt.step()

    def accuracy(x, y):
        with torch.no_grad():
            out = net(torch.from_numpy(x)).numpy()
        return float(np.mean(np.argmax(out, axis=1) == y))

    return _loop(w, train, test, step, accuracy, clock, max_epochs)


def run_keras(problem, train, test, clock: Clock, max_epochs: int) -> dict:
    from benchmarks.suite.compilation import Recorder
    from benchmarks.suite.sides import keras_side

    keras = keras_side.keras_module()
    w = problem.workload
    model, _ = keras_side.keras_model(problem, problem.params)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=w.lr, epsilon=1e-8),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=-(-len(train[0]) // w.batch),
                  jit_compile=True)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.stepped()
            if (logs or {}).get("val_accuracy", 0.0) >= TARGET_ACCURACY:
                self.model.stop_training = True

    with Recorder() as recorder:
        history = model.fit(*train, batch_size=w.batch, epochs=max_epochs, shuffle=True,
                            validation_data=test, verbose=0, callbacks=[Stop()])
    totals = recorder.totals()
    accuracy = history.history["val_accuracy"]
    return {"epochs": len(accuracy), "accuracy": float(accuracy[-1]),
            "compile_s": totals["compile_s"] + totals["trace_s"] + totals["lower_s"],
            "programs": len(recorder.compiles())}


def _loop(w, train, test, step, accuracy, clock: Clock, max_epochs: int) -> dict:
    """The hand-written loop: a NumPy permutation per epoch, the last batch short, the test
    accuracy after each epoch."""
    (x, y), (x_test, y_test) = train, test
    rng = np.random.default_rng(w.seed)
    epochs, acc = 0, 0.0
    while epochs < max_epochs and acc < TARGET_ACCURACY:
        order = rng.permutation(len(x))
        for start in range(0, len(x), w.batch):
            batch = order[start:start + w.batch]
            step(x[batch], y[batch])
            clock.stepped()
        acc = accuracy(x_test, y_test)
        epochs += 1
    return {"epochs": epochs, "accuracy": acc, "compile_s": 0.0}


RUNNERS = {"jdnn_cold": run_jdnn, "jdnn_warm": run_jdnn, "numpy": run_numpy,
           "reference": run_reference, "torch_fused": run_torch_fused, "keras": run_keras}


def child(side: str, data_path: str, launched: float, max_epochs: int = MAX_EPOCHS) -> dict:
    """One side's end-to-end run in this (fresh) process; the dict `main` prints."""
    clock = Clock(launched)
    started = clock.since_launch()
    try:
        import_s = _import_side(side)
    except ImportError as error:
        return {"side": side, "skipped": f"{type(error).__name__}: {error}"}
    began = time.perf_counter()
    import benchmarks.suite.workloads  # noqa: F401  (pulls in JAX for every side: not timed)
    if side in ("numpy", "reference", "torch_fused"):
        import benchmarks.suite.sides.tight_numpy  # noqa: F401
        import benchmarks.suite.sides.torch_side  # noqa: F401
    with np.load(data_path) as npz:
        data = {k: npz[k] for k in npz.files}
    clock.harness_s = time.perf_counter() - began
    problem = _problem(data)
    train, test = (data["x"], data["y"]), (data["x_test"], data["y_test"])
    try:
        result = RUNNERS[side](problem, train, test, clock, max_epochs)
    except Exception as error:  # noqa: BLE001 - a side that cannot run here is reported
        if type(error).__name__ != "Skipped":
            raise
        return {"side": side, "skipped": str(error)}
    total = clock.since_launch()
    return {"side": side, "total_s": total, "import_s": import_s, "startup_s": started,
            "first_step_s": clock.first_step, "harness_s": clock.harness_s,
            "reached": result["accuracy"] >= TARGET_ACCURACY, **result}


def main(argv: list[str]) -> int:
    side, data_path, launched = argv[0], argv[1], float(argv[2])
    max_epochs = int(argv[3]) if len(argv) > 3 else MAX_EPOCHS
    print("BENCH-JSON " + json.dumps(child(side, data_path, launched, max_epochs)), flush=True)
    return 0


# --- the parent: the shared inputs, the processes, the medians -------------------------------


def shared_inputs(path: str) -> dict:
    """Writes the data and the initial parameters `jdnn.fit(key=0)` draws to `path` (.npz)."""
    import jax
    import optax

    import jdnn
    from benchmarks.suite.workloads import build_model, digits_mlp

    w = digits_mlp()
    (x, y), (x_test, y_test) = jdnn.data.digits()
    model = build_model(w)
    state = jdnn.TrainState.create(model, optax.adam(w.lr), 0, (w.batch, *x.shape[1:]))
    params = jax.tree.map(np.asarray, state.params)
    arrays = {f"{name}/{k}": v for name, leaves in params.items() for k, v in leaves.items()}
    names = np.array([name for name, leaves in params.items() if leaves])
    np.savez(path, x=np.asarray(x, np.float32), y=np.asarray(y), x_test=np.asarray(
        x_test, np.float32), y_test=np.asarray(y_test), names=names, **arrays)
    return {"workload": w.describe(), "train_examples": len(x), "test_examples": len(x_test)}


def launch(side: str, data_path: str, env: dict, max_epochs: int = MAX_EPOCHS,
           timeout: float = TIMEOUT_S) -> dict:
    """Runs one side in a fresh Python process; its result dict (or `skipped`/`error`)."""
    launched = time.time()
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.suite.convergence", side,
                               data_path, repr(launched), str(max_epochs)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"side": side, "error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    return {"side": side, "error": f"exit {done.returncode}: {done.stderr.strip()[-600:]}"}


def child_env(cache: str | None) -> dict:
    """The environment of a child: the repository importable, jdnn's cache in `cache` (None:
    off), JAX's own cache variable removed (so jdnn's applies), one thread per BLAS like the
    rest of the suite unless set."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JDNN_CACHE_DIR"] = cache if cache is not None else "off"
    return env


def _summary(values: list[dict]) -> dict:
    def median(key):
        found = [v[key] for v in values if v.get(key) is not None]
        return float(np.median(found)) if found else None

    keys = ("total_s", "import_s", "compile_s", "first_step_s", "startup_s", "harness_s",
            "epochs", "accuracy", "programs", "cache_hits")
    return {**{f"median_{k}" if k != "epochs" else k: median(k) for k in keys},
            "reached": all(v["reached"] for v in values), "processes": len(values),
            "runs": values}


def run(ctx) -> dict:
    sides = QUICK_SIDES if ctx.quick else SIDES
    rounds = 1 if ctx.quick else 3
    runs: dict[str, list] = {side: [] for side in sides}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="jdnn-convergence-") as folder:
        data_path = os.path.join(folder, "inputs.npz")
        inputs = shared_inputs(data_path)
        warm = os.path.join(folder, "warm-cache")
        fill = launch("jdnn_warm", data_path, child_env(warm))   # fills the warm cache, untimed
        if "error" in fill:
            errors["jdnn_warm (filling the cache)"] = fill["error"]
        for r in range(rounds):
            for side in sides:
                if side in skipped:
                    continue
                time.sleep(ctx.settings.pause_s)
                cache = (warm if side == "jdnn_warm" else
                         os.path.join(folder, f"cold-{r}") if side == "jdnn_cold" else None)
                result = launch(side, data_path, child_env(cache))
                if "skipped" in result:
                    skipped[side] = result["skipped"]
                elif "error" in result:
                    errors[side] = result["error"]
                else:
                    runs[side].append(result)
    summary = {side: _summary(values) for side, values in runs.items() if values}
    for side, s in summary.items():
        print(f"    {side:12s} {s['median_total_s']:6.2f} s to {TARGET_ACCURACY:.0%} "
              f"(import {s['median_import_s']:.2f}, compile {s['median_compile_s']:.2f}, first "
              f"step at {s['median_first_step_s']:.2f} s), {s['epochs']:.0f} epochs", flush=True)
    return {"results": {**inputs, "target_accuracy": TARGET_ACCURACY, "max_epochs": MAX_EPOCHS,
                        "rounds": rounds, "sides": summary, "skipped": skipped,
                        "errors": errors}, "targets": []}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
