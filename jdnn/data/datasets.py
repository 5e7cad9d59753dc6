"""Small built-in datasets, returned as NumPy arrays the way Keras' `load_data` does.

Every loader returns `((x_train, y_train), (x_test, y_test))`. Features are float32 with the
examples on the first axis; class labels are int32 (XOR's are float32, ready for
`binary_cross_entropy`). Nothing is downloaded: the toy sets are generated from a seed and
`digits` is the 8x8 digits set that ships inside scikit-learn. Random splits are stratified,
so every class keeps its share in both halves, and a fixed `seed` gives the same arrays on
every machine.
"""

from __future__ import annotations

import math

import numpy as np

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _check_int(fn: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{fn}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(fn: str, value: object) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{fn}: test_fraction must be a float in (0, 1), e.g. 0.25, got "
                         f"{value!r}")
    return float(value)


def _check_noise(fn: str, value: object) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{fn}: noise must be a finite float >= 0, got {value!r}")
    return float(value)


def _stratified_split(fn: str, x: np.ndarray, y: np.ndarray, test_fraction: float,
                      seed: int) -> Split:
    """Shuffles and splits `(x, y)` keeping each class's share in both halves."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(y))
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    if min(n_test, n_train) < classes:
        raise ValueError(f"{fn}: a stratified split of {len(y)} examples with test_fraction="
                         f"{test_fraction} gives {n_train} train / {n_test} test examples, but "
                         f"each half needs at least one example of each of the {classes} "
                         f"classes; use more examples or a test_fraction nearer 0.5")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=n_test, stratify=y, random_state=seed)
    return (x_train, y_train), (x_test, y_test)


def xor(*, repeat: int = 1) -> Split:
    """The four XOR points: the smallest problem a linear model cannot solve.

    The train and test sets are the *same* four points (there is nothing else to test on);
    `repeat` tiles them, e.g. to fill a batch. The points come in the order
    `(0, 0), (0, 1), (1, 0), (1, 1)` with labels `0, 1, 1, 0`.

    Args:
        repeat: how many times the four points are tiled (>= 1).

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(4 * repeat, 2)` in `{0, 1}`,
        y float32 `(4 * repeat,)` in `{0, 1}` (floats, ready for `binary_cross_entropy`).
        The test arrays equal the train arrays (separate copies).

    Raises:
        ValueError: if `repeat` is not an int >= 1.

    Examples:
        >>> (x, y), _ = jdnn.data.xor()
        >>> x.shape, y.tolist()
        ((4, 2), [0.0, 1.0, 1.0, 0.0])
    """
    repeat = _check_int("xor", "repeat", repeat, 1)
    x = np.tile(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32), (repeat, 1))
    y = np.tile(np.array([0, 1, 1, 0], np.float32), repeat)
    return (x, y), (x.copy(), y.copy())


def moons(n: int = 1000, *, noise: float = 0.1, test_fraction: float = 0.25,
          seed: int = 0) -> Split:
    """Two interleaving half circles (`sklearn.datasets.make_moons`), split stratified.

    The coordinates are raw, not standardized: x lies roughly in `[-1, 2] x [-0.5, 1]`.

    Args:
        n: total number of points (train + test), split evenly between the two moons.
        noise: standard deviation of the Gaussian noise added to the coordinates (>= 0).
        test_fraction: the share of the `n` points held out for testing, in `(0, 1)`; the test
            set has `ceil(test_fraction * n)` points.
        seed: seeds both the points and the split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(N, 2)`, y int32 `(N,)` in
        `{0, 1}`, with `N = n - ceil(test_fraction * n)` for train.

    Raises:
        ValueError: for `n` < 4, negative `noise`, `test_fraction` outside `(0, 1)` or a split
            too small to hold both classes on each side.

    Examples:
        >>> (x_train, y_train), (x_test, y_test) = jdnn.data.moons(400, noise=0.2)
        >>> x_train.shape, x_test.shape
        ((300, 2), (100, 2))
    """
    from sklearn.datasets import make_moons

    n = _check_int("moons", "n", n, 4)
    noise = _check_noise("moons", noise)
    test_fraction = _check_fraction("moons", test_fraction)
    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return _stratified_split("moons", x.astype(np.float32), y.astype(np.int32), test_fraction,
                             seed)


def spirals(n: int = 1000, *, classes: int = 2, noise: float = 0.2, turns: float = 1.5,
            test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Interleaved spiral arms, one per class: the classic test of a network's capacity.

    Class `k` is an arm of points at radius `r` in `(0, 1]` and angle
    `2 pi (turns * r + k / classes) + noise * N(0, 1)`, i.e. the arms are the same spiral
    rotated by `1 / classes` of a turn, and `noise` jitters each point's *angle* (in radians),
    as in the CS231n spiral set. Points are spaced evenly in radius along each arm. The arms
    meet at the origin, so a few points near it are ambiguous whatever the noise.

    Args:
        n: total number of points; class `k` gets `n // classes` of them, plus one for each
            `k < n % classes`.
        classes: number of arms (classes), >= 2.
        noise: standard deviation of the angular noise in radians (>= 0); 0 gives clean arms.
        turns: how many full turns each arm winds from the center to radius 1 (> 0).
        test_fraction: the share of the points held out for testing, in `(0, 1)`.
        seed: seeds both the noise and the split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(N, 2)` inside the unit disk,
        y int32 `(N,)` in `[0, classes)`.

    Raises:
        ValueError: for `classes` < 2, `n` < 2 * classes, negative `noise`, `turns` <= 0,
            `test_fraction` outside `(0, 1)` or a split too small to hold every class.

    Examples:
        >>> (x_train, y_train), _ = jdnn.data.spirals(600, classes=3)
        >>> x_train.shape, sorted(set(y_train.tolist()))
        ((450, 2), [0, 1, 2])
    """
    classes = _check_int("spirals", "classes", classes, 2)
    n = _check_int("spirals", "n", n, 2 * classes)
    noise = _check_noise("spirals", noise)
    ok = isinstance(turns, (int, float, np.floating)) and not isinstance(turns, bool)
    if not ok or not (math.isfinite(turns) and turns > 0):
        raise ValueError(f"spirals: turns must be a float > 0, got {turns!r}")
    test_fraction = _check_fraction("spirals", test_fraction)

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(classes):
        count = n // classes + (k < n % classes)
        radius = np.linspace(0.0, 1.0, count + 1)[1:]
        angle = 2 * np.pi * (turns * radius + k / classes) + noise * rng.standard_normal(count)
        xs.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        ys.append(np.full(count, k))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int32)
    return _stratified_split("spirals", x, y, test_fraction, seed)


def digits(*, layout: str = "flat", test_fraction: float = 0.25, seed: int = 0,
           normalize: bool = True) -> Split:
    """scikit-learn's 8x8 handwritten digits: 1,797 real images, bundled, no download.

    Each image is 8x8 pixels of 17 grey levels (0..16), downsampled from 32x32 bitmaps of the
    UCI "optical recognition of handwritten digits" set. The split is stratified, so each digit
    keeps its share in train and test.

    Args:
        layout: `"flat"` for `(N, 64)` rows (for `Dense`), `"nhwc"` for `(N, 8, 8, 1)` images
            (for `Conv2D`).
        test_fraction: the share of the 1,797 images held out for testing, in `(0, 1)`; the
            default 0.25 gives 1,347 train / 450 test images.
        seed: seeds the split.
        normalize: divide the pixels by 16 so they lie in `[0, 1]`; if False they stay the raw
            grey levels `0..16` (still float32).

    Returns:
        `((x_train, y_train), (x_test, y_test))`: x float32 `(N, 64)` or `(N, 8, 8, 1)`,
        y int32 `(N,)` in `[0, 10)`.

    Raises:
        ValueError: for an unknown `layout` or `test_fraction` outside `(0, 1)`.

    Examples:
        >>> (x_train, y_train), (x_test, y_test) = jdnn.data.digits(layout="nhwc")
        >>> x_train.shape, x_test.shape
        ((1347, 8, 8, 1), (450, 8, 8, 1))
    """
    from sklearn.datasets import load_digits

    if layout not in ("flat", "nhwc"):
        raise ValueError(f'digits: layout must be "flat" (N, 64) or "nhwc" (N, 8, 8, 1), got '
                         f"{layout!r}")
    test_fraction = _check_fraction("digits", test_fraction)
    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    if normalize:
        x /= 16.0
    if layout == "nhwc":
        x = x.reshape(-1, 8, 8, 1)
    return _stratified_split("digits", x, bunch.target.astype(np.int32), test_fraction, seed)
