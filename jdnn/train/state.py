"""TrainState: everything a training run carries from one step to the next, as one pytree;
and what keeps a donated state from being lost to an interrupt (`donated`, `DonationGuard`)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdnn.core import Layer, Shape
from jdnn.train.program_cache import ProgramCache


def key_or_seed(where: str, key: Any) -> jax.Array | int:
    """`key` checked as `as_key` checks it, without making a key of an int seed: the seed comes
    back as a Python int (making a key eagerly compiles two small programs; `TrainState.create`
    makes it inside its own compiled program instead).

    Raises:
        TypeError: naming `where` (the entry point called) for anything but a key or an int.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return int(key)
    dtype = getattr(key, "dtype", None)
    if isinstance(key, jax.Array) and (jnp.issubdtype(dtype, jax.dtypes.prng_key) or (
            dtype == jnp.uint32 and key.ndim >= 1)):
        return key
    raise TypeError(f"{where}: key must be a jax.random.key(seed) or an int seed, got "
                    f"{type(key).__name__} {key!r:.60}")


def as_key(where: str, key: Any) -> jax.Array:
    """A random key from `key`: a `jax.random.key`, a legacy raw `jax.random.PRNGKey`, or an
    int seed (a NumPy integer too; not a bool), as `jax.random.key(seed)`.

    Raises:
        TypeError: naming `where` (the entry point called) for anything else.
    """
    key = key_or_seed(where, key)
    return jax.random.key(key) if isinstance(key, int) else key


# Int seeds that go into the compiled `create` as an int32 argument; any other is made a key
# outside it, as `jax.random.key(seed)` always did.
_INT32 = range(-2**31, 2**31)


def _create_fn(model: Layer, optimizer: optax.GradientTransformation,
               input_shape: Shape) -> Callable:
    """`create(key_or_seed) -> TrainState`: the seed made a key, the key split, the model and
    the optimizer initialized, all in one function for `jax.jit`."""

    def create(key):
        if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.ndim >= 1):
            key = jax.random.key(key)            # an int32 seed, as jax.random.key(int) does
        init_key, key = jax.random.split(key)
        _, params, state = model.init(init_key, input_shape)
        return TrainState(params, state, optimizer.init(params), key, jnp.zeros((), jnp.int32))

    return create


def _init_compiler_options() -> dict | None:
    """How the initialization program is compiled. On CPU, LLVM's optimization level 1, not
    the default: the program runs once, and at the default level the unrolled Threefry hash of
    each weight's random draw takes seconds to optimize (2.0 s vs 0.7 s for the digits MLP),
    more than everything else a small `fit` compiles. The values are bit for bit those of the
    default level (checked in tests/test_fit_compiles.py); level 0 would change them."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def _jit_create(model: Layer, optimizer: optax.GradientTransformation,
                input_shape: Shape) -> Callable:
    return jax.jit(_create_fn(model, optimizer, input_shape),
                   compiler_options=_init_compiler_options())


# `_create_fn` jitted, one per (model, optimizer, input shape): a model trained again (a second
# `fit`, each member of an ensemble, the same code run again) reuses the compiled program. The
# model and the optimizer are compared by what their functions are made of, never by looks
# alone (`jdnn.train.program_cache`).
_CREATE = ProgramCache(32)


def _create(model: Layer, optimizer: optax.GradientTransformation, key: jax.Array | int,
            input_shape: Shape) -> TrainState:
    """`TrainState.create`'s work: ONE compiled program per model, optimizer and input shape
    instead of one per initializer and shape, run op by op (each of which compiles); eagerly
    for a model whose `init` cannot be traced (it reads a value of the key, say)."""
    if isinstance(key, int) and key not in _INT32:
        key = jax.random.key(key)
    argument = np.int32(key) if isinstance(key, int) else key
    create = _CREATE.get((model, optimizer, input_shape),
                         lambda: _jit_create(model, optimizer, input_shape))
    try:
        return create(argument)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerIntegerConversionError):
        key = jax.random.key(key) if isinstance(key, int) else key
        return _create_fn(model, optimizer, input_shape)(key)


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

        Examples:
            >>> ts = jdnn.TrainState.create(model, optax.adam(1e-3), jax.random.key(0), (32, 784))
        """
        return _create(model, optimizer, key_or_seed("TrainState.create", key),
                       tuple(input_shape))

    @classmethod
    def from_params(cls, params: Any, state: Any, optimizer: optax.GradientTransformation,
                    key: jax.Array | int) -> TrainState:
        """A state at step 0 around existing params and layer state (e.g. partially restored
        for fine-tuning), with a fresh optimizer state.

        Examples:
            >>> params, state, report = jdnn.checkpoint.restore_matching(path, fresh_params)
            >>> ts = jdnn.TrainState.from_params(params, state, optax.adam(1e-3), 0)
        """
        key = as_key("TrainState.from_params", key)
        return cls(params, state, optimizer.init(params), key, jnp.zeros((), jnp.int32))


def step_key(train_state: TrainState, stream: int) -> jax.Array:
    """The key of random `stream` (`DROPOUT`, `AUGMENT`, `NOISE`) for the state's current step.

    `fold_in(fold_in(key, step), stream)`: a fresh key every step and stream, from a key that
    itself never changes. A key nothing consumes is dead code, removed by XLA, so a model
    without dropout pays nothing for it (a per-step `jax.random.split` of the carried key
    would be paid every step).
    """
    return jax.random.fold_in(jax.random.fold_in(train_state.key, train_state.step), stream)


# ---------------------------------------------------------------------------------------------
# Donation: a compiled step or epoch deletes the state it is given. These keep a run from ever
# being left without a whole state, even when interrupted.


def donated(tree: Any) -> bool:
    """Whether any array of `tree` has been deleted (donated to a compiled call)."""
    return any(leaf.is_deleted() for leaf in jax.tree.leaves(tree)
               if isinstance(leaf, jax.Array))


_HELD = object()   # what `DonationGuard.hold` watches: always defer


class DonationGuard:
    """Holds back SIGINT/SIGTERM while a compiled epoch owns the train state.

    A scan-mode epoch donates its input state: from the moment the compiled call consumes it
    until the epoch's output is recorded as the run's state, the run's only whole state is the
    one the device is still computing, so an interrupt there would lose the run. While such a
    state is `watch`ed, a signal whose Python handler raises (Ctrl-C's `KeyboardInterrupt`,
    `jdnn train`'s SIGTERM) is deferred to `release`, unless the state is not yet donated
    (tracing or compiling the first epoch: the input is intact, the interrupt acts at once);
    after `hold`, until `release`, it is deferred in any case (a finished epoch being
    validated and recorded). A second signal while one is deferred acts at once. Used as a
    context manager by `fit`; it wraps the handlers only in the main thread and only where
    Python can call them, and puts them back on exit.
    """

    def __init__(self):
        self.previous: dict[int, Callable] = {}
        self.watched: Any = None
        self.pending: tuple | None = None

    def __enter__(self) -> DonationGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):
                    self.previous[signum] = handler
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.watched = self.pending = None

    def _handle(self, signum: int, frame: Any) -> None:
        if (self.watched is None or self.pending is not None
                or (self.watched is not _HELD and not donated(self.watched))):
            self.pending = None
            self.previous[signum](signum, frame)
            return
        self.pending = (signum, frame)
        message = (f"\nfit: {signal.Signals(signum).name} received; finishing this epoch to "
                   f"hand back its state (send it again to stop at once, without it)\n")
        try:
            os.write(2, message.encode())
        except OSError:
            pass

    def watch(self, train_state: Any) -> None:
        """From now, `train_state` may be donated: defer interrupts once it is."""
        self.watched = train_state

    def hold(self) -> None:
        """Defer interrupts from now until `release`."""
        self.watched = _HELD

    def release(self) -> None:
        """The run holds a whole state again: a deferred interrupt acts now."""
        self.watched = None   # first: a signal from here on acts at once, none is lost
        pending, self.pending = self.pending, None
        if pending is not None:
            self.previous[pending[0]](*pending)
