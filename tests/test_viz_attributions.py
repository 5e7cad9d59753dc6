"""plot_attributions and plot_maximized_inputs: the numbers drawn are the arrays given (channel
sums, per-tile symmetric limits), the files are real non-blank images, bad shapes are clear
errors. Plain arrays stand in for attributions: drawing needs no model."""

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from jdnn import viz


def check_png(path, min_width=200):
    """A valid, non-blank PNG at least `min_width` pixels wide."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width, (image.format, image.size)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10.0, "blank image"


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(5, 6, 6, 2)).astype(np.float32)
    return x, {name: rng.normal(size=x.shape).astype(np.float32)
               for name in ("saliency", "occlusion")}


def test_attribution_heatmaps_draw_channel_sums_on_symmetric_scales(batch, tmp_path):
    x, attributions = batch
    fig = viz.plot_attributions(x, attributions, labels=[f"class {i}" for i in range(5)],
                                max_examples=3, path=tmp_path / "attr.png")
    assert isinstance(fig, Figure)
    data = fig.jdnn_data
    np.testing.assert_array_equal(data["images"], x[:3])
    for name, a in attributions.items():
        np.testing.assert_allclose(data["maps"][name], a[:3].sum(axis=-1), rtol=1e-6)
        np.testing.assert_allclose(data["vmax"][name],
                                   np.abs(a[:3].sum(axis=-1)).max(axis=(1, 2)), rtol=1e-6)
    heatmaps = [image for ax in fig.axes for image in ax.get_images()
                if image.get_cmap().name == "RdBu_r"]
    assert len(heatmaps) == 3 * 2
    assert all(image.get_clim()[0] == -image.get_clim()[1] for image in heatmaps)
    titles = [ax.get_title() for ax in fig.axes]
    assert {"class 0", "class 2", "saliency", "occlusion"} <= set(titles)
    check_png(tmp_path / "attr.png")


def test_rows_are_drawn_as_images_of_the_given_shape(tmp_path):
    x = np.random.default_rng(1).uniform(size=(2, 64))
    fig = viz.plot_attributions(x, x - 0.5, image_shape=(8, 8), overlay=False,
                                path=tmp_path / "rows.svg")
    assert fig.jdnn_data["images"].shape == (2, 8, 8, 1)
    np.testing.assert_allclose(fig.jdnn_data["maps"]["attribution"], (x - 0.5).reshape(2, 8, 8),
                               rtol=1e-6)
    assert (tmp_path / "rows.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"64 features per example, which do not fill "
                                         r"image_shape=\(7, 7\)"):
        viz.plot_attributions(x, x, image_shape=(7, 7))


def test_attributions_must_match_the_inputs(batch):
    x, attributions = batch
    with pytest.raises(ValueError, match=r"each attribution must have the shape of x "
                                         r"\(5, 6, 6, 2\)"):
        viz.plot_attributions(x, {"saliency": attributions["saliency"][:, :3]})
    with pytest.raises(ValueError, match=r"attributions is an empty dict"):
        viz.plot_attributions(x, {})


def test_maximized_inputs_grid(tmp_path):
    images = np.random.default_rng(2).uniform(size=(12, 8, 8, 1)).astype(np.float32)
    fig = viz.plot_maximized_inputs(images, path=tmp_path / "max.png")
    np.testing.assert_array_equal(np.stack(fig.jdnn_data["tiles"]), images[..., 0])
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.get_images()]
    assert [ax.get_title() for ax in shown] == [str(i) for i in range(12)]
    assert len(fig.axes) == 20  # two rows of ten; the 8 spare tiles hidden
    check_png(tmp_path / "max.png")
    rgb = viz.plot_maximized_inputs(np.random.default_rng(3).normal(size=(2, 4, 4, 3)),
                                    titles=["a", "b"])
    assert all(0.0 <= tile.min() and tile.max() <= 1.0 for tile in rgb.jdnn_data["tiles"])
    with pytest.raises(ValueError, match=r"1 titles for 12 images"):
        viz.plot_maximized_inputs(images, titles=["only one"])
    with pytest.raises(ValueError, match=r"images must be a batch of images"):
        viz.plot_maximized_inputs(np.zeros(5))
