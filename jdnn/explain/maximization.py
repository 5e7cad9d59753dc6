"""Activation maximization: the input a class, or a unit inside the network, responds to most.

Gradient ascent on the input, starting from faint noise (Erhan et al. 2009; Simonyan et al.
2014), with the regularizers that turn an adversarial-looking pattern into a recognizable image
(Yosinski et al. 2015; Olah et al. 2017, "Feature Visualization"):

    each step   x <- x + adam(d/dx [unit(jitter(x)) - l2 * |x|^2])   then clip to value_range
    every k     x <- gaussian_blur(x, blur_sigma)

An L2 penalty keeps pixels the unit does not need dark; jitter (the image shifted by a random
few pixels before each gradient) and the blur suppress the high-frequency patterns no real input
has. The unit is a class's score (the model's output, the logit by default) or one unit of an
intermediate layer named by its path, as jdnn names layers everywhere (`"3_relu"`, see
`jdnn.summary` or `jdnn.walk`): for `(B, F)` activations the feature `F[target]`; for
`(B, H, W, C)` feature maps the mean of channel `target` over all positions (Lucid's "channel"
objective: the pattern the channel detects, tiled), or its value at one `position` (a
"neuron": the pattern inside its receptive field). Prefer the layer before an activation
(`"3_conv2d"`, not `"4_relu"`): a ReLU unit that is off for the starting image passes no
gradient, and its ascent never starts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jdnn.checks import whole_number
from jdnn.core import Layer, Spec, rebuild, walk
from jdnn.explain.common import (check_model, check_output, class_score, full_state,
                                 output_shape)
from jdnn.train.state import as_key

# ---------------------------------------------------------------------------------------------
# The unit to excite: a class's score, or one unit of a layer's output.


def _layer_paths(spec: Spec) -> list[str]:
    return [node.path for node in walk(spec) if node.path]


def layer_activation(model: Layer, layer: str) -> Callable[..., jax.Array]:
    """`fn(params, state, x) -> the output of the layer at path `layer` for the batch `x`, in
    inference mode: the model rebuilt from its spec (`jdnn.core.rebuild`) with that layer
    wrapped to hand its output out; the layers after it are dead code that XLA drops."""
    def activation(params, state, x):
        found = []

        def wrap(path: str, spec: Spec, child: Layer) -> Layer:
            if path != layer:
                return child

            def apply(p, s, inputs, *, key=None, train=False):
                y, new_state = child.apply(p, s, inputs, key=key, train=train)
                found.append(y)
                return y, new_state

            return Layer(child.init, apply, child.spec)

        rebuild(model.spec, wrap).apply(params, state, x, train=False)
        return found[0]

    return activation


def unit_score(model: Layer, layer: str | None, output: str,
               position: tuple[int, ...] | None) -> Callable[..., jax.Array]:
    """`score(params, state, x_one, target) -> ()`: the excitement of unit `target` by ONE input
    (no batch axis): the class score for `layer=None`, else the layer's feature `target`; for
    feature maps its mean over positions, or its value at `position`."""
    if layer is None:
        return class_score(model, output)
    activation = layer_activation(model, layer)

    def score(params, state, x_one, target):
        y = activation(params, state, x_one[None])[0]
        return jnp.mean(y[..., target]) if position is None else y[(*position, target)]

    return score


# ---------------------------------------------------------------------------------------------
# The regularizers that act on the image itself: jitter and blur (for (H, W, C) images).


def gaussian_blur(image: jax.Array, sigma: float) -> jax.Array:
    """`image` `(H, W, C)` blurred per channel by a Gaussian of `sigma` pixels, separably with
    `jax.scipy.signal.convolve`; divided by the blurred ones, so the borders do not darken."""
    radius = max(1, math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), image.dtype)

    def blur(a):
        a = jax.scipy.signal.convolve(a, taps.reshape(-1, 1, 1), mode="same")
        return jax.scipy.signal.convolve(a, taps.reshape(1, -1, 1), mode="same")

    return blur(image) / blur(jnp.ones(image.shape[:2] + (1,), image.dtype))


def _jittered(image: jax.Array, key: jax.Array, jitter: int) -> jax.Array:
    """`image` rolled by a random shift of up to `jitter` pixels along its height and width."""
    shift = jax.random.randint(key, (2,), -jitter, jitter + 1)
    return jnp.roll(image, shift, axis=(0, 1))


# ---------------------------------------------------------------------------------------------
# The ascent: one lax.scan over the steps per target, the targets side by side under vmap.


@functools.partial(jax.jit, static_argnames=(
    "model", "layer", "position", "output", "shape", "steps", "blur_sigma", "blur_every",
    "jitter", "value_range"))
def _maximize(params, state, target, key, l2, learning_rate, *, model, layer, position, output,
              shape, steps, blur_sigma, blur_every, jitter, value_range):
    score = unit_score(model, layer, output, position)
    optimizer = optax.adam(learning_rate)
    low, high = value_range if value_range is not None else (None, None)
    start = 0.0 if value_range is None else (low + high) / 2

    def objective(x, t, step_key):
        seen = _jittered(x, step_key, jitter) if jitter else x
        return -score(params, state, seen, t) + l2 * jnp.sum(x ** 2)

    def one(t, k):
        start_key, k = jax.random.split(k)
        x = start + 0.01 * jax.random.normal(start_key, (math.prod(shape),)).reshape(shape)

        def step(carry, i):
            x, opt_state = carry
            grads = jax.grad(objective)(x, t, jax.random.fold_in(k, i))
            updates, opt_state = optimizer.update(grads, opt_state, x)
            x = optax.apply_updates(x, updates)
            if blur_sigma:
                x = lax.cond(i % blur_every == blur_every - 1,
                             lambda a: gaussian_blur(a, blur_sigma), lambda a: a, x)
            if value_range is not None:
                x = jnp.clip(x, low, high)
            return (x, opt_state), None

        (x, _), _ = lax.scan(step, (x, optimizer.init(x)), jnp.arange(steps))
        return x

    return jax.vmap(one)(target, jax.random.split(key, target.shape[0]))


def _image_option(entry: str, name: str, value: Any, default: Any, shape: tuple[int, ...]) -> Any:
    """A blur or jitter setting: `default` for images `(H, W, C)` when None, 0 for other inputs;
    an explicit non-zero setting on an input that is not an image is an error."""
    image = len(shape) == 3
    if value is None:
        return default if image else 0
    if value and not image:
        raise ValueError(f"{entry}: {name} shifts or blurs images of shape (height, width, "
                         f"channels), but the input shape is {shape}; leave {name}=None (or 0)")
    return value


def activation_maximization(model: Layer, params: Any, state: Any, target: Any, *,
                            shape: tuple[int, ...], key: Any, layer: str | None = None,
                            position: tuple[int, ...] | None = None, steps: int = 256,
                            learning_rate: float = 0.05, l2: float = 1e-3,
                            blur_sigma: float | None = None, blur_every: int = 4,
                            jitter: int | None = None,
                            value_range: tuple[float, float] | None = None,
                            output: str = "raw") -> jax.Array:
    """The input that most excites a class (or a unit of a layer), by regularized gradient
    ascent from faint noise: Adam on the input, an L2 penalty, random jitter and a Gaussian blur
    every few steps (see the module's docstring), all in one compiled `lax.scan`; several
    targets are maximized side by side under `jax.vmap`.

    Args:
        model: the trained network.
        params: its parameters (`train_state.params`).
        state: its layer state (`train_state.state`; None for a model without state).
        target: the class (or unit) to excite, an int, or several, e.g. `range(10)`.
        shape: one input's shape, without the batch axis, e.g. `(8, 8, 1)` or `(64,)`.
        key: the random key (or an int seed) for the starting noise and the jitter.
        layer: None for the model's output (a class), or the path of a layer (`"3_conv2d"`) whose
            unit (feature, or channel of a feature map) `target` is excited.
        position: for a layer with feature maps `(B, H, W, C)`: None to excite the channel's
            mean over all positions, or `(row, column)` to excite it at that one position.
        steps: gradient ascent steps.
        learning_rate: Adam's step size, in input units per step.
        l2: the weight of the penalty `l2 * sum(x ** 2)`.
        blur_sigma: the blur's standard deviation in pixels, 0 for none; None: 0.5 for images
            `(H, W, C)`, none otherwise.
        blur_every: blur after every `blur_every`-th step.
        jitter: the largest random shift in pixels before each gradient, 0 for none; None: 1
            for images, none otherwise.
        value_range: `(low, high)` the input is clipped to after every step, e.g. `(0, 1)` for
            `jdnn.data.digits`; None for no clipping (the ascent then starts around 0).
        output: for a class, the score: `"raw"` (the logit; default), `"softmax"` or
            `"log_softmax"`.

    Returns:
        `(T, *shape)`: one input per target (`T = 1` for an int target), ready for
        `model.apply` and for `jdnn.viz.plot_maximized_inputs`.

    Raises:
        ValueError: for an unknown layer path (the message lists the model's paths), a target
            that is not a unit of that layer or a class of the model, blur or jitter on an input
            that is not an image, or a bad step count, range or setting.
        TypeError: for a `TrainState` passed as params, or a target that is not ints.

    Examples:
        >>> digits = jdnn.explain.activation_maximization(
        ...     model, ts.params, ts.state, range(10), shape=(8, 8, 1), key=0,
        ...     value_range=(0, 1))                                    # (10, 8, 8, 1)
    """
    entry = "activation_maximization"
    check_model(entry, model, params, state)
    shape = tuple(whole_number(entry, "shape", n, minimum=1) for n in np.atleast_1d(shape))
    steps = whole_number(entry, "steps", steps, minimum=1)
    blur_every = whole_number(entry, "blur_every", blur_every, minimum=1)
    blur_sigma = float(_image_option(entry, "blur_sigma", blur_sigma, 0.5, shape))
    jitter = whole_number(entry, "jitter", _image_option(entry, "jitter", jitter, 1, shape))
    value_range = _value_range(entry, value_range)
    if not (blur_sigma >= 0 and _real(l2) and l2 >= 0 and _real(learning_rate)
            and learning_rate > 0):
        raise ValueError(f"{entry}: blur_sigma and l2 must be numbers >= 0 and learning_rate a "
                         f"number > 0; got blur_sigma={blur_sigma}, l2={l2!r}, "
                         f"learning_rate={learning_rate!r}")
    state = full_state(entry, model, state, shape)
    units = _units(entry, model, params, state, shape, layer, output, position)
    target_ids = _target_ids(entry, target, units, layer)
    return _maximize(params, state, target_ids, as_key(entry, key), jnp.float32(l2),
                     jnp.float32(learning_rate), model=model, layer=layer,
                     position=None if position is None else tuple(int(i) for i in position),
                     output=output,
                     shape=shape, steps=steps, blur_sigma=blur_sigma, blur_every=blur_every,
                     jitter=jitter, value_range=value_range)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _value_range(entry: str, value_range: Any) -> tuple[float, float] | None:
    """`(low, high)` as floats with `low < high`, or None."""
    if value_range is None:
        return None
    pair = tuple(value_range) if isinstance(value_range, (tuple, list)) else ()
    if not (len(pair) == 2 and all(_real(v) for v in pair) and pair[0] < pair[1]):
        raise ValueError(f"{entry}: value_range must be (low, high) with low < high, e.g. "
                         f"(0, 1), or None; got {value_range!r}")
    return float(pair[0]), float(pair[1])


def _units(entry: str, model: Layer, params: Any, state: Any, shape: tuple[int, ...],
           layer: str | None, output: str, position: Any) -> int:
    """How many units the target picks from: the model's classes, or the layer's features
    (last axis); checks `position` against the layer's feature maps."""
    one = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    if position is not None and layer is None:
        raise ValueError(f"{entry}: position picks a place in a layer's feature maps; give the "
                         f"layer too (layer='3_conv2d', say), or leave position=None")
    if layer is None:
        return check_output(entry, model, output, output_shape(model, params, state, one))
    if layer not in _layer_paths(model.spec):
        raise ValueError(f"{entry}: the model has no layer {layer!r}; its layer paths are "
                         f"{_layer_paths(model.spec)}")
    if output != "raw":
        raise ValueError(f"{entry}: output={output!r} transforms a class score; a layer's unit "
                         f"is excited as it is, so leave output='raw' with layer={layer!r}")
    out = jax.eval_shape(layer_activation(model, layer), params, state, one)
    if len(out.shape) < 2:
        raise ValueError(f"{entry}: the layer {layer!r} outputs shape {out.shape}, with no "
                         f"feature axis to pick a unit from")
    places = out.shape[1:-1]
    if position is not None and not (
            isinstance(position, (tuple, list)) and len(position) == len(places) > 0
            and all(_real(i) and float(i).is_integer() and 0 <= i < n
                    for i, n in zip(position, places))):
        raise ValueError(f"{entry}: position must be one index per spatial axis of the layer "
                         f"{layer!r}'s output {('B', *out.shape[1:])}, within "
                         f"{tuple(places)}; got {position!r}")
    return out.shape[-1]


def _target_ids(entry: str, target: Any, units: int, layer: str | None) -> jax.Array:
    values = np.asarray(list(target) if isinstance(target, range) else target)
    if not (np.issubdtype(values.dtype, np.integer) and values.ndim in (0, 1) and values.size):
        raise TypeError(f"{entry}: target must be an int or a non-empty sequence of ints (e.g. "
                        f"range(10)), got {target!r}")
    bad = values[(values < 0) | (values >= units)]
    if bad.size:
        what = "classes" if layer is None else f"units on the last axis of layer {layer!r}"
        raise ValueError(f"{entry}: target {bad.ravel()[0]} is out of range: there are {units} "
                         f"{what} (0..{units - 1})")
    return jnp.asarray(values.reshape(-1), jnp.int32)
