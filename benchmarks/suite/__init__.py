"""jdnn's benchmark suite: jdnn against raw JAX, the NumPy backprop reference, Flax, Equinox
and PyTorch, and against the machine's own GEMM peak and memory bandwidth.

Run it from a checkout with `python benchmarks/run.py [--quick]`; see `benchmarks.suite.run`. It is
not part of the installed jdnn package. The method (`benchmarks.suite.timing`): warm-up first,
compile time apart, `block_until_ready`, sides interleaved in rounds, medians and interquartile
ranges, ratios taken within each round.
"""
