"""What the investigation of each missed target found, keyed by the target's key prefix.

Written by hand after profiling (HLO dumps, XLA flags, page-fault counts, cProfile, timings of
the pieces) on the 2-core development machine, jax/jaxlib 0.10.2, November 2026; the report
prints the finding of every target a run misses. The `diagnostics` benchmark re-measures the
key numbers in the same run (its section is at the end of the report).
"""

from __future__ import annotations

_FIXED_COST = """\
**jdnn's step against the raw-JAX floor.** Two costs a hand-written step does not pay were
found in earlier runs and are fixed: (1) a `jax.random.split` of the state's key on every step,
used or not (six threefry fusions per step); the run's key is now constant and each step's keys
are `fold_in(fold_in(key, step), stream)` (`jdnn.train.state.step_key`), so a key no layer
consumes is dead code that XLA removes; (2) the epoch's `jax.random.permutation`, an XLA:CPU
sort inside the compiled epoch; the order is now drawn on the host by NumPy from the key and
step (`jdnn.data.batching.epoch_order`, ~25 us) and passed in, and `fit` reads the key and step
once and counts, so drawing an order never waits for the device. The diagnostics section times
today's epoch against both old forms in the same rounds. jdnn's scan epoch now runs at the
raw-JAX scan floor (digits MLP 0.98x, XOR 0.94x), and at batch 1024 the compiled step is the
raw step's program: the same 8 dots in the same layouts in the optimized HLO, 48 against 47
fusions (optax's Adam against the hand-written one). What is left is dispatch: a jdnn step call
returns to Python in ~55 us against ~20 us for raw JAX (diagnostics, "Dispatch"), for
flattening the `TrainState` pytree and, in Python, its typed PRNG key (an identity `jit` of a
small `TrainState` returned in ~25 us, ~15 us with the key as raw `key_data`). That is
2-4% of a 784-512-512-10 step at batch 32 and under 1% from batch 128 on, so the 1.05x bound is
met or missed within the rounds' noise (long interleaved runs of jdnn's step against raw JAX
and linen alone, 21 rounds, quiet machine: 0.97-1.01x, every IQR straddling 1); `fit`'s scan
mode does not pay it per step. Keeping the key as raw `key_data` would save those ~10 us but
change `TrainState.key` for every user and lose the key's implementation; not done."""

_SAME_PROGRAM = """\
**jdnn against Flax / Equinox: the same XLA program.** jdnn, raw JAX, Flax linen and NNX
(split/merge) compile to the same dots and convolutions (checked in the optimized HLO), so
their ratio is 1 +- noise plus the dispatch cost above; "faster than" is decided by noise and the
verdict flips from run to run. (Earlier runs had jdnn 5-10% behind linen in every MLP
comparison: the benchmark's rotating schedule made jdnn's step always run right after the NumPy
GEMM, whose OpenBLAS threads were still spinning. Rounds now run in a seeded random order;
`benchmarks.suite.timing.schedule`.) `nnx.jit` and Equinox's `filter_jit` lose clearly at small
batch (their Python-side graph and filter handling costs 0.3-3 ms per call) and tie at 1024."""

_PAGE_FAULTS = """\
**Per-step dispatch of a big step page-faults its whole temporary buffer, every step.** XLA:CPU
allocates an execution's temporary buffer with `malloc`, on one of its own threads: from that
thread's glibc arena, or above glibc's mmap threshold (32 MB at most), that is fresh `mmap`ed
memory, returned to the OS after the call. Before MaxPool2D's fix (next finding) the CNN step
had 68 MB of temporaries and took ~17,300 minor page faults and ~34 ms of kernel time per
dispatched step, against ~2,200 faults and ~5 ms per step when 8 steps ran in one `lax.scan`.
Started with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824` (glibc
keeps freed memory for reuse), that per-step CNN took 0 faults and 0 ms of kernel time
(measured in a child process of the same run; glibc reads these once, at start), and its wall
time fell from ~55 to ~34 ms per step. Today's CNN step has 22 MB of temporaries and ~180
faults per dispatched step (diagnostics, "Page faults"); the peers' CNN steps, still on
`reduce_window`'s gradient, pay the full cost. Per-step figures of big models are noisy for
this reason. The MLP at batch 1024 (9 MB) faults in some
processes and not in others (glibc's dynamic threshold). What jdnn does: `fit`'s scan mode, the
default, amortizes this; the README documents the glibc setting for users who dispatch steps
one by one (`mode="step"`, `make_train_step`). Not done: a k-steps-per-call option for
`make_train_step` (a `lax.scan` over k stacked batches), which the setting makes unnecessary
on glibc systems."""


_GEMM = """\
**Fraction of the GEMM peak at batch 1024.** (79-84% on a quiet machine, over the 65% bound;
it has missed only under load.) The step is dot-bound: one step does the forward,
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
jdnn's epoch now runs at the raw-JAX scan floor (~35 us/step on a quiet machine; 0.98x the
floor in the same rounds) after the two fixes above. The NumPy reference takes ~300 us/step
with OpenBLAS on 2 threads on a quiet machine (~130 us single-threaded, 0.4-0.7 ms when other
processes load the cores), so the ratio is 8-9x quiet and passes 10x under load. 10x over a
quiet NumPy needs ~30 us/step, below what a hand-written raw-JAX epoch achieves: the floor is
XLA:CPU's cost per kernel, ~35 small fusions per step at ~1 us each for 1.3 MFLOP of work.
(`optax.flatten` around Adam, one fused update over a flat vector, was tried: 0.97x
[0.86-1.15], no clear gain; `lax.scan(unroll=8)` was slower.) XOR, smaller still, passes at
~36x."""

_TORCH = """\
**PyTorch.** With its thread count matched to the 2 CPUs, PyTorch's OpenMP pool stalls whenever
other processes take a core (a spinning thread waits for a descheduled one at every parallel
region); NumPy's OpenBLAS shows the same. The `torch_1thread` side is there for that reason.
On a quiet machine PyTorch-CPU is 1.1-1.9x slower than jdnn on the MLPs and within 1.15x at
batch 1024, but much faster on the CNN (next finding)."""

_CNN = """\
**The CNN (28x28x1 conv32-pool-conv64-pool-dense128-10, batch 64).** Found and fixed: XLA:CPU
lowers `lax.reduce_window`'s max-pool gradient (select-and-scatter) to a scatter that took ~13
ms per step for the first pool alone (64x28x28x32) and half the step in all. MaxPool2D with
non-overlapping windows (strides = window, the usual case) is now a reshape and a max with a
hand-stated JVP that sends each window's tangent to its first maximum, so the gradient is
identical to `reduce_window`'s, ties included, and forward mode still works: ~1.6 ms. The
step went from ~57 to ~24 ms (2.2x faster than raw JAX and Flax, which keep `reduce_window`)
and its temporaries from 68 to 22 MB. Still short: 4.1x over the NumPy reference (im2col +
OpenBLAS, ~100 ms/step quiet; target 5x) and 0.6x PyTorch (~16 ms/step). Where the ~23 ms go
now (each piece timed inside a `lax.scan`): the second conv's weight gradient ~6-8.6 ms (jdnn
states it as a canonical convolution over the batch; an im2col + one GEMM formulation measured
6.7-6.9 ms in the same rounds, no clear gain; JAX's own transpose rule for it took ~260 ms
inside the scan), its forward ~3.2 ms and input gradient ~2 ms, the first conv ~1.7 ms, both
pools ~2 ms. Next: a per-fusion profile of the scan body, and XLA:CPU's oneDNN convolutions
when jaxlib enables them."""

FINDINGS: dict[str, str] = {
    "step_vs_raw/": _FIXED_COST,
    "step_vs_raw/cnn": _PAGE_FAULTS,
    "vs_nnx_jit/": _SAME_PROGRAM,
    "vs_nnx_split/": _SAME_PROGRAM,
    "vs_linen/": _SAME_PROGRAM,
    "vs_equinox/": _SAME_PROGRAM,
    "vs_torch/": _TORCH,
    "vs_torch/cnn": _CNN,
    "gemm_fraction/": _GEMM,
    "epoch_vs_numpy/digits": _SMALL_NET,
    "epoch_vs_numpy/xor": _SMALL_NET,
    "epoch_vs_numpy/cnn": _CNN,
    "epoch_vs_numpy/mlp": _TORCH,
    "fixed_overhead/": _SMALL_NET,
}

NOTES = """\
**Noticed along the way (not targets).**
- A fresh process's first `fit` compiles ~24 programs besides its epoch: `TrainState.create`
  runs `model.init` op by op, and each initializer shape compiles its own `_truncated_normal`
  (~1-2.5 s of the first fit on this machine). Tried: `jax.jit` of the whole init, one program
  (1.42 -> 1.18 s for the digits MLP's init in a fresh process, ~15%: the erfinv-based
  truncated normal is what is slow to compile, jitted or not). Not applied; the CLI's
  persistent compilation cache removes it from the second run on.
- A second `fit` in the same process compiles its epoch again (new closures each call); with
  the persistent cache on (the CLI's default) that becomes a cache fetch.
- `jdnn.per_example_grads` compiles to the same program as a plain `jax.vmap(jax.grad(...))`
  (a test checks the op counts); the 1.15-1.35x once seen was the cost of writing out 86-343 MB
  of per-example gradients on a loaded machine.
- DP-SGD: a step now costs ~1.3-1.6x a plain step at batch 128 (it was 2.4-3.2x). The noise
  draw hashes with both Threefry words (`jax.random.normal` throws half away) and is padded to
  a multiple of 16: XLA:CPU does not vectorize loops over an odd element count, and an odd-sized
  `jax.random.normal` (669,707 values) took ~10x as long as an even one. Other odd-sized random
  draws (dropout masks) may pay the same; not measured. Ghost clipping takes each layer's
  clipped gradient from that layer's own pullback (8 dots, as a plain gradient, not 10).
- Ensembles and search: the end-to-end gain (~10x) is compilation and dispatch saved; the
  vmapped training compute alone is ~1.0x of 16 epochs one after another on this CPU.
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
