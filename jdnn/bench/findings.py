"""What the investigation of each missed target found, keyed by the target's key prefix.

Written by hand after profiling (HLO dumps, XLA flags, page-fault counts, cProfile, timings of
the pieces) on the 2-core development machine, jax/jaxlib 0.10.2, November 2026; the report
prints the finding of every target a run misses. The `diagnostics` benchmark re-measures the
key numbers in the same run (its section is at the end of the report).
"""

from __future__ import annotations

_KEY_AND_DISPATCH = """\
**jdnn's fixed cost per step (small models, small batches).** jdnn's compiled step does work a
hand-written step does not, and its state is heavier to dispatch:
1. It splits the state's key on every step (`jax.random.split` in `train_step_fn`) even when no
   layer uses randomness: the optimized HLO carries six extra threefry fusions plus key copies.
   Removing the split cut a digits-MLP scan epoch by ~15% and an XOR epoch by ~15%
   (diagnostics, "no key split per step").
2. Dispatching a `TrainState` (a NamedTuple of dicts, optax NamedTuples and a typed PRNG key)
   costs more than the same leaves in a flat list: an identity `jit` on the digits state
   returned in ~50 us against ~28 us for its leaves as a list and ~39 us with a raw uint32 key;
   cProfile shows a Python-level `prngkeyarray_unflatten` + `_check_prng_key_data` on every
   call. Altogether a dispatched jdnn step returned to Python in ~60-110 us against ~20 us for
   the raw-JAX step (diagnostics, "Dispatch").
On the 784-512-512-10 MLP these ~40-60 us are 1-3% of a step; on the digits MLP they double the
dispatched step (jdnn_step vs raw_jax in the small-net table).
Suggested fixes in jdnn: (a) in `train_step_fn`, split the key only when the model's spec has
a stochastic layer (Dropout) or `augment` is given, else pass `key=None` and carry the state's
key unchanged; (b) keep the key in `TrainState` as raw key data (`jax.random.key_data`) and
`jax.random.wrap_key_data` it inside the step, so no Python unflatten runs per call."""

_SAME_PROGRAM = """\
**jdnn against Flax / Equinox when the step is compute-bound: the same XLA program.** At batch
128 and 1024, and on the CNN, jdnn, raw JAX, Flax linen and NNX (split/merge) compile to the
same dots and convolutions (checked in the optimized HLO: the same YNNPACK fusions and plain
dots), so their ratio is 1 +- noise: a longer run (15 rounds, 0.3 s chunks, quiet machine) gave
jdnn/raw/linen/NNX-split = 1.000/0.997/1.007/1.002 at batch 1024 and 1.000/0.987/0.968/0.985 at
batch 128, every IQR straddling 1. "Faster than" can only be met within noise there; the
verdict flips from run to run. `nnx.jit` and Equinox's `filter_jit` lose clearly at small batch
(their Python-side graph and filter handling costs 0.5-3 ms per call) and tie at 1024. Where jdnn
trails linen/NNX-split at batch 32 by more than noise, it is the fixed cost described above
(key split, state dispatch), which linen and NNX-split do not pay. Fix: as above."""

_PAGE_FAULTS = """\
**Per-step dispatch of a big step page-faults its whole temporary buffer, every step.** XLA:CPU
allocates an execution's temporary buffer with `malloc`; above glibc's mmap threshold (32 MB at
most) that is fresh `mmap`ed memory, unmapped again after the call. The CNN step (68 MB of
temporaries) took ~17,500 minor page faults and ~40 ms of kernel time per dispatched step,
against ~2,200 faults and ~5 ms per step when 8 steps ran in one `lax.scan` (diagnostics, "Page
faults"); the MLP at batch 1024 (9 MB) took ~1,000 faults per dispatched step in some runs and
none in others (glibc raises its mmap threshold dynamically, up to 32 MB, after freeing such a
block; 68 MB is always above it), and none in a scan. That is why jdnn's scan-fused epoch runs
the CNN ~1.6x faster per step than any per-step side (jdnn's own step, raw JAX, Flax, Equinox
alike), and why per-step figures of big models are noisy. Checked: a `scan` of length 1 is as
slow as the plain step, a `scan` of 8 as fast as the epoch; with jemalloc preloaded and told to
keep its pages (`MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true`) the per-step CNN
ran at the scan's speed with ~2,300 faults; `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` cut the
faults to ~600 but not the kernel time (the pages are still zeroed). Suggested fixes in jdnn:
keep `fit`'s scan mode the default (it amortizes this); give `mode="step"` and `make_train_step`
an option to run k steps per call (a `lax.scan` over k stacked batches); document the jemalloc
setting for users who dispatch per step."""

_GEMM = """\
**Fraction of the GEMM peak at batch 1024.** The step is dot-bound: one step does the forward,
input-gradient and weight-gradient products (3.29 GFLOP). In jaxlib 0.10.2 the forward and
input-gradient dots become YNNPACK fusions, but the three weight-gradient dots (`x^T dy`,
contracting dimension 0 of both operands) stay plain `dot` ops, and in isolation that product
ran ~25% slower than the forward one (36 against 49 GFLOP/s on a loaded machine; 42.5 with the
transpose materialized first). Per-step dispatch adds ~1,000 page faults per step (see above).
XLA flags tried, one fresh process each, alternated twice: `--xla_cpu_use_xnnpack=true`,
`--xla_cpu_use_onednn=true`, `--xla_cpu_enable_fast_math=true`,
`--xla_cpu_use_thunk_runtime=false`, and YNNPACK for dots only
(`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT`): no change beyond
the run-to-run noise (+-20% on this machine); `--xla_cpu_multi_thread_eigen=false` neither. The
peak is measured in the same rounds as the step (the best of an XLA and a NumPy 2048^2 GEMM per
round), so a loaded machine lowers both. Suggested fixes: write Dense's weight gradient so XLA
sees a canonical product (e.g. a `custom_vjp` computing `dw = x.T @ dy` from a materialized
`x.T`, as jdnn already does for Conv2D's gradients) and measure it here; prefer the scan epoch
(no page faults)."""

_SMALL_NET = """\
**Scan epoch against the NumPy reference on the digits MLP (64-128-10, Adam, batch 32).**
jdnn's epoch runs ~45-70 us/step; the NumPy reference ~130 us/step on an idle machine and
0.4-0.7 ms/step when other processes load the cores (its OpenBLAS threads stall), so the ratio
swings between ~2x and ~10x with the load, not with jdnn. Where jdnn's epoch spends its time
(diagnostics, "epoch overhead"): the per-epoch `jax.random.permutation` (an XLA:CPU sort of
1,344 indices) is ~10-15% of the epoch (on XOR's 256 examples ~40-50%), the per-step key split
~15%; with both removed the epoch is within ~10% of the raw-JAX scan floor. The floor itself
(~35-45 us/step for 1.3 MFLOP) is XLA:CPU's cost per kernel: ~35 small fusions per step at
~1 us each. 10x over an idle NumPy would need ~13 us/step, below that floor. Suggested fixes in
jdnn: (a) no key split without stochastic layers (above); (b) draw the epoch's permutation on
the host (a NumPy `Generator` seeded from the state's key: ~40 us instead of ~400 us) and pass
the indices into the compiled epoch, keeping the device permutation for `vmap`ped ensembles;
(`optax.flatten` around Adam, one fused update over a flat vector, was tried: 0.97x
[0.86-1.15] of the epoch's time, no clear gain)."""

_TORCH = """\
**PyTorch.** With its thread count matched to the 2 CPUs, PyTorch's OpenMP pool stalls whenever
other processes take a core (a spinning thread waits for a descheduled one at every parallel
region): a digits-MLP step took 0.4 ms with 1 thread and 10-100 ms with 2 on the loaded
machine; NumPy's OpenBLAS shows the same (a 128x784x512 product took 1 ms single-threaded and
20-90 ms with 2 threads under load). The `torch_1thread` side is there for that reason; the
target uses the matched thread count as specified, and PASSes largely because of that stall.
Read the `torch_1thread` rows too: on the CNN, single-threaded PyTorch ran ~40-50 ms/step
against ~60-80 ms for jdnn's scan epoch (and ~110-135 ms per dispatched step) in these runs.
Not resolved yet: in isolation XLA's convolutions of this net (forward + both gradients, as
jdnn states them) take ~13 ms per step and its pooling a few ms, well short of the step; a
reshape-based max pool changed nothing in the whole step (0.98-1.00x). Next steps: profile the
scan body per fusion (`jax.profiler` trace, or `XLA_FLAGS=--xla_dump_to` and time the
transpose/copy fusions around jdnn's canonical-layout conv gradients), and compare on an idle
machine. Also seen: raw JAX's autodiff convolutions inside a `lax.scan` of 8 ran ~5x slower
than per step (319 ms/step), confirming that jdnn's hand-stated conv gradients are what make
its scan epoch fast on the CNN."""

FINDINGS: dict[str, str] = {
    "step_vs_raw/": _KEY_AND_DISPATCH,
    "step_vs_raw/cnn": _PAGE_FAULTS,
    "vs_nnx_jit/": _SAME_PROGRAM,
    "vs_nnx_split/": _SAME_PROGRAM,
    "vs_linen/": _SAME_PROGRAM,
    "vs_equinox/": _SAME_PROGRAM,
    "vs_torch/": _TORCH,
    "gemm_fraction/": _GEMM,
    "epoch_vs_numpy/digits": _SMALL_NET,
    "epoch_vs_numpy/xor": _SMALL_NET,
    "epoch_vs_numpy/cnn": _PAGE_FAULTS,
    "epoch_vs_numpy/mlp": _TORCH,
    "fixed_overhead/": _SMALL_NET,
}

NOTES = """\
**Noticed along the way (not targets).**
- A fresh process's first `fit` compiles ~20 small programs besides its epoch: `TrainState.create`
  runs `model.init` op by op, and each initializer shape compiles its own `_truncated_normal`
  (~1-2 s of the first fit's compile time on this machine). `jax.jit(model.init,
  static_argnums=1)` compiles one program instead (the benchmark's own `make_problem` does so).
- A second `fit` in the same process compiles its epoch again (new closures each call); with
  the persistent cache on (the CLI's default) that becomes a cache fetch.
- The persistent cache makes the second `jdnn train` fetch instead of compile, but tracing and
  lowering still run (~0.3-1 s): the whole first-call path of the second run is ~0.5-1.2 s.
- `jdnn.vectorize.per_example_grads` ran 1.15-1.35x slower than a plain
  `jax.vmap(jax.grad(...))` over batches of one on the 784-512-512-10 MLP (vmap section); not
  investigated here (its per-example key handling is the first suspect).
- `jdnn.ensemble.fit_ensemble(size=16)` trained 16 digits MLPs for 5 epochs 8.6x faster than
  16 `fit` calls end to end (mostly compilation saved); the vmapped epoch alone was ~1.2x faster
  than 16 epochs one after another.
- XLA:CPU's temporary buffers and the machine's load dominate per-step noise; compare ratios
  within rounds, never absolute times across runs."""


def lookup(key: str) -> str | None:
    """The finding for a target key: the entry whose prefix matches it (longest wins)."""
    matches = [prefix for prefix in FINDINGS if key.startswith(prefix)]
    return FINDINGS[max(matches, key=len)] if matches else None


def for_keys(keys: list[str]) -> list[str]:
    """The distinct findings for these keys, in the order first met."""
    out: list[str] = []
    for key in keys:
        text = lookup(key)
        if text is not None and text not in out:
            out.append(text)
    return out
