"""jdnn.data.datasets: layouts, dtypes, stratified seeded splits, the geometry of the toy sets,
the real digits data, and every argument check."""

import numpy as np
import pytest

from jdnn.data.datasets import digits, moons, spirals, xor


def class_counts(y, classes):
    return np.bincount(y, minlength=classes)


# --- xor -------------------------------------------------------------------------------------


def test_xor_is_the_four_points_with_their_labels():
    (x, y), (x_test, y_test) = xor()
    assert x.dtype == y.dtype == np.float32
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]))
    np.testing.assert_array_equal(x_test, x)
    np.testing.assert_array_equal(y_test, y)
    assert x_test is not x and not np.shares_memory(x_test, x)


def test_xor_repeat_tiles_the_points():
    (x, y), (x_test, _) = xor(repeat=3)
    assert x.shape == (12, 2) and y.shape == (12,) and x_test.shape == (12, 2)
    np.testing.assert_array_equal(x[8:], x[:4])
    np.testing.assert_array_equal(y, np.tile([0, 1, 1, 0], 3))


@pytest.mark.parametrize("repeat", [0, -1, 1.5, True])
def test_xor_rejects_a_bad_repeat(repeat):
    with pytest.raises(ValueError, match=r"xor: repeat must be an int >= 1"):
        xor(repeat=repeat)


# --- moons -----------------------------------------------------------------------------------


def test_moons_shapes_dtypes_and_stratified_split():
    (x, y), (x_test, y_test) = moons(400, noise=0.2)
    assert x.shape == (300, 2) and x_test.shape == (100, 2)
    assert x.dtype == x_test.dtype == np.float32
    assert y.dtype == y_test.dtype == np.int32
    np.testing.assert_array_equal(class_counts(y, 2), [150, 150])
    np.testing.assert_array_equal(class_counts(y_test, 2), [50, 50])


def test_moons_without_noise_lie_on_the_two_raw_half_circles():
    (x, y), (x_test, y_test) = moons(200, noise=0.0)
    x, y = np.concatenate([x, x_test]), np.concatenate([y, y_test])
    outer, inner = x[y == 0], x[y == 1] - np.array([1.0, 0.5], np.float32)
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-5)   # centred at (0, 0)
    np.testing.assert_allclose(np.hypot(*inner.T), 1.0, atol=1e-5)   # centred at (1, 0.5)
    assert (outer[:, 1] >= -1e-6).all() and (inner[:, 1] <= 1e-6).all()
    assert x[:, 0].max() > 1.9  # raw coordinates, not standardized


def test_moons_is_reproducible_and_the_seed_matters():
    (a, ya), _ = moons(100, seed=3)
    (b, yb), _ = moons(100, seed=3)
    (c, _), _ = moons(100, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 3}, r"moons: n must be an int >= 4"),
    ({"noise": -0.1}, r"moons: noise must be a finite float >= 0"),
    ({"test_fraction": 0.0}, r"moons: test_fraction must be a float in \(0, 1\)"),
    ({"test_fraction": 1.0}, r"test_fraction must be a float in \(0, 1\)"),
    ({"n": 10, "test_fraction": 0.05}, r"gives 9 train / 1 test examples.*2 classes"),
])
def test_moons_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moons(**kwargs)


# --- spirals ---------------------------------------------------------------------------------


def test_spirals_shapes_labels_and_stratified_split():
    (x, y), (x_test, y_test) = spirals(600, classes=3)
    assert x.shape == (450, 2) and x_test.shape == (150, 2)
    assert x.dtype == np.float32 and y.dtype == y_test.dtype == np.int32
    np.testing.assert_array_equal(class_counts(y, 3), [150, 150, 150])
    np.testing.assert_array_equal(class_counts(y_test, 3), [50, 50, 50])
    assert (np.hypot(*x.T) <= 1.0 + 1e-6).all()


def test_spirals_uneven_n_gives_the_remainder_to_the_first_classes():
    (_, y), (_, y_test) = spirals(11, classes=3, test_fraction=0.4)
    np.testing.assert_array_equal(class_counts(np.concatenate([y, y_test]), 3), [4, 4, 3])


def test_spirals_without_noise_lie_on_rotated_arms():
    turns, classes = 1.5, 4
    (x, y), (x_test, y_test) = spirals(400, classes=classes, noise=0.0, turns=turns)
    x, y = np.concatenate([x, x_test]).astype(np.float64), np.concatenate([y, y_test])
    radius = np.hypot(*x.T)
    expected = 2 * np.pi * (turns * radius + y / classes)
    gap = np.angle(np.exp(1j * (np.arctan2(x[:, 1], x[:, 0]) - expected)))
    np.testing.assert_allclose(gap, 0.0, atol=1e-4)
    # each arm is spaced evenly in radius, from just off the centre out to 1
    np.testing.assert_allclose(np.sort(radius[y == 0]), np.arange(1, 101) / 100, atol=1e-6)


def test_spirals_noise_moves_points_off_the_arms_and_the_seed_matters():
    (clean, _), _ = spirals(200, noise=0.0, seed=1)
    (noisy, _), _ = spirals(200, noise=0.2, seed=1)
    (other, _), _ = spirals(200, noise=0.2, seed=2)
    np.testing.assert_allclose(np.sort(np.hypot(*clean.T)), np.sort(np.hypot(*noisy.T)),
                               atol=1e-6)   # noise is angular: the radii are unchanged
    assert not np.allclose(np.sort(clean, axis=0), np.sort(noisy, axis=0))
    assert not np.array_equal(noisy, other)


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": 1}, r"spirals: classes must be an int >= 2"),
    ({"n": 5, "classes": 3}, r"spirals: n must be an int >= 6"),
    ({"turns": 0}, r"spirals: turns must be a float > 0"),
    ({"noise": float("nan")}, r"spirals: noise must be a finite float >= 0"),
    ({"test_fraction": -0.5}, r"spirals: test_fraction must be a float in \(0, 1\)"),
    ({"n": 12, "classes": 3, "test_fraction": 0.1}, r"spirals: a stratified split"),
])
def test_spirals_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spirals(**kwargs)


# --- digits ----------------------------------------------------------------------------------


def test_digits_flat_is_the_real_normalized_set_split_stratified():
    (x, y), (x_test, y_test) = digits()
    assert x.shape == (1347, 64) and x_test.shape == (450, 64)
    assert x.dtype == np.float32 and y.dtype == y_test.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(x * 16), np.arange(17))   # 17 grey levels
    assert set(np.unique(y_test)) == set(range(10))
    total = class_counts(y, 10) + class_counts(y_test, 10)
    assert total.sum() == 1797
    # stratified: each digit's test share is within one image of a quarter
    assert (np.abs(class_counts(y_test, 10) - total * 0.25) <= 1).all()


def test_digits_nhwc_holds_the_same_pixels_as_flat():
    (flat, y_flat), _ = digits(seed=5)
    (images, y_images), _ = digits(layout="nhwc", seed=5)
    assert images.shape == (1347, 8, 8, 1)
    np.testing.assert_array_equal(images.reshape(-1, 64), flat)
    np.testing.assert_array_equal(y_images, y_flat)


def test_digits_unnormalized_keeps_grey_levels_and_seed_changes_the_split():
    (raw, _), _ = digits(normalize=False, test_fraction=0.5)
    assert raw.dtype == np.float32 and raw.max() == 16.0 and len(raw) == 898
    (a, _), _ = digits(seed=0)
    (b, _), _ = digits(seed=1)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, match", [
    ({"layout": "nchw"}, r'digits: layout must be "flat" \(N, 64\) or "nhwc"'),
    ({"test_fraction": 2}, r"digits: test_fraction must be a float in \(0, 1\)"),
])
def test_digits_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits(**kwargs)
