"""The sides of every comparison, by key. Each is built from the same `Problem`."""

from benchmarks.suite.sides import (equinox_side, flax_side, jdnn_side, numpy_side, raw_jax,
                                    tight_numpy, torch_side)
from benchmarks.suite.sides import keras_side
from benchmarks.suite.sides.base import Runner, Side, Skipped, require

SIDES: dict[str, Side] = {side.name: side for side in (
    jdnn_side.STEP, jdnn_side.EPOCH, tight_numpy.SIDE, numpy_side.SIDE, raw_jax.STEP, raw_jax.SCAN,
    flax_side.NNX_JIT, flax_side.NNX_SPLIT, flax_side.LINEN, equinox_side.SIDE, torch_side.SIDE,
    torch_side.ONE_THREAD, torch_side.FUSED, torch_side.FUSED_ONE_THREAD, torch_side.COMPILE,
    torch_side.COMPILE_ONE_THREAD, equinox_side.DONATE, raw_jax.REDUCE_WINDOW, raw_jax.LAX_CONV,
    keras_side.SIDE)}

__all__ = ["Runner", "SIDES", "Side", "Skipped", "require"]
