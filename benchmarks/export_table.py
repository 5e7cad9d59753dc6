"""The export table: size, load time and latency of a trained digits model, three ways.

For the digits MLP (64-256-10) and CNN (conv32-pool-conv64-pool-dense128-10) of `jdnn train`
(trained for a few epochs), the columns compare:

- jdnn: in-process `jdnn.predict` (a jitted, batched scan) on the checkpoint's params. Size: the
  params and state as a safetensors checkpoint without optimizer state; load: `restore` plus the
  first prediction (its compile).
- jdnn apply (jax.jit): the model's `apply` jitted by hand on the same params, what the
  artifact's program is before serialization (load: the jit's first call, restore excluded).
- StableHLO: `jdnn.export.save` (platforms cpu+cuda, batch dynamic), called through
  `jdnn.export.load` (a jitted `Exported.call`). Size: model.stablehlo; load: deserialize plus
  the first call (its compile).
- ONNX: `jdnn.export.to_onnx`, run by onnxruntime's CPU provider. Size: the .onnx file; load:
  `InferenceSession` plus the first run.

Latency per example at batch 1 and 256, NumPy in, NumPy out for all three (so each includes its
host copies): after warm-up, every side is timed in turn within each round (the order rotating
per round), `CALLS` calls per sample, each result made ready (`block_until_ready` / a NumPy
array) before the clock stops; medians over the rounds. Ratios are to jdnn in the same process.
Load times are single cold measurements (first load of each program in the process). Run:
`python benchmarks/export_table.py [--rounds N] [--epochs N]`; needs `pip install -e ".[onnx]"`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jdnn  # noqa: E402
from jdnn import checkpoint, export  # noqa: E402
from jdnn.cli import run  # noqa: E402

CALLS = 20          # calls timed back to back per sample
BATCHES = (1, 256)


def train(name: str, epochs: int):
    """The `jdnn train` model `name` on digits, trained for `epochs` epochs."""
    config = run.Config(model=name, epochs=epochs, progress=False)
    (x, y), (xt, yt) = run.load(config)
    model = run.build(config, 10)
    ts, _ = jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy,
                     optimizer=run.make_optimizer(config), epochs=epochs, batch_size=32,
                     key=jax.random.key(0), progress=False)
    return model, ts, xt


def sides(model, ts, x_test, folder: str):
    """`{side: (size in bytes, load seconds, predict(x) -> NumPy)}`."""
    import onnxruntime as ort

    shape = (1, *x_test.shape[1:])
    ckpt = os.path.join(folder, "params.safetensors")
    checkpoint.save(ckpt, ts._replace(opt_state=()), model)
    hlo = export.save(os.path.join(folder, "stablehlo"), model, ts, shape)
    onnx_path = str(export.to_onnx(os.path.join(folder, "model.onnx"), model, ts, shape))
    first = x_test[:1]
    out = {}

    began = time.perf_counter()
    restored = checkpoint.restore(ckpt, model)
    ts_jdnn = jdnn.TrainState(restored.params, restored.state, (), restored.key, restored.step)
    jdnn.predict(model, ts_jdnn, first)
    out["jdnn"] = (os.path.getsize(ckpt), time.perf_counter() - began,
                   lambda x: jdnn.predict(model, ts_jdnn, x))

    began = time.perf_counter()
    apply = jax.jit(lambda x: model.apply(ts_jdnn.params, ts_jdnn.state, x)[0])
    np.asarray(apply(first))
    out["jdnn apply (jax.jit)"] = (os.path.getsize(ckpt), time.perf_counter() - began,
                                   lambda x: np.asarray(apply(x)))

    began = time.perf_counter()
    artifact = export.load(hlo)
    np.asarray(artifact(first))
    out["StableHLO"] = (os.path.getsize(os.path.join(hlo, "model.stablehlo")),
                        time.perf_counter() - began, lambda x: np.asarray(artifact(x)))

    began = time.perf_counter()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    session.run(None, {"x": first})
    out["ONNX (onnxruntime)"] = (os.path.getsize(onnx_path), time.perf_counter() - began,
                                 lambda x: session.run(None, {"x": x})[0])
    return out


def latencies(predictors: dict, x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median seconds per example of each predictor on `x`, interleaved rounds."""
    names = list(predictors)
    reference = predictors[names[0]](x)
    for name in names:   # warm-up, and every side agrees with jdnn
        for _ in range(3):
            y = predictors[name](x)
        np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            predict = predictors[name]
            began = time.perf_counter()
            for _ in range(CALLS):
                predict(x)
            samples[name].append((time.perf_counter() - began) / CALLS / len(x))
    return {name: statistics.median(s) for name, s in samples.items()}


def table(results: dict) -> str:
    rows = ["| model | runtime | size | load + first call | latency/example, batch 1 | "
            "latency/example, batch 256 |", "|---|---|---:|---:|---:|---:|"]
    for model, sides_ in results.items():
        base = sides_["jdnn"]
        for side, r in sides_.items():
            ratio = "" if side == "jdnn" else " ({:.2f}x)"
            cells = [f"{r[f'b{b}'] * 1e6:.2f} us" + ratio.format(r[f"b{b}"] / base[f"b{b}"])
                     for b in BATCHES]
            rows.append(f"| {model} | {side} | {r['size'] / 1024:.0f} KiB | "
                        f"{r['load'] * 1e3:.0f} ms | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    results = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("mlp", "cnn"):
            model, ts, x_test = train(name, args.epochs)
            found = sides(model, ts, x_test, os.path.join(folder, name))
            row = {side: {"size": size, "load": load} for side, (size, load, _) in found.items()}
            predictors = {side: predict for side, (_, _, predict) in found.items()}
            for batch in BATCHES:
                x = x_test[rng.integers(0, len(x_test), batch)]
                for side, seconds in latencies(predictors, x, args.rounds).items():
                    row[side][f"b{batch}"] = seconds
            results[f"digits {name.upper()}"] = row
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("jax", "jaxlib", "jax2onnx",
                                                                "onnxruntime"))
    print(f"jdnn {jdnn.__version__}; {versions}; python {platform.python_version()}; "
          f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; rounds {args.rounds} x "
          f"{CALLS} calls\n")
    print(table(results))


if __name__ == "__main__":
    main()
