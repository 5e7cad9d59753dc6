"""jdnn.data.pipeline: grain pipelines over arrays, IDX files and folders of images; the order
fit draws, per epoch; resuming from the iterator's state; worker processes; its errors. Tests
that need grain skip where it is missing; the others run everywhere."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from jdnn.data import epoch_order, write_idx
from jdnn.data import pipeline as make_pipeline


@pytest.fixture
def grain():
    return pytest.importorskip("grain")


def arrays(n=10, features=3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return x, np.arange(n) % 4


def collect(iterable):
    return [(np.array(x), np.array(y)) for x, y in iterable]


# --- without grain ---------------------------------------------------------------------------


def test_import_jdnn_does_not_import_grain():
    code = "import sys, jdnn, jdnn.data; assert 'grain' not in sys.modules, 'grain imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_grain_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)   # `import grain` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'jdnn\[grain\]'"):
        make_pipeline(arrays(), 4, key=0)


# --- arrays ----------------------------------------------------------------------------------


def test_batches_follow_fits_order_with_a_new_order_each_epoch(grain):
    x, y = arrays()
    key = jax.random.key(7)
    source = make_pipeline((x, y), 4, key=key, epochs=2)
    assert source.steps_per_epoch == 3 and len(source) == 3   # one epoch, fit's unit
    batches = collect(source)
    words = jax.random.key_data(key)
    for epoch in range(2):
        order = epoch_order(words, epoch * 3, 10)   # what fit(x, y) draws at this step
        for b, (xb, yb) in enumerate(batches[3 * epoch:3 * epoch + 3]):
            indices = order[4 * b:4 * b + 4]
            np.testing.assert_array_equal(xb, x[indices])
            np.testing.assert_array_equal(yb, y[indices])
            assert xb.dtype == np.float32 and yb.dtype == np.int32
    assert [len(yb) for _, yb in batches] == [4, 4, 2, 4, 4, 2]
    assert not np.array_equal(batches[0][1], batches[3][1])


def test_drop_remainder_no_shuffle_and_flat_layout(grain):
    x, y = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1), np.arange(10)
    batches = collect(make_pipeline((x, y), 4, shuffle=False, drop_remainder=True,
                                    layout="flat"))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1][0], x[4:8].reshape(4, 4) / np.float32(255))
    np.testing.assert_array_equal(batches[1][1], np.arange(4, 8))


def test_resume_from_the_iterator_state_continues_bit_identically(grain):
    x, y = arrays(n=11)
    source = make_pipeline((x, y), 3, key=1, epochs=3,
                           transform=lambda xb, yb, rng: (xb + rng.normal(size=xb.shape), yb))
    whole = collect(source)
    iterator = iter(source)
    for _ in range(5):   # into the second epoch
        next(iterator)
    state = iterator.get_state()
    resumed = iter(source)
    resumed.set_state(state)
    for (xa, ya), (xb, yb) in zip(whole[5:], collect(resumed), strict=True):
        np.testing.assert_array_equal(xa, xb)   # the transform's draws too
        np.testing.assert_array_equal(ya, yb)


def test_shuffled_pipelines_run_on_and_unshuffled_ones_make_one_pass(grain):
    iterator = iter(make_pipeline(arrays(), 4, key=0))   # training: epoch after epoch
    assert len([next(iterator) for _ in range(7)]) == 7
    assert len(collect(make_pipeline(arrays(), 4, shuffle=False))) == 3   # evaluation


# --- files -----------------------------------------------------------------------------------


def test_idx_files_are_read_and_batched(grain, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    paths = (write_idx(tmp_path / "i.gz", images), write_idx(tmp_path / "l.gz", labels))
    xb, yb = collect(make_pipeline(paths, 8, shuffle=False))[0]
    np.testing.assert_array_equal(xb, images[..., None] / np.float32(255))
    np.testing.assert_array_equal(yb, labels)
    write_idx(tmp_path / "short.gz", labels[:6])
    with pytest.raises(ValueError, match=r"i.gz holds 7 images but .*short.gz holds 6 labels"):
        make_pipeline((paths[0], tmp_path / "short.gz"), 8, shuffle=False)


def test_a_folder_of_images_is_labelled_by_sorted_class_folder(grain, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    written = {}
    for name, count in (("cat", 2), ("ant", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")   # PNG: lossless
            written[(name, i)] = pixels
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    source = make_pipeline(tmp_path, 5, shuffle=False, normalize=False)
    assert source.classes == ["ant", "cat"]
    [(xb, yb)] = collect(source)
    assert xb.shape == (5, 6, 5, 3)
    np.testing.assert_array_equal(yb, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(xb[4], written[("cat", 1)])
    [(grey, _)] = collect(make_pipeline(tmp_path, 5, shuffle=False, image_mode="L",
                                        image_size=(3, 4)))
    assert grey.shape == (5, 3, 4, 1) and 0 <= grey.min() and grey.max() <= 1
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "cat" / "small.png")
    with pytest.raises(ValueError, match=r"images of one batch differ in size .*image_size="):
        collect(make_pipeline(tmp_path, 6, shuffle=False))


# --- worker processes ------------------------------------------------------------------------


def test_two_worker_processes_give_the_same_batches_in_the_same_order(grain):
    # One start only: spawning workers that import jdnn costs seconds. Rewinding a worker
    # iterator with `set_state` is grain's own (tested there) and restarts the workers.
    x, y = arrays(n=9)
    expected = collect(make_pipeline((x, y), 2, key=3, epochs=2))
    iterator = iter(make_pipeline((x, y), 2, key=3, epochs=2, workers=2))
    got = collect(iterator)
    assert len(got) == len(expected) == 10
    for (xa, ya), (xb, yb) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert isinstance(iterator.get_state(), dict)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, ValueError, r"shuffle=True needs the run's key: pass key=jax.random.key\(0\)"),
    ({"key": 0, "layout": "NHWC"}, ValueError, r'layout must be "nhwc" or "flat"'),
    ({"key": 0, "workers": -1}, ValueError, r"workers must be an int >= 0, got -1"),
    ({"key": 0, "epochs": 0}, ValueError, r"epochs must be an int >= 1 or None, got 0"),
    ({"key": "seed"}, TypeError, r"key must be a JAX key \(jax.random.key\(0\)\) or an int"),
])
def test_bad_arguments_are_refused(grain, kwargs, error, match):
    with pytest.raises(error, match="pipeline: " + match):
        make_pipeline(arrays(), 4, **kwargs)


def test_bad_sources_are_refused(grain, tmp_path):
    with pytest.raises(ValueError, match=r"x \(N, ...\) and y \(N,\) with the same N, got "
                                          r"shapes \(10, 3\) and \(9,\)"):
        make_pipeline((np.zeros((10, 3)), np.zeros(9)), 4, shuffle=False)
    with pytest.raises(TypeError, match=r"source must be \(x, y\) arrays"):
        make_pipeline(np.zeros((10, 3)), 4, shuffle=False)
    with pytest.raises(ValueError, match=r"holds no images: expected class folders"):
        make_pipeline(tmp_path, 4, shuffle=False)
    with pytest.raises(ValueError, match=r"drop_remainder=True with batch_size 11 > 10 "):
        make_pipeline(arrays(), 11, shuffle=False, drop_remainder=True)
