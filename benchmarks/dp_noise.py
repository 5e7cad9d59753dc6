"""DP-SGD's noise draw: a hand-written Threefry-to-normal sampler against `jax.random.normal`.

    python benchmarks/dp_noise.py [--rounds 41] [--chunk-s 0.2] [--out FILE.json]

`jdnn.privacy.dp` drew its Gaussian noise with a hand-written sampler (both 32-bit words of each
Threefry-2x32 hash used, JAX's bits-to-normal transform, the draw padded to a multiple of 16
entries). It now draws `jax.random.normal` under `jax.threefry_partitionable(False)`, which
makes the same bits (the `jdnn` variant). This script measures what each choice costs, end to
end: a whole DP-SGD step (`jdnn.make_dp_train_step`, ghost clipping, SGD) on

  digits     64-128-10 ReLU MLP, batch 128 (9,738 parameters)
  mnist      784-512-512-10 ReLU MLP, batch 256 (669,706 parameters)
  mnist_odd  784-511-512-10, batch 256: an odd parameter count (668,409)

with these noise draws swapped in (each step is a different compiled program):

  threefry      the hand-written sampler, copied below as it stood in `jdnn/privacy/dp.py`
  normal        `jax.random.normal` of exactly the parameter count
  normal_pad2   `jax.random.normal` of the count rounded up to an even number, sliced
  legacy_pad2   the same under `jax.threefry_partitionable(False)`, JAX's default before 0.5:
                both 32-bit words of each Threefry hash used (half the hashing)
  jdnn          `jdnn.privacy.dp.gaussian_noise` as it is: the same, rounded up to a multiple
                of 16 (bit for bit the hand-written sampler's draw from the key it derived)
  no_noise      `noise_multiplier=0`: no draw at all (what the noise costs on top)

The noise function is swapped by patching `jdnn.privacy.dp.gaussian_noise` while each step is
traced (its first call); the compiled step keeps what it traced. The variants run interleaved in
shuffled rounds after warm-up (`benchmarks.suite.timing.interleave`: a pause and an untimed step
before each timed chunk, `block_until_ready` at the end of it), and are reported as medians and
interquartile ranges over rounds, with each variant's ratio to `normal_pad2` taken within each
round. The raw draws of the same sizes (and of an odd one) are timed the same way, alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.extend.random import threefry_2x32

import jdnn
from benchmarks.suite import timing
from jdnn.privacy import dp

BLOCK = 16

# --- the hand-written sampler, as it stood in jdnn/privacy/dp.py -----------------------------


def _uniform_from_words(words, dtype):
    finfo = jnp.finfo(dtype)
    bits, mantissa = finfo.bits, finfo.nmant
    uint = jnp.dtype(f"uint{bits}")
    if bits == 64:
        high, low = jnp.split(words, 2)
        words = (high.astype(uint) << np.uint64(32)) | low.astype(uint)
    else:
        words = (words >> np.uint32(32 - bits)).astype(uint)
    one = np.array(1.0, dtype).view(uint)
    floats = lax.bitcast_convert_type((words >> uint.type(bits - mantissa)) | one, dtype) - 1.0
    low_end = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
    width = (np.array(1.0, dtype) - low_end).astype(dtype)
    return jnp.maximum(low_end, floats * width + low_end)


def threefry_normal(key, size, dtype=jnp.float32):
    words_per_entry = 2 if jnp.finfo(dtype).bits == 64 else 1
    padded = -(-size // BLOCK) * BLOCK
    pair = jax.random.bits(key, (2,), jnp.uint32)
    words = threefry_2x32(pair, lax.iota(jnp.uint32, padded * words_per_entry))
    return (np.array(np.sqrt(2.0), dtype) * lax.erf_inv(_uniform_from_words(words, dtype)))[:size]


# --- the candidates ---------------------------------------------------------------------------


def normal(key, size, dtype=jnp.float32):
    return jax.random.normal(key, (size,), dtype)


def normal_pad2(key, size, dtype=jnp.float32):
    return jax.random.normal(key, (size + size % 2,), dtype)[:size]


def legacy_pad2(key, size, dtype=jnp.float32):
    with jax.threefry_partitionable(False):
        return jax.random.normal(key, (size + size % 2,), dtype)[:size]


def legacy_pad16(key, size, dtype=jnp.float32):
    """What `jdnn.privacy.dp.gaussian_noise` draws (for the draw-alone timings)."""
    with jax.threefry_partitionable(False):
        return jax.random.normal(key, (-(-size // BLOCK) * BLOCK,), dtype)[:size]


SAMPLERS = {"threefry": threefry_normal, "normal": normal, "normal_pad2": normal_pad2,
            "legacy_pad2": legacy_pad2}
DRAWS = {**SAMPLERS, "jdnn": legacy_pad16}


def noise_with(sampler):
    """`dp.gaussian_noise`'s contract (one draw for the whole tree, cut into leaves) with
    `sampler(key, size, dtype)` drawing the normals."""

    def gaussian_noise(key, tree, std):
        leaves, treedef = jax.tree.flatten(tree)
        sizes = [leaf.size for leaf in leaves]
        noise = sampler(key, sum(sizes), jnp.result_type(*leaves))
        starts = np.cumsum([0, *sizes[:-1]])
        return jax.tree.unflatten(treedef, [
            leaf + std * noise[s:s + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
            for leaf, s in zip(leaves, starts)])

    return gaussian_noise


# --- end to end: the DP-SGD step --------------------------------------------------------------

MODELS = {"digits": ((64,), (128,), 128), "mnist": ((784,), (512, 512), 256),
          "mnist_odd": ((784,), (511, 512), 256)}
CLIP, SIGMA = 1.0, 1.1


def _problem(name):
    features, hidden, batch = MODELS[name]
    layers = [layer for width in hidden for layer in (jdnn.Dense(width), jdnn.Relu())]
    model = jdnn.serial(*layers, jdnn.Dense(10))
    _, params, state = model.init(jax.random.key(0), (batch, *features))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, *features), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    return model, params, state, x, y


def step_variants(name):
    """A `timing.Variant` per noise draw, each compiled (first call timed apart)."""
    model, params, state, x, y = _problem(name)
    optimizer = optax.sgd(0.01)
    variants, compiled = [], {}
    for label in (*SAMPLERS, "jdnn", "no_noise"):
        sigma = 0.0 if label == "no_noise" else SIGMA
        step = jdnn.make_dp_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer,
                                       l2_norm_clip=CLIP, noise_multiplier=sigma)
        box = [jdnn.TrainState(jax.tree.map(jnp.copy, params), state, optimizer.init(params),
                               jax.random.key(1), jnp.zeros((), jnp.int32))]

        def run(n, step=step, box=box):
            ts = box[0]
            for _ in range(n):
                ts, _ = step(ts, x, y)
            box[0] = jax.block_until_ready(ts)

        patch = noise_with(SAMPLERS[label]) if label in SAMPLERS else dp.gaussian_noise
        with mock.patch.object(dp, "gaussian_noise", patch):
            first = timing.first_call(lambda run=run: run(1))  # traces with the patch
        steady = timing.first_call(lambda run=run: run(1))
        compiled[label] = {"first_call_s": first, "steady_s": steady,
                           "compile_s": timing.compile_seconds(first, steady)}
        variants.append((label, run, steady))
    return variants, compiled


def same_bits(size: int) -> bool:
    """Whether the hand-written sampler's draw from a key is, bit for bit, `jdnn`'s draw from
    the Threefry key pair the sampler derived from it."""
    key = jax.random.key(11)
    pair = jax.random.wrap_key_data(jax.random.bits(key, (2,), jnp.uint32))
    return bool(np.array_equal(jax.jit(threefry_normal, static_argnums=1)(key, size),
                               jax.jit(legacy_pad16, static_argnums=1)(pair, size)))


def draw_variants(size):
    variants, compiled = [], {}
    for label, sampler in DRAWS.items():
        fn = jax.jit(lambda k, sampler=sampler: sampler(k, size))
        key = jax.random.key(3)

        def run(n, fn=fn, key=key):
            for _ in range(n):
                out = fn(key)
            jax.block_until_ready(out)

        first = timing.first_call(lambda run=run: run(1))
        steady = timing.first_call(lambda run=run: run(1))
        compiled[label] = {"first_call_s": first, "steady_s": steady,
                           "compile_s": timing.compile_seconds(first, steady)}
        variants.append((label, run, steady))
    return variants, compiled


def measure(built, rounds, chunk_s, baseline):
    variants, compiled = built
    timed = []
    for label, run, steady in variants:
        steps = timing.calibrate(steady, chunk_s)
        timed.append(timing.Variant(label, lambda run=run, steps=steps: run(steps),
                                    warm=lambda run=run: run(1), steps=steps))
    times = timing.interleave(timed, rounds, pause_s=0.02)
    report = timing.table(times, baseline)
    for label in report:
        report[label]["compile"] = compiled[label]
    return report


def _print(title, report):
    print(f"\n{title}")
    print(f"  {'variant':<14}{'median':>11}{'IQR':>10}{'ratio':>8}{'ratio IQR':>12}"
          f"{'compile':>10}")
    for label, entry in report.items():
        s, r = entry["seconds"], entry.get("ratio", {})
        print(f"  {label:<14}{s['median'] * 1e6:>9.1f}us{s['iqr'] * 1e6:>8.1f}us"
              f"{r.get('median', float('nan')):>8.3f}{r.get('iqr', float('nan')):>12.3f}"
              f"{entry['compile']['compile_s']:>9.3f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--chunk-s", type=float, default=0.2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = {"jax": jax.__version__, "device": str(jax.devices()[0]),
              "platform": platform.platform(), "cpus": os.cpu_count(),
              "load_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "rounds": args.rounds, "steps": {}, "draws": {}}
    print(f"jax {jax.__version__} on {result['device']}, {os.cpu_count()} CPUs, "
          f"load {result['load_before']}")
    result["same_bits"] = {n: same_bits(n) for n in (9_738, 669_707)}
    print(f"hand-written sampler == jdnn's draw from its derived key: {result['same_bits']}")
    for name in MODELS:
        report = measure(step_variants(name), args.rounds, args.chunk_s, "normal_pad2")
        result["steps"][name] = report
        features, hidden, batch = MODELS[name]
        widths = "-".join(str(w) for w in (*features, *hidden, 10))
        _print(f"DP-SGD step (ghost, SGD), MLP {widths}, batch {batch}", report)
    for size in (9_738, 669_706, 669_707):
        report = measure(draw_variants(size), args.rounds, args.chunk_s / 2, "normal_pad2")
        result["draws"][str(size)] = report
        _print(f"the draw alone, {size:,} float32 normals", report)
    result["load_after"] = os.getloadavg()
    print(f"\nload after: {result['load_after']}")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(result, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
