"""TrainState, the compiled training step and the evaluation step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn.train.step import masked_mean

XOR_X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = jnp.array([0.0, 1.0, 1.0, 0.0])


def _mlp():
    return jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dense(3))


def _data(n=16, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
            jnp.asarray(rng.integers(0, classes, size=n), jnp.int32))


def _copy(tree):
    return jax.tree.map(lambda leaf: leaf.copy() if hasattr(leaf, "copy") else leaf, tree)


def test_create_builds_params_optimizer_state_and_step_zero():
    model, optimizer = _mlp(), optax.adam(1e-3)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), (4, 5))
    assert ts.params["0_dense"]["w"].shape == (5, 8)
    assert ts.params["2_dense"]["w"].shape == (8, 3)
    assert int(ts.step) == 0
    chex.assert_trees_all_equal_structs(ts.opt_state, optimizer.init(ts.params))
    # An int seed is accepted and means the same as jax.random.key(seed).
    from_int = jdnn.TrainState.create(model, optimizer, 0, (4, 5))
    chex.assert_trees_all_equal(from_int.params, ts.params)


def test_step_matches_a_hand_written_sgd_update():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    params = _copy(ts.params)

    def objective(p):
        logits, _ = model.apply(p, {k: {} for k in p}, x, train=True)
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))

    loss, grads = jax.value_and_grad(objective)(params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    ts, metrics = step(ts, x, y)
    chex.assert_trees_all_close(ts.params, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    assert int(ts.step) == 1


def test_step_compiles_once_for_the_same_shapes():
    traces = []

    def counting_loss(outputs, y):
        traces.append(1)
        return jdnn.losses.softmax_cross_entropy(outputs, y)

    model, optimizer = _mlp(), optax.adam(1e-2)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, counting_loss, optimizer)
    mask = jnp.ones(x.shape[0], bool)
    for i in range(5):
        xi, yi = _data(seed=i)
        ts, _ = step(ts, xi, yi, mask)
    assert len(traces) == 1
    assert int(ts.step) == 5


def test_step_is_pure_same_inputs_same_outputs():
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.Dropout(0.5), jdnn.Dense(3))
    optimizer = optax.adam(1e-2)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(3), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    first, m1 = step(_copy(ts), x, y)
    second, m2 = step(_copy(ts), x, y)
    chex.assert_trees_all_equal(first.params, second.params)
    chex.assert_trees_all_equal(m1, m2)
    chex.assert_trees_all_equal(jax.random.key_data(first.key), jax.random.key_data(second.key))


def test_step_donates_the_incoming_state():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    old_w = ts.params["0_dense"]["w"]
    step(ts, x, y)
    assert old_w.is_deleted()


def test_dropout_keys_change_every_step_while_the_run_key_stays():
    model = jdnn.serial(jdnn.Dropout(0.5))
    optimizer = optax.sgd(0.0)
    x = jnp.ones((4, 64))
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    outputs = []

    def capture_loss(out, y):
        del y
        return jnp.sum(out, axis=-1)

    step = jdnn.make_train_step(model, capture_loss, optimizer)
    keys = []
    for _ in range(3):
        keys.append(np.asarray(jax.random.key_data(ts.key)))
        ts, m = step(ts, x, jnp.zeros(4))
        outputs.append(float(m["loss"]))
    assert len({k.tobytes() for k in keys}) == 1   # folded in with the step, never split off
    assert len(set(outputs)) == 3  # a different mask each step


def test_mask_excludes_padded_examples_from_loss_and_gradient():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data(n=8)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer,
                                metrics=("accuracy",))
    # Garbage in the padded rows must change nothing.
    x_pad = jnp.concatenate([x, 1e3 * jnp.ones((4, 5))])
    y_pad = jnp.concatenate([y, jnp.zeros(4, y.dtype)])
    mask = jnp.arange(12) < 8
    padded, m_pad = step(_copy(ts), x_pad, y_pad, mask)
    plain, m_plain = step(_copy(ts), x, y)
    chex.assert_trees_all_close(padded.params, plain.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_pad["loss"], m_plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_pad["accuracy"], m_plain["accuracy"])


def test_masked_mean_ignores_masked_values_and_survives_an_empty_mask():
    values = jnp.array([1.0, 2.0, 100.0])
    assert float(masked_mean(values, jnp.array([1, 1, 0]))) == pytest.approx(1.5)
    assert float(masked_mean(values, jnp.zeros(3))) == 0.0
    assert float(masked_mean(values, None)) == pytest.approx(103 / 3)


def test_a_masked_row_with_a_label_that_names_no_class_changes_nothing():
    """Its loss is NaN, but masked out it must not poison the loss, metrics or update."""
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data(n=4)
    mask = jnp.array([1, 1, 1, 0])
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer,
                                metrics=("accuracy",))
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), (4, 5))
    good, good_metrics = step(_copy(ts), x, y, mask)
    bad, bad_metrics = step(_copy(ts), x, y.at[3].set(-1), mask)
    assert np.isfinite(float(bad_metrics["loss"]))
    assert float(bad_metrics["loss"]) == float(good_metrics["loss"])
    assert float(bad_metrics["accuracy"]) == float(good_metrics["accuracy"])
    chex.assert_trees_all_close(bad.params, good.params)
    _, unmasked = step(_copy(ts), x, y.at[3].set(-1), jnp.ones(4))
    assert np.isnan(float(unmasked["loss"]))          # unmasked, the bad label is never hidden


def test_penalty_is_added_and_reported():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    expected_penalty = 0.01 * float(jdnn.regularizers.l2(ts.params))
    with_penalty = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer,
                                        penalty=jdnn.regularizers.penalty(l2=0.01))
    without = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    a, ma = with_penalty(_copy(ts), x, y)
    b, mb = without(_copy(ts), x, y)
    assert float(ma["penalty"]) == pytest.approx(expected_penalty, rel=1e-5)
    assert "penalty" not in mb
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)  # "loss" is the data loss
    # L2 on weights only: the biases move identically, the weights differ by 0.1 * 0.01 * 2w.
    w0 = ts.params["0_dense"]["w"]
    np.testing.assert_allclose(a.params["0_dense"]["b"], b.params["0_dense"]["b"], atol=1e-7)
    np.testing.assert_allclose(b.params["0_dense"]["w"] - a.params["0_dense"]["w"],
                               0.1 * 0.01 * 2 * w0, atol=1e-6)


@pytest.mark.parametrize("optimizer", [
    optax.sgd(0.5), optax.sgd(0.5, momentum=0.9), optax.adam(0.05), optax.rmsprop(0.01),
    optax.adam(optax.exponential_decay(0.05, 10, 0.9)),
    optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.05)),
], ids=["sgd", "momentum", "adam", "rmsprop", "adam-schedule", "clip+adamw"])
def test_any_optax_transformation_trains(optimizer):
    model = _mlp()
    x, y = _data(n=32)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    ts, first = step(ts, x, y)
    for _ in range(60):
        ts, last = step(ts, x, y)
    assert float(last["loss"]) < 0.8 * float(first["loss"])


def test_batch_norm_state_is_updated_by_the_step_and_used_by_eval():
    model = jdnn.serial(jdnn.Dense(4), jdnn.BatchNorm(momentum=0.5), jdnn.Dense(3))
    optimizer = optax.sgd(0.0)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    before = _copy(ts.state["1_batchnorm"])
    ts, _ = step(ts, x, y)
    hidden = x @ ts.params["0_dense"]["w"] + ts.params["0_dense"]["b"]
    np.testing.assert_allclose(ts.state["1_batchnorm"]["mean"],
                               0.5 * before["mean"] + 0.5 * hidden.mean(0), rtol=1e-5, atol=1e-6)
    evaluate = jdnn.make_eval_step(model, jdnn.losses.softmax_cross_entropy)
    logits, _ = model.apply(ts.params, ts.state, x, train=False)
    expected = jnp.mean(jdnn.losses.softmax_cross_entropy(logits, y))
    np.testing.assert_allclose(evaluate(ts, x, y)["loss"], expected, rtol=1e-6)


def test_prelu_slope_is_trained_by_the_step():
    model = jdnn.serial(jdnn.PRelu(alpha_init=0.25))
    optimizer = optax.sgd(0.1)
    x = -jnp.abs(jax.random.normal(jax.random.key(1), (64, 3))) - 0.1
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.mse, optimizer)
    for _ in range(100):
        ts, _ = step(ts, x, 0.05 * x)
    np.testing.assert_allclose(ts.params["0_prelu"]["alpha"], 0.05, atol=5e-3)


def test_eval_step_reports_masked_loss_and_metrics_without_dropout():
    model = jdnn.serial(jdnn.Dense(8), jdnn.Dropout(0.9), jdnn.Dense(3))
    optimizer = optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    evaluate = jdnn.make_eval_step(model, jdnn.losses.softmax_cross_entropy,
                                   metrics=("accuracy",))
    logits, _ = model.apply(ts.params, ts.state, x)
    mask = jnp.arange(16) < 10
    m = evaluate(ts, x, y, mask)
    per_example = jdnn.losses.softmax_cross_entropy(logits, y)
    np.testing.assert_allclose(m["loss"], per_example[:10].mean(), rtol=1e-6)
    hits = np.asarray(jnp.argmax(logits, -1) == y)[:10]
    assert float(m["accuracy"]) == pytest.approx(hits.mean())
    chex.assert_trees_all_equal(evaluate(ts, x, y), evaluate(ts, x, y))  # deterministic: no dropout


@pytest.mark.parametrize("seed", range(5))
def test_xor_sigmoid_2_3_2_1_reaches_full_accuracy(seed):
    model = jdnn.serial(jdnn.Dense(3), jdnn.Sigmoid(), jdnn.Dense(2), jdnn.Sigmoid(),
                        jdnn.Dense(1))
    optimizer = optax.sgd(0.5, momentum=0.9)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(seed), XOR_X.shape)
    step = jdnn.make_train_step(model, jdnn.losses.binary_cross_entropy, optimizer,
                                metrics=("accuracy",))
    for _ in range(500):
        ts, metrics = step(ts, XOR_X, XOR_Y)
    assert float(metrics["accuracy"]) == 1.0
    logits, _ = model.apply(ts.params, ts.state, XOR_X)
    np.testing.assert_array_equal(np.asarray(logits[:, 0] > 0), np.asarray(XOR_Y) == 1)


@pytest.mark.parametrize("seed", range(3))
def test_xor_relu_variant_reaches_full_accuracy(seed):
    model = jdnn.serial(jdnn.Dense(8, w_init="he_normal"), jdnn.Relu(),
                        jdnn.Dense(8, w_init="he_normal"), jdnn.Relu(), jdnn.Dense(1))
    optimizer = optax.sgd(0.1, momentum=0.9)
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(seed), XOR_X.shape)
    step = jdnn.make_train_step(model, jdnn.losses.binary_cross_entropy, optimizer,
                                metrics=("accuracy",))
    for _ in range(300):
        ts, metrics = step(ts, XOR_X, XOR_Y)
    assert float(metrics["accuracy"]) == 1.0


def test_a_reducing_loss_is_rejected_with_a_clear_message():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)

    def mean_loss(outputs, labels):
        return jnp.mean(jdnn.losses.softmax_cross_entropy(outputs, labels))

    step = jdnn.make_train_step(model, mean_loss, optimizer)
    with pytest.raises(ValueError, match=r"one value per example, shape \(16,\), got shape \(\)"):
        step(ts, x, y)


def test_a_wrong_mask_shape_is_rejected():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    with pytest.raises(ValueError, match=r"mask must have shape \(16,\).*got shape \(16, 1\)"):
        step(ts, x, y, jnp.ones((16, 1)))


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="unknown metric 'precision'"):
        jdnn.make_train_step(_mlp(), jdnn.losses.mse, optax.sgd(0.1), metrics=("precision",))


def test_wrong_input_shape_names_the_layer_path_through_the_step():
    model, optimizer = _mlp(), optax.sgd(0.1)
    x, y = _data()
    ts = jdnn.TrainState.create(model, optimizer, jax.random.key(0), x.shape)
    step = jdnn.make_train_step(model, jdnn.losses.softmax_cross_entropy, optimizer)
    with pytest.raises(ValueError, match=r"Dense layer at 0_dense: .*size 5.*\(16, 4\)"):
        step(ts, x[:, :4], y)


def test_from_params_wraps_existing_parameters():
    model, optimizer = _mlp(), optax.adam(1e-3)
    _, params, state = model.init(jax.random.key(5), (4, 5))
    ts = jdnn.TrainState.from_params(params, state, optimizer, 3)
    chex.assert_trees_all_equal(ts.params, params)
    chex.assert_trees_all_equal_structs(ts.opt_state, optimizer.init(params))
    assert int(ts.step) == 0


def test_step_builders_check_the_loss_optimizer_metrics_and_augmentation():
    model, loss = _mlp(), jdnn.losses.softmax_cross_entropy
    with pytest.raises(TypeError, match=r"make_train_step: optimizer must be an optax "
                                        r"GradientTransformation.*optimizer=optax.sgd\(1e-3\)"):
        jdnn.make_train_step(model, loss, optax.sgd)
    with pytest.raises(TypeError, match="make_train_step: loss must be .* the string 'mse'"):
        jdnn.make_train_step(model, "mse", optax.sgd(0.1))
    with pytest.raises(TypeError, match="make_train_step: augment is the constructor "
                                        "gaussian_noise"):
        jdnn.make_train_step(model, loss, optax.sgd(0.1), augment=jdnn.data.augment.gaussian_noise)
    with pytest.raises(TypeError, match="make_eval_step: loss must be a per-example loss"):
        jdnn.make_eval_step(model, None)
    with pytest.raises(ValueError, match="make_eval_step: unknown metric 'f1'"):
        jdnn.make_eval_step(model, loss, metrics=("f1",))


def test_create_takes_numpy_integer_seeds_and_refuses_other_keys():
    model, optimizer = _mlp(), optax.adam(1e-3)
    a = jdnn.TrainState.create(model, optimizer, np.int64(3), (4, 5))
    b = jdnn.TrainState.create(model, optimizer, 3, (4, 5))
    chex.assert_trees_all_equal(a.params, b.params)
    with pytest.raises(TypeError, match=r"TrainState.create: key must be a jax.random.key"):
        jdnn.TrainState.create(model, optimizer, 3.0, (4, 5))
    with pytest.raises(TypeError, match=r"TrainState.from_params: key must be"):
        jdnn.TrainState.from_params(a.params, a.state, optimizer, True)
