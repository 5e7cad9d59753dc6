"""Time to 97% test accuracy on scikit-learn's digits, from the same initial parameters.

jdnn trains with `fit` (scan-fused epochs, validation each epoch, stopped by a callback at the
target); the NumPy reference and PyTorch run the same model, optimizer, batch size and epoch
loop (a NumPy permutation per epoch, the last batch short) and evaluate after each epoch. The
wall time is what a user waits, compilation included; jdnn's compile time is also given apart.
The runs are interleaved in rounds like every other timing.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from benchmarks.suite.compilation import Recorder
from benchmarks.suite.context import Context
from benchmarks.suite.sides import Skipped, jdnn_side, torch_side
from benchmarks.suite.workloads import digits_mlp, make_problem

TARGET_ACCURACY = 0.97
MAX_EPOCHS = 100


def _data():
    from jdnn.data import digits

    return digits()


def run_jdnn(problem, train, test) -> dict:
    import jdnn

    w = problem.workload

    class Stop(jdnn.Callback):
        def on_epoch_end(self, run):
            if run.history.records[-1]["val_accuracy"] >= TARGET_ACCURACY:
                run.stop_reason = "target accuracy reached"

    began = time.perf_counter()
    with Recorder() as recorder:
        _, history = jdnn.fit(problem.model, train, loss=jdnn.losses.softmax_cross_entropy,
                              optimizer=jdnn_side.optimizer(w), epochs=MAX_EPOCHS,
                              batch_size=w.batch, key=0,
                              train_state=jdnn_side.train_state(problem),
                              validation_data=test, progress=False, callbacks=[Stop()])
    totals = recorder.totals()
    accuracy = history.records[-1]["val_accuracy"]
    return {"seconds": time.perf_counter() - began, "epochs": len(history.records),
            "accuracy": accuracy, "reached": accuracy >= TARGET_ACCURACY,
            "compile_s": totals["compile_s"] + totals["trace_s"] + totals["lower_s"]}


def run_numpy(problem, train, test) -> dict:
    from jdnn import reference

    w = problem.workload
    net = reference.build(problem.model.spec)
    opt = reference.optimizers.adam(w.lr)
    params = jax.tree.map(np.array, problem.params)
    opt_state = opt.init(params)

    def step(x, y):
        nonlocal params, opt_state
        _, grads, _ = net.loss_and_grads(params, problem.state, x, y, dtype=np.float32)
        params, opt_state = opt.update(grads, opt_state, params)

    def accuracy(x, y):
        out, _, _ = net.forward(params, problem.state, x)
        return float(np.mean(np.argmax(out, axis=1) == y))

    return _loop(w, train, test, step, accuracy)


def run_torch(problem, train, test) -> dict:
    torch = torch_side.require("torch")
    w = problem.workload
    net = torch_side.torch_model(problem, problem.params)
    opt = torch.optim.Adam(net.parameters(), lr=w.lr, eps=1e-8)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)),
                                          torch.from_numpy(y).long()).backward()
        opt.step()

    def accuracy(x, y):
        with torch.no_grad():
            out = net(torch.from_numpy(x)).numpy()
        return float(np.mean(np.argmax(out, axis=1) == y))

    return _loop(w, train, test, step, accuracy)


def _loop(w, train, test, step, accuracy) -> dict:
    (x, y), (x_test, y_test) = train, test
    rng = np.random.default_rng(w.seed)
    began = time.perf_counter()
    epochs, acc = 0, 0.0
    while epochs < MAX_EPOCHS and acc < TARGET_ACCURACY:
        order = rng.permutation(len(x))
        for start in range(0, len(x), w.batch):
            batch = order[start:start + w.batch]
            step(x[batch], y[batch])
        acc = accuracy(x_test, y_test)
        epochs += 1
    return {"seconds": time.perf_counter() - began, "epochs": epochs, "accuracy": acc,
            "reached": acc >= TARGET_ACCURACY, "compile_s": 0.0}


RUNNERS = {"jdnn_fit": run_jdnn, "numpy": run_numpy, "torch": run_torch}


def run(ctx: Context) -> dict:
    w = digits_mlp()
    problem = make_problem(w)
    train, test = _data()
    rounds = 1 if ctx.quick else 3
    runs: dict[str, list] = {name: [] for name in RUNNERS}
    skipped = {}
    if ctx.quick:
        skipped["torch"] = "full run only (its eager loop takes tens of seconds here)"
    for _ in range(rounds):
        for name, fn in RUNNERS.items():
            if name in skipped:
                continue
            time.sleep(ctx.settings.pause_s)
            try:
                runs[name].append(fn(problem, train, test))
            except Skipped as reason:
                skipped[name] = str(reason)
    summary = {}
    for name, values in runs.items():
        if values:
            summary[name] = {"median_seconds": float(np.median([v["seconds"] for v in values])),
                             "epochs": values[0]["epochs"], "accuracy": values[0]["accuracy"],
                             "reached": all(v["reached"] for v in values),
                             "compile_s": float(np.median([v["compile_s"] for v in values])),
                             "runs": values}
            print(f"    {name:9s} {summary[name]['median_seconds']:7.2f} s, "
                  f"{summary[name]['epochs']} epochs, accuracy {summary[name]['accuracy']:.4f}",
                  flush=True)
    return {"results": {"workload": w.describe(), "target_accuracy": TARGET_ACCURACY,
                        "max_epochs": MAX_EPOCHS, "rounds": rounds, "sides": summary,
                        "skipped": skipped}, "targets": []}
