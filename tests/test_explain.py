"""jdnn.explain against hand computations: saliency is jax.grad of the target's logit,
integrated gradients is complete (and exact on a linear model), occlusion of an ignored input
is 0, SmoothGrad without noise is saliency, activation maximization finds the analytic optimum
of a linear unit; each method compiles once per shape; bad arguments are clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

import jdnn
from jdnn import explain
from jdnn.core import Layer, make_spec
from jdnn.explain.perturbation import windows
from jdnn.explain.maximization import gaussian_blur

ATTRIBUTIONS = (explain.saliency, explain.integrated_gradients, explain.occlusion,
                lambda *args, **kw: explain.smoothgrad(*args, key=0, samples=4, **kw))


def random_params(model, input_shape, seed=0, scale=1.0):
    """Params (and state) drawn with NumPy: no compiled initializers, fast tests."""
    rng = np.random.default_rng(seed)
    params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape)[1:])
    params = jax.tree.map(lambda a: (scale * rng.normal(size=a.shape)).astype(a.dtype), params)
    return params, jax.tree.map(lambda a: np.ones(a.shape, a.dtype), state)


@functools.cache
def compiled_apply(model):
    return jax.jit(lambda params, state, x: model.apply(params, state, x)[0])


def logits_of(model, params, state, x):
    """The model's outputs, compiled (op-by-op dispatch would be slower here)."""
    return np.asarray(compiled_apply(model)(params, state, jnp.asarray(x, jnp.float32)))


# Smooth activations and average pooling: integrated gradients' quadrature converges fast on
# them, so completeness checks the implementation, not the quadrature's error at ReLU kinks.
@pytest.fixture(scope="module")
def mlp():
    model = jdnn.serial(jdnn.Dense(16), jdnn.Tanh(), jdnn.Dense(8), jdnn.Tanh(), jdnn.Dense(5))
    params, state = random_params(model, (1, 12))
    x = np.random.default_rng(1).normal(size=(6, 12)).astype(np.float32)
    return model, params, state, x


@pytest.fixture(scope="module")
def cnn():
    model = jdnn.serial(jdnn.Conv2D(4, 3), jdnn.Gelu(), jdnn.AvgPool2D(2), jdnn.Flatten(),
                        jdnn.Dense(3))
    params, state = random_params(model, (1, 6, 6, 1), scale=0.5)
    x = np.random.default_rng(2).uniform(size=(4, 6, 6, 1)).astype(np.float32)
    return model, params, state, x


# ---------------------------------------------------------------------------------------------
# Saliency and SmoothGrad


@pytest.mark.parametrize("output", ["raw", "log_softmax"])
def test_saliency_is_the_gradient_of_the_target_score(mlp, output):
    model, params, state, x = mlp
    target = np.array([0, 4, 2, 2, 1, 3])
    got = explain.saliency(model, params, state, x, target, output=output)
    transform = jax.nn.log_softmax if output == "log_softmax" else (lambda y: y)

    @jax.jit
    @jax.grad
    def by_hand(xs):  # examples do not interact: the gradient of the sum is each one's
        scores = transform(model.apply(params, state, xs)[0])
        return scores[np.arange(len(xs)), target].sum()

    np.testing.assert_allclose(got, by_hand(jnp.asarray(x)), rtol=1e-5, atol=1e-6)


def test_saliency_of_a_cnn_with_one_target_for_all(cnn):
    model, params, state, x = cnn
    got = explain.saliency(model, params, state, x, 2)
    want = jax.jit(jax.grad(lambda xs: model.apply(params, state, xs)[0][:, 2].sum()))(x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_explanations_run_in_inference_mode():
    # running statistics, not the batch's; dropout off (in training it would need a key)
    model = jdnn.serial(jdnn.Dense(6), jdnn.BatchNorm(), jdnn.Dropout(0.5), jdnn.Dense(3))
    params, state = random_params(model, (1, 4))
    state = jax.tree.map(lambda a: a * 0.5, state)  # running mean 0.5, variance 0.5
    x = np.random.default_rng(8).normal(size=(5, 4)).astype(np.float32)
    got = explain.saliency(model, params, state, x, 1)
    want = jax.jit(jax.grad(lambda xs: model.apply(params, state, xs)[0][:, 1].sum()))(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_smoothgrad_without_noise_is_saliency_and_with_noise_follows_its_key(mlp):
    model, params, state, x = mlp
    target = np.array([0, 1, 2, 0, 4, 3])
    plain = explain.saliency(model, params, state, x, target)
    np.testing.assert_allclose(explain.smoothgrad(model, params, state, x, target, key=0,
                                                  noise=0.0, samples=8), plain,
                               rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    a = explain.smoothgrad(model, params, state, x, target, key=jax.random.key(1), samples=8)
    b = explain.smoothgrad(model, params, state, x, target, key=jax.random.key(1), samples=8)
    c = explain.smoothgrad(model, params, state, x, target, key=jax.random.key(2), samples=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)


# ---------------------------------------------------------------------------------------------
# Integrated gradients


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_integrated_gradients_are_complete(net, request):
    model, params, state, x = request.getfixturevalue(net)
    rng = np.random.default_rng(3)
    target = rng.integers(0, logits_of(model, params, state, x[:1]).shape[1], len(x))
    baseline = rng.normal(scale=0.1, size=x.shape).astype(np.float32)  # one per example
    attr, delta = explain.integrated_gradients(model, params, state, x, target,
                                               baseline=baseline, return_delta=True)
    rows = np.arange(len(x))
    gap = (logits_of(model, params, state, x)[rows, target]
           - logits_of(model, params, state, baseline)[rows, target])
    total = np.asarray(attr).reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(gap) > 0.05), gap  # a gap worth attributing
    np.testing.assert_array_less(np.abs(total - gap), 0.01 * np.abs(gap))
    np.testing.assert_allclose(delta, total - gap, atol=1e-4)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle", "riemann_trapezoid"])
def test_integrated_gradients_of_a_linear_model_are_input_times_weight(method):
    model = jdnn.Dense(3)
    params, state = random_params(model, (1, 5))
    x = np.random.default_rng(4).normal(size=(2, 5)).astype(np.float32)
    attr = explain.integrated_gradients(model, params, state, x, [1, 2], baseline=0.5,
                                        steps=3, method=method)
    want = (x - 0.5) * params["w"][:, [1, 2]].T
    np.testing.assert_allclose(attr, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Occlusion


def test_occlusion_of_an_ignored_input_is_zero_and_of_a_linear_model_is_exact():
    model = jdnn.serial(jdnn.Dense(3))
    params, state = random_params(model, (1, 6))
    params["0_dense"]["w"][4] = 0.0  # the model ignores feature 4
    x = np.random.default_rng(5).normal(size=(3, 6)).astype(np.float32)
    occ = np.asarray(explain.occlusion(model, params, state, x, 1, window=1, fill=0.25))
    np.testing.assert_allclose(occ[:, 4], 0.0, atol=1e-7)
    np.testing.assert_allclose(occ, (x - 0.25) * params["0_dense"]["w"][:, 1], rtol=1e-5,
                               atol=1e-6)
    assert np.all(occ[:, [0, 1, 2, 3, 5]] != 0.0)


def test_occlusion_of_images_averages_the_windows_covering_each_pixel(cnn):
    model, params, state, x = cnn
    occ = np.asarray(explain.occlusion(model, params, state, x, 1, window=(3, 3), stride=2))
    # by hand: each window's drop, spread over its pixels, divided by the windows per pixel
    want, covers = np.zeros_like(x), np.zeros(x.shape[1:])
    base = logits_of(model, params, state, x)[:, 1]
    for r in (0, 2, 3):  # 0, 2, and 3 flush with the end (6 - 3)
        for c in (0, 2, 3):
            covered = x.copy()
            covered[:, r:r + 3, c:c + 3, :] = 0.0
            drop = base - logits_of(model, params, state, covered)[:, 1]
            want[:, r:r + 3, c:c + 3, :] += drop[:, None, None, None]
            covers[r:r + 3, c:c + 3, :] += 1
    np.testing.assert_allclose(occ, want / covers, rtol=1e-4, atol=1e-5)


def test_windows_cover_every_entry_once_per_position():
    masks = windows((5, 4, 2), (2, 3), (2, 2))
    assert masks.shape == (3 * 2, 5, 4, 2)  # rows 0, 2, 3; columns 0, 1
    assert masks.sum(axis=0).min() >= 1
    assert np.all(masks.sum(axis=(1, 2, 3)) == 2 * 3 * 2)


# ---------------------------------------------------------------------------------------------
# Compiled once per shape


def counted_dense(features):
    """A Dense layer that counts how often its `apply` is traced."""
    dense = jdnn.Dense(features)
    traces = []

    def apply(params, state, x, *, key=None, train=False):
        traces.append(1)
        return dense.apply(params, state, x, key=key, train=train)

    return Layer(dense.init, apply, make_spec("CountedDense", features=features)), traces


@pytest.mark.parametrize("method", ATTRIBUTIONS, ids=["saliency", "ig", "occlusion", "smooth"])
def test_each_method_compiles_once_per_shape(method):
    model, traces = counted_dense(3)
    params, _ = random_params(model, (1, 4))
    rng = np.random.default_rng(6)
    first = method(model, params, {}, rng.normal(size=(5, 4)), 0)
    count = len(traces)
    second = method(model, params, {}, rng.normal(size=(5, 4)), np.array([2, 1, 0, 1, 2]))
    assert len(traces) == count > 0
    assert first.shape == second.shape == (5, 4) and not np.allclose(first, second)
    method(model, params, {}, rng.normal(size=(7, 4)), 1)  # a new shape compiles again
    assert len(traces) > count


def test_activation_maximization_compiles_once_per_shape():
    model, traces = counted_dense(3)
    params, _ = random_params(model, (1, 4))
    first = explain.activation_maximization(model, params, {}, [0, 1], shape=(4,), key=0,
                                            steps=5)
    count = len(traces)
    second = explain.activation_maximization(model, params, {}, [2, 0], shape=(4,), key=1,
                                             steps=5, l2=0.1, learning_rate=0.1)
    assert len(traces) == count > 0 and not np.allclose(first, second)


@pytest.mark.parametrize("method", ATTRIBUTIONS[1:3], ids=["ig", "occlusion"])
def test_a_batch_size_explains_the_same(mlp, method):
    model, params, state, x = mlp  # 6 examples, 4 at a time: a short last batch
    np.testing.assert_allclose(method(model, params, state, x, 1, batch_size=4),
                               method(model, params, state, x, 1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Activation maximization


def test_maximizing_a_linear_class_finds_the_analytic_optimum():
    # score w_t . x + b_t - l2 |x|^2 peaks at x = w_t / (2 l2)
    model = jdnn.Dense(3)
    params, state = random_params(model, (1, 4))
    best = explain.activation_maximization(model, params, state, [0, 2], shape=(4,), key=0,
                                           steps=200, learning_rate=0.05, l2=0.5)
    np.testing.assert_allclose(best, params["w"][:, [0, 2]].T, atol=0.02)
    clipped = explain.activation_maximization(model, params, state, 1, shape=(4,), key=0,
                                              steps=200, l2=0.0, value_range=(0, 1))
    np.testing.assert_allclose(clipped[0], params["w"][:, 1] > 0, atol=1e-6)


def test_maximizing_a_unit_of_a_named_layer():
    model = jdnn.serial(jdnn.Dense(3), jdnn.Relu(), jdnn.Dense(2))
    params, state = random_params(model, (1, 4))
    best = explain.activation_maximization(model, params, None, 1, shape=(4,), key=1,
                                           layer="0_dense", steps=200, l2=0.5)
    np.testing.assert_allclose(best[0], params["0_dense"]["w"][:, 1], atol=0.02)


def test_maximizing_one_position_of_a_feature_map_finds_its_filter():
    # a convolution's output at (2, 2) is w . (the 3x3 patch around it) + b: the optimum under
    # the penalty is the filter / (2 l2) on that patch and 0 elsewhere
    model = jdnn.serial(jdnn.Conv2D(2, 3), jdnn.Relu())
    params, state = random_params(model, (1, 5, 5, 1))
    best = explain.activation_maximization(model, params, state, [0, 1], shape=(5, 5, 1), key=0,
                                           layer="0_conv2d", position=(2, 2), steps=200, l2=0.5,
                                           blur_sigma=0, jitter=0)
    want = np.zeros((2, 5, 5, 1), np.float32)
    want[:, 1:4, 1:4, 0] = np.moveaxis(params["0_conv2d"]["w"][:, :, 0, :], -1, 0)
    np.testing.assert_allclose(best, want, atol=0.02)


def test_maximized_images_excite_their_class_more_than_any_input(cnn):
    model, params, state, x = cnn  # blur and jitter are on for images by default
    best = explain.activation_maximization(model, params, state, range(3), shape=(6, 6, 1),
                                           key=0, steps=32, learning_rate=0.1,
                                           value_range=(0, 1))
    assert best.shape == (3, 6, 6, 1)
    assert float(best.min()) >= 0.0 and float(best.max()) <= 1.0
    logits = logits_of(model, params, state, best)
    assert np.all(np.diag(logits) > logits_of(model, params, state, x).max(axis=0))


def test_gaussian_blur_is_scipys_inside_and_keeps_a_constant_image():
    image = np.random.default_rng(7).uniform(size=(7, 6, 2)).astype(np.float32)
    got = np.asarray(jax.jit(gaussian_blur, static_argnums=1)(image, 0.5))
    want = scipy.ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0), mode="constant",
                                         truncate=2.0)
    np.testing.assert_allclose(got[1:-1, 1:-1], want[1:-1, 1:-1], rtol=1e-5)
    np.testing.assert_allclose(gaussian_blur(jnp.full((5, 5, 1), 0.3), 1.0), 0.3, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Clear errors


def test_bad_targets_and_inputs_are_clear_errors(mlp):
    model, params, state, x = mlp
    with pytest.raises(ValueError, match=r"target 5 is not a class of this model, which has 5"):
        explain.saliency(model, params, state, x, 5)
    with pytest.raises(ValueError, match=r"target has 2 entries but x has 6 examples"):
        explain.saliency(model, params, state, x, [0, 1])
    with pytest.raises(TypeError, match=r"target must be a class index"):
        explain.saliency(model, params, state, x, 1.5)
    with pytest.raises(ValueError, match=r"x must be a non-empty batch.*pass x\[None\]"):
        explain.saliency(model, params, state, x[0], 0)
    with pytest.raises(TypeError, match=r"x must be floats, got dtype int32"):
        explain.saliency(model, params, state, x.astype(np.int32), 0)
    with pytest.raises(jdnn.LayerError, match=r"Dense layer at 0_dense"):
        explain.saliency(model, params, state, x[:, :5], 0)
    with pytest.raises(ValueError, match=r"output must be one of"):
        explain.saliency(model, params, state, x, 0, output="probability")


def test_bad_model_arguments_are_clear_errors(mlp):
    model, params, state, x = mlp
    train_state = jdnn.TrainState(params, state, (), jax.random.key(0), jnp.int32(0))
    with pytest.raises(TypeError, match=r"params is a TrainState; pass its parts: "
                                        r"saliency\(model, train_state.params"):
        explain.saliency(model, train_state, None, x, 0)
    with pytest.raises(TypeError, match=r"model must be a jdnn Layer"):
        explain.occlusion(lambda v: v, params, state, x, 0)
    image_model = jdnn.Conv2D(2, 3)
    image_params, _ = random_params(image_model, (1, 6, 6, 1))
    with pytest.raises(ValueError, match=r"one score per class.*outputs shape \('B', 6, 6, 2\)"):
        explain.saliency(image_model, image_params, {}, np.zeros((1, 6, 6, 1)), 0)
    normed = jdnn.serial(jdnn.Dense(3), jdnn.BatchNorm())
    normed_params, _ = random_params(normed, (1, 12))
    with pytest.raises(ValueError, match=r"keeps statistics in its state.*train_state.state"):
        explain.saliency(normed, normed_params, None, x, 0)
    probabilities = jdnn.serial(jdnn.Dense(3), jdnn.Softmax())
    prob_params, _ = random_params(probabilities, (1, 12))
    with pytest.raises(ValueError, match=r"already outputs probabilities.*output='raw'"):
        explain.saliency(probabilities, prob_params, None, x, 0, output="softmax")


def test_bad_method_options_are_clear_errors(cnn):
    model, params, state, x = cnn
    with pytest.raises(ValueError, match=r"baseline must be a number, one input of shape "
                                         r"\(6, 6, 1\)"):
        explain.integrated_gradients(model, params, state, x, 0, baseline=np.zeros((6, 6)))
    with pytest.raises(ValueError, match=r"method must be one of"):
        explain.integrated_gradients(model, params, state, x, 0, method="simpson")
    with pytest.raises(ValueError, match=r"steps must be an int >= 2, got 1"):
        explain.integrated_gradients(model, params, state, x, 0, steps=1,
                                     method="riemann_trapezoid")
    with pytest.raises(ValueError, match=r"noise must be a float >= 0"):
        explain.smoothgrad(model, params, state, x, 0, key=0, noise=-0.1)
    with pytest.raises(TypeError, match=r"smoothgrad: key must be a jax.random.key"):
        explain.smoothgrad(model, params, state, x, 0, key="seed")
    with pytest.raises(ValueError, match=r"window \(7, 7\) with stride \(1, 1\) does not fit"):
        explain.occlusion(model, params, state, x, 0, window=7)
    with pytest.raises(ValueError, match=r"window must be a positive int or a tuple"):
        explain.occlusion(model, params, state, x, 0, window=(0, 2))


def test_bad_maximization_arguments_are_clear_errors(mlp):
    model, params, state, _ = mlp
    call = explain.activation_maximization
    with pytest.raises(ValueError, match=r"no layer '9_relu'; its layer paths are \['0_dense'"):
        call(model, params, state, 0, shape=(12,), key=0, layer="9_relu")
    with pytest.raises(ValueError, match=r"target 16 is out of range: there are 16 units on "
                                         r"the last axis of layer '1_tanh'"):
        call(model, params, state, [0, 16], shape=(12,), key=0, layer="1_tanh")
    with pytest.raises(ValueError, match=r"target 7 is out of range: there are 5 classes"):
        call(model, params, state, 7, shape=(12,), key=0)
    with pytest.raises(ValueError, match=r"blur_sigma shifts or blurs images .* \(12,\)"):
        call(model, params, state, 0, shape=(12,), key=0, blur_sigma=1.0)
    with pytest.raises(ValueError, match=r"leave output='raw' with layer='1_tanh'"):
        call(model, params, state, 0, shape=(12,), key=0, layer="1_tanh", output="softmax")
    with pytest.raises(ValueError, match=r"value_range must be \(low, high\) with low < high"):
        call(model, params, state, 0, shape=(12,), key=0, value_range=(1, 0))
    with pytest.raises(TypeError, match=r"target must be an int or a non-empty sequence"):
        call(model, params, state, [], shape=(12,), key=0)
    with pytest.raises(ValueError, match=r"position picks a place in a layer's feature maps"):
        call(model, params, state, 0, shape=(12,), key=0, position=(1, 1))
    with pytest.raises(ValueError, match=r"position must be one index per spatial axis of the "
                                         r"layer '0_dense'"):
        call(model, params, state, 0, shape=(12,), key=0, layer="0_dense", position=(1,))


def test_explain_needs_no_matplotlib():
    import subprocess
    import sys

    code = ("import sys, jdnn.explain; "
            "assert 'matplotlib' not in sys.modules, 'jdnn.explain imported matplotlib'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

