"""jdnn's benchmark suite: jdnn against raw JAX, the NumPy backprop reference, Flax, Equinox
and PyTorch, and against the machine's own GEMM peak and memory bandwidth.

Run it with `jdnn bench [--quick]` or `python benchmarks/run.py [--quick]`; see `jdnn.bench.run`.
The method (`jdnn.bench.timing`): warm-up first, compile time apart, `block_until_ready`, sides
interleaved in rounds, medians and interquartile ranges, ratios taken within each round.
"""
