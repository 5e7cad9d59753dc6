"""jdnn.data.augment: shapes and dtypes, purity (same key, same batch), per-example randomness,
jit == eager, vmap over keys and batches, content checks against NumPy, and argument checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdnn.data.augment import compose, gaussian_noise, random_crop, random_flip, random_shift

KEY = jax.random.key(0)
SMALL, BIG = (8, 6, 5, 2), (64, 6, 5, 2)   # few shapes: each new one costs a compilation


def images(shape=SMALL, seed=0):
    """Strictly positive random images (NumPy), so any shifted or cropped copy is unique."""
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


def np_shift(image, dy, dx):
    """`image` (H, W, C) moved by (dy, dx) pixels with zero fill, in plain NumPy."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def find_shifts(x, y, max_dy, max_dx):
    """For each example, the unique (dy, dx) with y = np_shift(x, dy, dx); fails otherwise."""
    x, y = np.asarray(x), np.asarray(y)
    found = []
    for image, out in zip(x, y):
        matches = [(dy, dx) for dy in range(-max_dy, max_dy + 1)
                   for dx in range(-max_dx, max_dx + 1)
                   if np.array_equal(np_shift(image, dy, dx), out)]
        assert len(matches) == 1, f"output is not a zero-filled shift of its input: {matches}"
        found.append(matches[0])
    return found


AUGMENTATIONS = {
    "shift": random_shift(2),
    "shift_pair": random_shift((1, 2)),
    "crop": random_crop((4, 3), padding=1),
    "flip": random_flip(horizontal=True, vertical=True),
    "noise": gaussian_noise(0.1),
    "compose": compose(random_shift(2), random_flip(True, True), gaussian_noise(0.1)),
}
OUT_SHAPES = {"crop": (8, 4, 3, 2)}
ALL = compose(random_shift((1, 2)), random_crop((4, 3), padding=1), random_flip(True, True),
              gaussian_noise(0.1))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_shape_dtype_and_purity(name):
    augment, x = AUGMENTATIONS[name], images()
    y = augment(KEY, x)
    assert y.shape == OUT_SHAPES.get(name, x.shape) and y.dtype == x.dtype
    np.testing.assert_array_equal(augment(KEY, x), y)                   # same key, same batch
    assert not np.array_equal(augment(jax.random.key(1), x), y)        # another key differs


def test_jit_of_vmap_over_keys_and_batches_equals_an_eager_loop():
    keys = jax.random.split(KEY, 3)
    xs = np.stack([images(seed=i) for i in range(3)])
    mapped = jax.jit(jax.vmap(chex.assert_max_traces(ALL, n=1)))
    out = mapped(keys, xs)
    assert out.shape == (3, 8, 4, 3, 2)
    for i in range(3):
        np.testing.assert_allclose(out[i], ALL(keys[i], xs[i]), rtol=1e-6)
    mapped(jax.random.split(jax.random.key(7), 3), xs + 1.0)   # new keys and data: no retrace
    chex.clear_trace_counter()


@pytest.mark.parametrize("augment", [random_shift(1), random_crop(4, padding=1), random_flip()],
                         ids=["shift", "crop", "flip"])
def test_each_example_gets_its_own_randomness(augment):
    x = np.broadcast_to(images((1, *BIG[1:])), BIG)   # one image, 64 times
    y = np.asarray(augment(KEY, x))
    assert len({out.tobytes() for out in y}) > 1


def test_old_style_uint32_keys_work():
    x = images()
    y = random_shift(1)(jax.random.PRNGKey(3), x)
    find_shifts(x, y, 1, 1)


# --- random_shift ----------------------------------------------------------------------------


def test_shift_is_a_zero_filled_shift_within_range_and_covers_every_shift():
    x = images(BIG)
    shifts = find_shifts(x, random_shift(1)(KEY, x), 1, 1)
    assert set(shifts) == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    pair = random_shift((1, 2))(KEY, images())   # per-axis limits
    assert {dx for _, dx in find_shifts(images(), pair, 1, 2)} - {-1, 0, 1}


def test_shift_moves_a_single_pixel_by_the_drawn_amount():
    x = np.zeros(BIG, np.float32)
    x[:, 3, 2, :] = 1.0
    y = np.asarray(random_shift(1)(KEY, x))
    for out, (dy, dx) in zip(y, find_shifts(x, y, 1, 1)):
        assert out.sum() == 2.0 and (out[3 + dy, 2 + dx] == 1.0).all()


def test_shift_zero_is_identity_and_integer_images_keep_their_dtype():
    x = np.arange(np.prod(SMALL), dtype=np.uint8).reshape(SMALL)
    y = random_shift(0)(KEY, x)
    assert y.dtype == jnp.uint8
    np.testing.assert_array_equal(y, x)


# --- random_crop -----------------------------------------------------------------------------


def test_crop_is_a_window_of_the_zero_padded_image():
    x = images(BIG)
    y = np.asarray(random_crop(4, padding=1)(KEY, x))
    assert y.shape == (64, 4, 4, 2)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    offsets = set()
    for image, out in zip(padded, y):
        matches = [(i, j) for i in range(5) for j in range(4)
                   if np.array_equal(image[i:i + 4, j:j + 4], out)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) >= 15   # of the 5 x 4 possible positions; ~19 expected from 64 draws


def test_crop_full_size_without_padding_is_identity():
    x = images()
    np.testing.assert_array_equal(random_crop((6, 5))(KEY, x), x)


def test_crop_larger_than_the_padded_image_raises():
    with pytest.raises(ValueError, match=r"random_crop: the window \(9, 5\) is larger than the "
                                         r"padded images \(8, 7\)"):
        random_crop((9, 5), padding=1)(KEY, images())


# --- random_flip -----------------------------------------------------------------------------


def test_flip_p1_mirrors_and_p0_is_identity():
    x = images()
    np.testing.assert_array_equal(random_flip(p=1.0)(KEY, x), x[:, :, ::-1])
    np.testing.assert_array_equal(random_flip(True, True, p=1.0)(KEY, x), x[:, ::-1, ::-1])
    np.testing.assert_array_equal(random_flip(True, True, p=0.0)(KEY, x), x)


def test_flip_half_flips_some_examples_and_leaves_the_others():
    x = images(BIG)
    y = np.asarray(random_flip(p=0.5)(KEY, x))
    flipped = [np.array_equal(out, image[:, ::-1]) for out, image in zip(y, x)]
    kept = [np.array_equal(out, image) for out, image in zip(y, x)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


# --- gaussian_noise --------------------------------------------------------------------------


def test_noise_has_the_requested_std_on_any_shape():
    x = np.full((400, 500), 3.0, np.float32)
    noise = np.asarray(gaussian_noise(0.3)(KEY, x)) - 3.0
    assert noise.shape == (400, 500)
    assert abs(noise.std() - 0.3) < 0.003 and abs(noise.mean()) < 0.003


def test_noise_keeps_the_dtype():
    x = jnp.asarray(images(), jnp.bfloat16)
    y = gaussian_noise(0.1)(KEY, x)
    assert y.dtype == jnp.bfloat16 and not np.array_equal(y, x)


def test_noise_rejects_integer_input():
    with pytest.raises(ValueError, match=r"gaussian_noise: x must be floating point, got uint8"):
        gaussian_noise(0.1)(KEY, np.zeros((2, 3), np.uint8))


# --- compose ---------------------------------------------------------------------------------


def test_compose_applies_each_with_its_own_split_key():
    shift, flip, noise = random_shift(1), random_flip(p=1.0), gaussian_noise(0.1)
    x = images()
    k1, k2, k3 = jax.random.split(KEY, 3)
    expected = noise(k3, flip(k2, shift(k1, x)))
    np.testing.assert_array_equal(compose(shift, flip, noise)(KEY, x), expected)
    np.testing.assert_array_equal(compose()(KEY, x), x)


# --- argument checks -------------------------------------------------------------------------


@pytest.mark.parametrize("build, match", [
    (lambda: random_shift(-1), r"random_shift: max_shift must be an int >= 0 or a pair"),
    (lambda: random_shift(1.5), r"max_shift must be an int >= 0"),
    (lambda: random_shift((1, 2, 3)), r"max_shift must be an int >= 0 or a pair"),
    (lambda: random_shift(True), r"max_shift must be an int >= 0"),
    (lambda: random_crop(0), r"random_crop: size must be an int >= 1"),
    (lambda: random_crop(4, padding=-2), r"random_crop: padding must be an int >= 0"),
    (lambda: random_flip(p=1.5), r"random_flip: p must be a float in \[0.0, 1.0\], got 1.5"),
    (lambda: random_flip(p=-0.1), r"random_flip: p must be a float in \[0.0, 1.0\]"),
    (lambda: random_flip(False, False), r"random_flip: horizontal and vertical are both False"),
    (lambda: gaussian_noise(-0.1), r"gaussian_noise: stddev must be a float in \[0.0, inf\]"),
    (lambda: gaussian_noise(float("nan")), r"gaussian_noise: stddev must be a float"),
    (lambda: compose(random_flip(), 3), r"compose: augmentation 1 must be a function"),
    (lambda: compose(random_flip), r"compose: augmentation 0 is the constructor random_flip; "
                                   r"call it"),
])
def test_constructors_reject_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("augment", [random_shift(1), random_crop(2), random_flip()])
def test_image_augmentations_need_a_batch_of_nhwc_images(augment):
    with pytest.raises(ValueError, match=r"expected a batch of NHWC images .* got shape "
                                         r"\(6, 5, 2\); a single image needs a batch axis"):
        augment(KEY, images()[0])
