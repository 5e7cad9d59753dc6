"""TrainState: everything a training run carries from one step to the next, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdnn.core import Layer, Shape

# The random streams of a step: independent keys folded in from the run's key and the step.
DROPOUT, AUGMENT, NOISE = 0, 1, 2


class TrainState(NamedTuple):
    """Parameters, layer state, optimizer state, random key and step count.

    A `NamedTuple`, hence a pytree: it goes into `jax.jit` whole and comes back whole, and the
    compiled step donates it, so a state passed to a step must not be used again.

    Attributes:
        params: the model's parameters (a dict pytree, paths like `2_dense/w`).
        state: the model's non-trainable state (batch-norm running statistics).
        opt_state: the optax optimizer's state.
        key: the run's random key. It never changes: each step's dropout (and augmentation,
            noise) keys are folded in from it and the step count (`step_key`), and each
            epoch's shuffle is seeded by it and the step count, so a run resumed from a saved
            state continues exactly, and a step that uses no randomness pays nothing for it.
        step: the number of steps taken, an int32 scalar array.
    """

    params: Any
    state: Any
    opt_state: optax.OptState
    key: jax.Array
    step: jax.Array

    @classmethod
    def create(cls, model: Layer, optimizer: optax.GradientTransformation, key: jax.Array | int,
               input_shape: Shape) -> TrainState:
        """Initializes the model and the optimizer.

        Args:
            model: the network, a jdnn `Layer`.
            optimizer: any optax `GradientTransformation` (SGD, Adam, RMSprop, chains, schedules).
            key: a `jax.random.key` (or an int seed); split into the init key and the state's key.
            input_shape: the input's shape with its batch axis, e.g. `(32, 784)`.

        Returns:
            A `TrainState` at step 0.

        Example:
            >>> ts = jdnn.TrainState.create(model, optax.adam(1e-3), jax.random.key(0), (32, 784))
        """
        if isinstance(key, int):
            key = jax.random.key(key)
        init_key, key = jax.random.split(key)
        _, params, state = model.init(init_key, tuple(input_shape))
        return cls(params, state, optimizer.init(params), key, jnp.zeros((), jnp.int32))

    @classmethod
    def from_params(cls, params: Any, state: Any, optimizer: optax.GradientTransformation,
                    key: jax.Array | int) -> TrainState:
        """A state at step 0 around existing params and layer state (e.g. partially restored
        for fine-tuning), with a fresh optimizer state.

        Example:
            >>> params, state, report = jdnn.checkpoint.restore_matching(path, fresh_params)
            >>> ts = jdnn.TrainState.from_params(params, state, optax.adam(1e-3), 0)
        """
        if isinstance(key, int):
            key = jax.random.key(key)
        return cls(params, state, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def step_key(train_state: TrainState, stream: int) -> jax.Array:
    """The key of random `stream` (`DROPOUT`, `AUGMENT`, `NOISE`) for the state's current step.

    `fold_in(fold_in(key, step), stream)`: a fresh key every step and stream, from a key that
    itself never changes. A key nothing consumes is dead code, removed by XLA, so a model
    without dropout pays nothing for it (a per-step `jax.random.split` of the carried key
    would be paid every step).
    """
    return jax.random.fold_in(jax.random.fold_in(train_state.key, train_state.step), stream)
