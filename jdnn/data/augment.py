"""Data augmentation as pure keyed functions: `augment(key, x) -> x`.

Each constructor checks its arguments and returns a function of a random key and a batch. One
draw from the key gives every example its own shift, crop offset or flip, and the same key
always gives the same batch. The functions are traceable: they run inside `jax.jit`
(shifts and crop offsets are traced values, never Python ints), under `jax.vmap` over a
leading axis of keys and batches, and inside the compiled training step
(`make_train_step(..., augment=...)`). Images are NHWC batches `(B, H, W, C)`;
`gaussian_noise` takes any shape. The work is done by module-level jitted functions with the
hyper-parameters static, so even eager calls run compiled, and every augmentation built with
the same arguments shares one compilation per input shape.

    augment = compose(random_shift(2), random_flip(), gaussian_noise(0.05))
    x_aug = augment(jax.random.key(0), x)         # x: (B, 28, 28, 1)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jdnn.core import Array

Augmentation = Callable[[Array, Array], Array]


def _int_pair(fn: str, name: str, value: object, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints (height, width), each >= `minimum`."""
    values = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    ok = len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                  and v >= minimum for v in values)
    if not ok:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum} or a pair of them "
                         f"(height, width), got {value!r}")
    return values


def _check_float(fn: str, name: str, value: object, low: float, high: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{fn}: {name} must be a float in [{low}, {high}], got {value!r}")
    return float(value)


def _images(fn: str, x: Array) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 4:
        hint = "; a single image needs a batch axis: x[None]" if x.ndim == 3 else ""
        raise ValueError(f"{fn}: expected a batch of NHWC images (batch, height, width, "
                         f"channels) of rank 4, got shape {tuple(x.shape)}{hint}")
    return x


def _flat(sample: Callable, key: Array, shape: tuple[int, ...], *args) -> Array:
    """`sample(key, shape)`, drawn flat and reshaped: XLA compiles a 1-D draw several times
    faster than a multi-dimensional one, and the values are just as random."""
    return sample(key, (math.prod(shape),), *args).reshape(shape)


def _uniform_ints(key: Array, shape: tuple[int, ...], counts: Array) -> Array:
    """Integers uniform in `[0, counts)` (broadcast along the last axis), from one uniform draw.

    For the small ranges of shifts and crops this is as uniform as `jax.random.randint`, and it
    compiles to about half the code (randint draws twice to stay unbiased for huge ranges).
    """
    u = _flat(jax.random.uniform, key, shape)
    return jnp.minimum(jnp.floor(u * counts).astype(jnp.int32), counts - 1)


def random_shift(max_shift: int | tuple[int, int]) -> Augmentation:
    """Shifts each image by a random whole number of pixels, filling the uncovered edge with 0.

    Each example draws its own vertical shift in `[-max_dy, max_dy]` and horizontal shift in
    `[-max_dx, max_dx]` (uniformly, 0 included); content shifted past the border is lost.

    Args:
        max_shift: the largest shift in pixels, an int >= 0 for both axes or a pair
            `(max_dy, max_dx)`.

    Returns:
        `augment(key, x) -> x`: `(B, H, W, C)` in, the same shape and dtype out.

    Raises:
        ValueError: for a negative or non-int `max_shift`; at call time, for `x` not of rank 4.

    Examples:
        >>> shifted = random_shift(2)(jax.random.key(0), x)   # x: (B, 28, 28, 1)
    """
    max_dy, max_dx = _int_pair("random_shift", "max_shift", max_shift, 0)

    def augment(key: Array, x: Array) -> Array:
        return _shift(key, _images("random_shift", x), max_dy, max_dx)

    return augment


@functools.partial(jax.jit, static_argnums=(2, 3))
def _shift(key: Array, x: Array, max_dy: int, max_dx: int) -> Array:
    limit = jnp.array([max_dy, max_dx])
    shifts = _uniform_ints(key, (x.shape[0], 2), 2 * limit + 1) - limit   # (B, 2): dy, dx
    padded = jnp.pad(x, ((0, 0), (max_dy, max_dy), (max_dx, max_dx), (0, 0)))

    def shift_one(image, shift):
        # Output pixel (i, j) reads input pixel (i - dy, j - dx): the content moves by (dy, dx).
        start = (max_dy - shift[0], max_dx - shift[1], 0)
        return lax.dynamic_slice(image, start, x.shape[1:])

    return jax.vmap(shift_one)(padded, shifts)


def random_crop(size: int | tuple[int, int], padding: int | tuple[int, int] = 0
                ) -> Augmentation:
    """Pads each image with zeros, then cuts out a `size` window at a random position.

    With `padding=p` and `size` equal to the image size this is the classic "pad 4 and crop
    32" augmentation for CIFAR; with `padding=0` and a smaller `size` it is a random crop.

    Args:
        size: the output height and width, an int >= 1 or a pair `(height, width)`.
        padding: zeros added on each side first, an int >= 0 or a pair `(pad_y, pad_x)`.

    Returns:
        `augment(key, x) -> x`: `(B, H, W, C)` in, `(B, height, width, C)` out, same dtype.

    Raises:
        ValueError: for a bad `size` or `padding`; at call time, for `x` not of rank 4 or a
            window larger than the padded image.

    Examples:
        >>> crops = random_crop(32, padding=4)(jax.random.key(0), x)   # (B, 32, 32, 3) -> same
    """
    crop_h, crop_w = _int_pair("random_crop", "size", size, 1)
    pad_y, pad_x = _int_pair("random_crop", "padding", padding, 0)

    def augment(key: Array, x: Array) -> Array:
        x = _images("random_crop", x)
        height, width = x.shape[1] + 2 * pad_y, x.shape[2] + 2 * pad_x
        if crop_h > height or crop_w > width:
            raise ValueError(f"random_crop: the window {(crop_h, crop_w)} is larger than the "
                             f"padded images {(height, width)} (images {tuple(x.shape[1:3])} "
                             f"with padding {(pad_y, pad_x)}); use a smaller size or more "
                             f"padding")
        return _crop(key, x, crop_h, crop_w, pad_y, pad_x)

    return augment


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _crop(key: Array, x: Array, crop_h: int, crop_w: int, pad_y: int, pad_x: int) -> Array:
    padded = jnp.pad(x, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)))
    room = jnp.array([padded.shape[1] - crop_h, padded.shape[2] - crop_w])
    corners = _uniform_ints(key, (x.shape[0], 2), room + 1)   # (B, 2): top, left

    def crop_one(image, corner):
        return lax.dynamic_slice(image, (corner[0], corner[1], 0), (crop_h, crop_w, x.shape[3]))

    return jax.vmap(crop_one)(padded, corners)


def random_flip(horizontal: bool = True, vertical: bool = False, p: float = 0.5
                ) -> Augmentation:
    """Mirrors each image with probability `p`, left-right and/or top-bottom.

    Each enabled axis is flipped independently, per example. A horizontal flip reverses the
    width axis (`x[:, :, ::-1]`), a vertical one the height axis (`x[:, ::-1]`). Mind the data:
    a mirrored digit is often no longer that digit.

    Args:
        horizontal: flip left-right.
        vertical: flip top-bottom.
        p: the probability of each flip, in `[0, 1]`: 0 is the identity, 1 always flips.

    Returns:
        `augment(key, x) -> x`: `(B, H, W, C)` in, the same shape and dtype out.

    Raises:
        ValueError: if `p` is outside `[0, 1]` or both axes are disabled; at call time, for `x`
            not of rank 4.

    Examples:
        >>> flipped = random_flip(p=0.5)(jax.random.key(0), x)
    """
    p = _check_float("random_flip", "p", p, 0.0, 1.0)
    if not (horizontal or vertical):
        raise ValueError("random_flip: horizontal and vertical are both False, so nothing would "
                         "flip; enable at least one")
    horizontal, vertical = bool(horizontal), bool(vertical)

    def augment(key: Array, x: Array) -> Array:
        return _flip(key, _images("random_flip", x), horizontal, vertical, p)

    return augment


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _flip(key: Array, x: Array, horizontal: bool, vertical: bool, p: float) -> Array:
    flips = _flat(jax.random.uniform, key, (x.shape[0], 2, 1, 1, 1)) < p   # per example, axis
    if horizontal:
        x = jnp.where(flips[:, 0], x[:, :, ::-1], x)
    if vertical:
        x = jnp.where(flips[:, 1], x[:, ::-1], x)
    return x


def gaussian_noise(stddev: float) -> Augmentation:
    """Adds independent Gaussian noise `N(0, stddev^2)` to every entry.

    Args:
        stddev: the noise's standard deviation, a finite float >= 0 (0 is the identity).

    Returns:
        `augment(key, x) -> x` for floating `x` of any shape; the same shape and dtype out.

    Raises:
        ValueError: for a negative or non-finite `stddev`; at call time, for an integer `x`
            (cast it first, e.g. `x.astype(jnp.float32) / 255`).

    Examples:
        >>> noisy = gaussian_noise(0.1)(jax.random.key(0), x)
    """
    stddev = _check_float("gaussian_noise", "stddev", stddev, 0.0, math.inf)

    def augment(key: Array, x: Array) -> Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"gaussian_noise: x must be floating point, got {x.dtype}; cast it "
                             f"first, e.g. x.astype(jnp.float32) / 255")
        return _noise(key, x, stddev)

    return augment


@functools.partial(jax.jit, static_argnums=2)
def _noise(key: Array, x: Array, stddev: float) -> Array:
    return x + (stddev * _flat(jax.random.normal, key, x.shape, x.dtype)).astype(x.dtype)


def compose(*augmentations: Augmentation) -> Augmentation:
    """Applies augmentations one after another, each with its own key split from the one given.

    Args:
        *augmentations: `augment(key, x) -> x` functions, first to last; none is the identity.

    Returns:
        `augment(key, x) -> x`.

    Raises:
        ValueError: if an argument is not callable (e.g. `random_flip` instead of
            `random_flip()`).

    Examples:
        >>> augment = compose(random_shift(2), random_flip(), gaussian_noise(0.05))
        >>> x_aug = augment(jax.random.key(0), x)
    """
    for i, fn in enumerate(augmentations):
        if not callable(fn):
            raise ValueError(f"compose: augmentation {i} must be a function augment(key, x), "
                             f"got {fn!r}")
    # A constructor passed uncalled (random_flip, not random_flip()) is callable too: catch it.
    for i, fn in enumerate(augmentations):
        if any(fn is constructor for constructor in CONSTRUCTORS):
            raise ValueError(f"compose: augmentation {i} is the constructor {fn.__name__}; call "
                             f"it to get an augmentation, e.g. {fn.__name__}(...)")

    def augment(key: Array, x: Array) -> Array:
        if not augmentations:
            return jnp.asarray(x)
        for fn, fn_key in zip(augmentations, jax.random.split(key, len(augmentations))):
            x = fn(fn_key, x)
        return x

    return augment


# The constructors above: callable, hence easy to pass uncalled where an augmentation is due
# (`compose` and `fit(augment=...)` refuse them by this list).
CONSTRUCTORS = (random_shift, random_crop, random_flip, gaussian_noise, compose)
