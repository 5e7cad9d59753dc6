"""Per-example gradients (`jdnn.privacy.per_example`): against loops of single-example
`jax.grad`, the batch-norm rules against hand-written forwards, clipping against NumPy."""

import collections
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.cli import zoo
from jdnn.core import MissingKeyError
from jdnn.layers.combinators import child_keys
from jdnn.layers.dropout import keep_mask
from jdnn.privacy.per_example import clip_and_aggregate, per_example_grads, rebuild

LOSS = jdnn.losses.softmax_cross_entropy
B = 5


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _setup(model, shape, seed=0):
    """Random params, unit state, inputs and labels; drawn with NumPy (compiling each model's
    initializers would dominate these tests' time)."""
    rng = np.random.default_rng(seed)
    _, params, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(seed))
    params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), params)
    state = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), state)
    x = jnp.asarray(rng.normal(size=shape), jnp.zeros(()).dtype)
    return params, state, x, jnp.asarray(np.arange(shape[0]) % 3)


def _mlp():
    return jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dropout(0.3), jdnn.Dense(6),
                       jdnn.PRelu(), jdnn.Dense(3, use_bias=False))


def _cnn():
    return jdnn.serial(jdnn.Conv2D(3, 3), jdnn.Relu(), jdnn.MaxPool2D(2), jdnn.Dropout(0.2),
                       jdnn.Conv2D(4, (2, 3), strides=2, padding="VALID"), jdnn.Flatten(),
                       jdnn.Dense(3))


def _pe(model, params, state, x, y, key=None, mask=None, **options):
    """`per_example_grads`, compiled (tests run faster compiled than op by op)."""
    return jax.jit(lambda p, s, x, y, k, m: per_example_grads(
        model, LOSS, p, s, x, y, key=k, mask=m, **options))(params, state, x, y, key, mask)


def _stack(grads):
    return jax.tree.map(lambda *g: np.stack(g), *grads)


def _loop(model, params, state, x, y, keys):
    """Example i's gradient and output by jax.grad on a batch of one, with key `keys[i]`."""
    @jax.jit
    def grad(x_i, y_i, key_i):
        def f(p):
            out, _ = model.apply(p, state, x_i, key=key_i, train=True)
            return LOSS(out, y_i)[0], out[0]
        return jax.grad(f, has_aux=True)(params)

    return _stack([grad(x[i:i + 1], y[i:i + 1], keys[i]) for i in range(x.shape[0])])


@pytest.mark.parametrize("model, shape", [(_mlp(), (B, 4)), (_cnn(), (B, 8, 8, 2))],
                         ids=["mlp", "cnn"])
def test_equals_a_loop_of_single_example_grads_with_per_example_dropout_keys(x64, model, shape):
    params, state, x, y = _setup(model, shape)
    key = jax.random.key(7)
    grads, aux = _pe(model, params, state, x, y, key, return_aux=True)
    expected, outputs = _loop(model, params, state, x, y, jax.random.split(key, B))
    chex.assert_trees_all_close(grads, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_equal_structs(grads, params)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.shape == (B, *p.shape)
    np.testing.assert_allclose(aux.outputs, outputs, rtol=1e-12)
    logits = np.asarray(outputs)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(aux.loss, -log_p[np.arange(B), np.asarray(y)], rtol=1e-10)


def test_eval_mode_needs_no_key_and_sums_to_the_batch_gradient(x64):
    model = _mlp()
    params, state, x, y = _setup(model, (B, 4))
    grads = _pe(model, params, state, x, y, train=False)
    total = jax.jit(jax.grad(lambda p: jnp.sum(LOSS(model.apply(p, state, x)[0], y))))(params)
    chex.assert_trees_all_close(jax.tree.map(lambda g: g.sum(0), grads), total, rtol=1e-10)


def test_masked_examples_get_zero_gradients_and_losses(x64):
    model = _mlp()
    params, state, x, y = _setup(model, (B, 4))
    mask = np.array([True, False, True, True, False])
    grads_for = jax.jit(lambda m: per_example_grads(model, LOSS, params, state, x, y,
                                                    key=jax.random.key(3), mask=m,
                                                    return_aux=True))
    (grads, aux), (full, full_aux) = jax.tree.map(
        np.asarray, (grads_for(jnp.asarray(mask)), grads_for(jnp.ones(B, bool))))
    for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(full)):
        np.testing.assert_array_equal(g[~mask], 0.0)
        np.testing.assert_array_equal(g[mask], f[mask])
    np.testing.assert_array_equal(aux.loss, np.where(mask, full_aux.loss, 0.0))


def test_dropout_without_a_key_is_an_error_naming_per_example_grads():
    model = _mlp()
    params, state, x, y = _setup(model, (B, 4))
    message = (r"^per_example_grads: the model's Dropout at 2_dropout needs a random key in "
               r"training mode; pass key=jax\.random\.key\(0\) \(or train=False\)")
    with pytest.raises(MissingKeyError, match=message):
        _pe(model, params, state, x, y)  # under jit
    with pytest.raises(jdnn.LayerError, match=message):
        per_example_grads(model, LOSS, params, state, x, y)  # eager


# ---------------------------------------------------------------------------------------------
# Labels: checked when concrete, a NaN loss and a zero gradient when traced.


@pytest.mark.parametrize("bad, match", [
    (-1, r"y has 1 negative class label\(s\); the first is y\[1\] = -1"),
    (3, r"y has class labels up to 3 but the model outputs 3 classes"),
], ids=["negative", "too_high"])
def test_concrete_labels_outside_the_classes_are_errors_naming_the_entry_point(bad, match):
    model = jdnn.serial(jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 4))
    with pytest.raises(ValueError, match=rf"^per_example_grads: {match}"):
        per_example_grads(model, LOSS, params, state, x, y.at[1].set(bad))


def test_traced_out_of_range_labels_give_nan_losses_and_zero_gradients():
    model = jdnn.serial(jdnn.Dense(4), jdnn.Relu(), jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 4))
    bad_y = y.at[1].set(-1).at[3].set(3)
    mask = jnp.asarray([True, False, True, True, True])

    @jax.jit
    def run(bad_y, y):
        return [per_example_grads(model, LOSS, params, state, x, labels, mask=m,
                                  return_aux=True)
                for labels, m in ((bad_y, None), (bad_y, mask), (y, None))]

    (grads, aux), (masked, masked_aux), (valid, valid_aux) = jax.tree.map(np.asarray,
                                                                          run(bad_y, y))
    assert np.isnan(aux.loss[[1, 3]]).all()
    np.testing.assert_array_equal(aux.loss[[0, 2, 4]], valid_aux.loss[[0, 2, 4]])
    assert masked_aux.loss[1] == 0.0 and np.isnan(masked_aux.loss[3])  # masked out: no NaN
    for g, m, v in zip(jax.tree.leaves(grads), jax.tree.leaves(masked), jax.tree.leaves(valid)):
        np.testing.assert_array_equal(g[[1, 3]], 0.0)
        np.testing.assert_array_equal(g[[0, 2, 4]], v[[0, 2, 4]])
        np.testing.assert_array_equal(m, g)


# ---------------------------------------------------------------------------------------------
# Batch norm.


def _bn_mlp(dropout=0.0):
    # A callable initializer: recorded by name only, yet the model rebuilds from its spec.
    return jdnn.serial(jdnn.Dense(6, w_init=jax.nn.initializers.normal()),
                       jdnn.BatchNorm(momentum=0.8, eps=1e-3), jdnn.Relu(),
                       jdnn.Dropout(dropout), jdnn.Dense(3))


def _bn_forward(params, x, mean, var, keep=None):
    """Dense -> batch norm with the given statistics -> ReLU -> dropout -> Dense, by hand."""
    h = x @ params["0_dense"]["w"] + params["0_dense"]["b"]
    bn = params["1_batchnorm"]
    h = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-3) * bn["scale"] + bn["bias"])
    if keep is not None:
        h = jnp.where(keep, h / 0.5, 0.0)
    return h @ params["4_dense"]["w"] + params["4_dense"]["b"]


def _perturbed(params, state):
    """Non-trivial batch-norm params and running statistics."""
    params = {**params, "1_batchnorm": {"scale": jnp.linspace(0.5, 2.0, 6),
                                        "bias": jnp.linspace(-0.3, 0.3, 6)}}
    state = {**state, "1_batchnorm": {"mean": jnp.linspace(-0.2, 0.2, 6),
                                      "var": jnp.linspace(0.5, 1.5, 6)}}
    return params, state


def test_batch_norm_in_training_mode_needs_a_rule():
    model = _bn_mlp()
    params, state, x, y = _setup(model, (B, 4))
    with pytest.raises(ValueError, match="ill-defined for BatchNorm in training mode"):
        per_example_grads(model, LOSS, params, state, x, y)
    with pytest.raises(ValueError, match="batch_norm must be None or one of"):
        per_example_grads(model, LOSS, params, state, x, y, batch_norm="batch")
    with pytest.raises(ValueError, match="needs train=True"):
        per_example_grads(model, LOSS, params, state, x, y, train=False,
                          batch_norm="batch_stats")


def test_batch_stats_rule_holds_the_whole_batch_statistics_fixed(x64):
    model = _bn_mlp()
    params, state, x, y = _setup(model, (B, 4))
    params, state = _perturbed(params, state)
    grads, aux = _pe(model, params, state, x, y, batch_norm="batch_stats", return_aux=True)
    h = np.asarray(x @ params["0_dense"]["w"] + params["0_dense"]["b"])
    mean, var = h.mean(0), h.var(0)  # NumPy: constants, no gradient through them
    grad = jax.jit(jax.grad(lambda p, x_i, y_i: LOSS(_bn_forward(p, x_i, mean, var), y_i)[0]))
    expected = _stack([grad(params, x[i:i + 1], y[i:i + 1]) for i in range(B)])
    chex.assert_trees_all_close(grads, expected, rtol=1e-10, atol=1e-12)
    # The running statistics move once toward the batch's, as BatchNorm's training mode does.
    _, batched_state = model.apply(params, state, x, train=True)
    chex.assert_trees_all_close(aux.state, batched_state, rtol=1e-12)
    np.testing.assert_allclose(aux.state["1_batchnorm"]["mean"],
                               0.8 * state["1_batchnorm"]["mean"] + 0.2 * mean, rtol=1e-12)
    # ... and each example's output is the batched forward's.
    outputs, _ = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(aux.outputs, outputs, rtol=1e-10)


def test_batch_stats_rule_on_a_cnn_reproduces_the_batched_forward(x64):
    model = jdnn.serial(jdnn.Conv2D(3, 3), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Flatten(),
                        jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 6, 6, 2))
    _, aux = _pe(model, params, state, x, y, batch_norm="batch_stats", return_aux=True)
    outputs, new_state = jax.jit(lambda: model.apply(params, state, x, train=True))()
    np.testing.assert_allclose(aux.outputs, outputs, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_close(aux.state, new_state, rtol=1e-12)


def test_running_rule_normalizes_with_running_statistics_and_keeps_dropout(x64):
    model = _bn_mlp(dropout=0.5)
    params, state, x, y = _setup(model, (B, 4))
    params, state = _perturbed(params, state)
    key = jax.random.key(11)
    grads, aux = _pe(model, params, state, x, y, key, batch_norm="running", return_aux=True)
    bn = state["1_batchnorm"]

    @jax.jit
    def grad(x_i, y_i, key_i):
        # The documented key path: example i's key, split by serial for its 5 children.
        keep = keep_mask(child_keys(model.spec, key_i)[3], 0.5, (1, 6))
        return jax.grad(lambda p: LOSS(_bn_forward(p, x_i, bn["mean"], bn["var"], keep),
                                       y_i)[0])(params)

    keys = jax.random.split(key, B)
    expected = _stack([grad(x[i:i + 1], y[i:i + 1], keys[i]) for i in range(B)])
    chex.assert_trees_all_close(grads, expected, rtol=1e-10, atol=1e-12)
    chex.assert_trees_all_equal(aux.state, state)


def test_rules_rebuild_only_jdnn_layers():
    custom = jdnn.Layer(jdnn.Relu().init, jdnn.Relu().apply, jdnn.Spec("MyLayer"))
    model = jdnn.serial(jdnn.Dense(4), jdnn.BatchNorm(), custom, jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 4))
    with pytest.raises(ValueError, match="cannot rebuild the layer 'MyLayer' at 2_mylayer"):
        per_example_grads(model, LOSS, params, state, x, y, batch_norm="running")


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_rebuild_gives_the_same_model(name):
    entry = zoo.MODELS[name]
    model = entry.build(3)
    params, state, _, _ = _setup(model, (B, *entry.example_shape))
    x, _ = zoo.example_batch(name, B, 3, "regression")   # token ids, padded sequences
    twin = rebuild(model.spec)
    key = jax.random.key(2)
    both = jax.jit(lambda: [m.apply(params, state, x, key=key, train=True) for m in (twin, model)])
    chex.assert_trees_all_equal(*both())


def test_mismatched_batches_and_losses_are_errors():
    model = jdnn.serial(jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 4))
    with pytest.raises(ValueError, match="^per_example_grads: x and y need the same leading "
                                         "batch axis"):
        per_example_grads(model, LOSS, params, state, x, y[:3])
    with pytest.raises(ValueError, match=r"^per_example_grads: mask must have shape \(5,\)"):
        per_example_grads(model, LOSS, params, state, x, y, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="one value per example"):
        per_example_grads(model, lambda o, t: LOSS(o, t).mean(), params, state, x, y)


def test_traces_once_under_jit():
    model = _mlp()
    params, state, x, y = _setup(model, (B, 4))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grads(params, x, y, key):
        return per_example_grads(model, LOSS, params, state, x, y, key=key)

    grads(params, x, y, jax.random.key(0))
    grads(params, x + 1.0, y, jax.random.key(1))


# ---------------------------------------------------------------------------------------------
# Clipping.


def test_clip_and_aggregate_matches_numpy(x64):
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(B, 3, 2)), "b": {"c": rng.normal(size=(B, 4))}}
    tree["a"][3] = 0.0
    tree["b"]["c"][3] = 0.0  # an all-zero gradient: no division by zero
    mask = np.array([True, True, False, True, True])
    flat = np.concatenate([tree["a"].reshape(B, -1), tree["b"]["c"]], axis=1)
    for clip in (0.5, 1.5, 100.0):
        norms = np.linalg.norm(flat, axis=1) * mask
        factors = np.minimum(1.0, clip / np.where(norms > 0, norms, 1.0)) * mask
        mean, got_norms = clip_and_aggregate(jax.tree.map(jnp.asarray, tree), clip,
                                             mask=jnp.asarray(mask))
        np.testing.assert_allclose(got_norms, norms, rtol=1e-12)
        expected = (factors[:, None] * flat).sum(0) / mask.sum()
        got = np.concatenate([np.asarray(mean["a"]).ravel(), np.asarray(mean["b"]["c"])])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        norm_after = np.linalg.norm(factors[:, None] * flat, axis=1)
        assert np.all(norm_after <= clip * (1 + 1e-12))
    mean, _ = clip_and_aggregate(jax.tree.map(jnp.asarray, tree), 100.0)
    np.testing.assert_allclose(mean["a"], tree["a"].mean(0), rtol=1e-12)


def _op_counts(compiled_text):
    """How often each HLO opcode occurs in a compiled module's text (fused computations too)."""
    return collections.Counter(re.findall(r"= \S+ ([\w-]+)\(", compiled_text))


def test_adds_nothing_to_a_plain_vmap_of_grad():
    # No key, mask or batch norm: the same compiled program as vmap(grad) over batches of one,
    # op for op, and the same bits (jdnn's extras are dead code: no per-example keys are split).
    model = jdnn.serial(jdnn.Dense(16), jdnn.Relu(), jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(3))
    params, state, x, y = _setup(model, (B, 12))

    def one(p, x_i, y_i):
        return LOSS(model.apply(p, state, x_i[None], train=True)[0], y_i[None])[0]

    plain = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))
    ours = jax.jit(lambda p, x, y: per_example_grads(model, LOSS, p, state, x, y))
    texts = [f.lower(params, x, y).compile().as_text() for f in (plain, ours)]
    assert _op_counts(texts[1]) == _op_counts(texts[0])
    chex.assert_trees_all_equal(ours(params, x, y), plain(params, x, y))
