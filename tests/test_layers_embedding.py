"""Embedding and PositionalEmbedding: lookups, out-of-range ids, position vectors, padding."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import LayerError, rebuild, trait
from jdnn.layers.combinators import serial
from jdnn.layers.dense import Dense
from jdnn.layers.embedding import Embedding, PositionalEmbedding, id_problem, sinusoidal_table
from jdnn.layers.normalization import LayerNorm
from jdnn.padded import Padded

IDS = np.array([[1, 2, 3, 2], [0, 4, 4, 9]])   # (B, T) with repeats, vocabulary of 10


# --- Embedding: the lookup ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4), (6,), (2, 3, 2)], ids=["BT", "B", "BTU"])
def test_embedding_looks_up_rows(key, shape):
    layer = Embedding(10, 5)
    out_shape, params, state = layer.init(key, shape)
    ids = np.random.default_rng(0).integers(0, 10, size=shape)
    y, new_state = layer.apply(params, state, jnp.asarray(ids))
    assert out_shape == y.shape == (*shape, 5) and new_state == state == {}
    assert set(params) == {"table"} and params["table"].shape == (10, 5)
    np.testing.assert_array_equal(y, np.asarray(params["table"])[ids])


def test_embedding_default_init_is_unit_normal_like_pytorch(key):
    layer = Embedding(400, 100)
    _, params, _ = layer.init(key, (1, 3))
    table = params["table"]
    assert table.dtype == jnp.float32 and layer.spec["w_init"] == "unit_normal"
    assert abs(float(table.std()) - 1.0) < 0.02 and abs(float(table.mean())) < 0.02


def test_embedding_other_initializers(key):
    _, params, _ = Embedding(10, 4, w_init="zeros").init(key, (2, 3))
    np.testing.assert_array_equal(params["table"], 0.0)
    flax_like = Embedding(300, 64, w_init=jax.nn.initializers.normal(64 ** -0.5))
    _, params, _ = flax_like.init(key, (2, 3))
    assert abs(float(params["table"].std()) - 0.125) < 0.005
    assert flax_like.spec["w_init"].startswith("<")  # a callable is recorded by name


def test_embedding_accepts_every_integer_dtype(key):
    layer = Embedding(300, 3)   # a vocabulary larger than int8 and uint8 can count
    _, params, state = layer.init(key, (1, 3))
    expected = np.asarray(params["table"])[[5, 0, 127]]
    for dtype in (jnp.int8, jnp.uint8, jnp.int16, jnp.int32, jnp.uint32):
        ids = jnp.array([[5, 0, 127]], dtype)
        np.testing.assert_array_equal(layer.apply(params, state, ids)[0][0], expected)
        np.testing.assert_array_equal(jax.jit(layer.apply)(params, state, ids)[0][0], expected)


@pytest.mark.parametrize("args, kwargs, match", [
    ((0, 4), {}, "vocab_size must be a positive int, got 0"),
    ((2.5, 4), {}, "vocab_size must be a positive int, got 2.5"),
    ((True, 4), {}, "vocab_size must be a positive int, got True"),
    ((10, -1), {}, "features must be a positive int, got -1"),
    ((10, 4), {"w_init": "no_such_init"}, "w_init must be an initializer or the name"),
])
def test_embedding_bad_hyperparameters(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Embedding(*args, **kwargs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bool_])
def test_float_ids_are_an_error(key, dtype):
    layer = Embedding(10, 4)
    _, params, state = layer.init(key, (2, 4))
    x = jnp.asarray(IDS, dtype)
    for apply in (layer.apply, jax.jit(layer.apply)):   # a dtype is known under jit too
        with pytest.raises(LayerError, match=r"Embedding layer at <root>: ids must be integers "
                                             r"\(token indices in \[0, 10\)\), got an input of "
                                             r"dtype (float32|bool); cast them"):
            apply(params, state, x)


@pytest.mark.parametrize("bad, value, position, fix", [
    (10, 10, r"\(1, 2\)", "raise vocab_size to at least 11"),
    (-1, -1, r"\(1, 2\)", "ids are indices from 0: map negative markers"),
], ids=["too_large", "negative"])
def test_out_of_range_ids_are_named_eagerly(key, bad, value, position, fix):
    layer = Embedding(10, 4)
    _, params, state = layer.init(key, (2, 4))
    ids = IDS.copy()
    ids[1, 2] = bad
    with pytest.raises(LayerError, match=rf"Embedding layer at <root>: id {value} at position "
                                         rf"{position} is outside the vocabulary \[0, 10\) "
                                         rf"\(1 of 8 ids are\); {fix}"):
        layer.apply(params, state, jnp.asarray(ids))
    with pytest.raises(LayerError, match="outside the vocabulary"):   # NumPy ids too
        layer.apply(params, state, ids)


def test_the_error_names_the_layer_path(key):
    model = serial(serial(Embedding(10, 4), Dense(2)))
    _, params, state = model.init(key, (2, 4))
    with pytest.raises(LayerError, match=r"Embedding layer at 0_serial/0_embedding: id 12 at "
                                         r"position \(0, 0\)"):
        model.apply(params, state, jnp.array([[12, 1, 1, 1], [1, 1, 1, 1]]))


def test_out_of_range_ids_give_nan_rows_under_jit(key):
    layer = Embedding(10, 4)
    _, params, state = layer.init(key, (1, 5))
    ids = jnp.array([[3, 10, -1, 9, 2 ** 30]])   # -1 must not wrap around to the last row
    y, _ = jax.jit(layer.apply)(params, state, ids)
    table = np.asarray(params["table"])
    np.testing.assert_array_equal(y[0, [0, 3]], table[[3, 9]])
    assert np.isnan(np.asarray(y[0, [1, 2, 4]])).all()
    # and under vmap (ids unknown there too)
    y_v = jax.vmap(lambda i: layer.apply(params, state, i[None])[0][0])(ids)
    assert np.isnan(np.asarray(y_v[0, 2])).all()
    np.testing.assert_array_equal(y_v[0, 0], table[3])


def test_out_of_range_rows_pass_no_gradient(key):
    layer = Embedding(10, 2)
    _, params, state = layer.init(key, (1, 4))
    ids = jnp.array([[3, -1, 3, 12]])

    @jax.jit
    def loss(p, i):
        y, _ = layer.apply(p, state, i)
        return jnp.sum(jnp.where(jnp.isnan(y), 0.0, y))

    grad = jax.grad(loss)(params, ids)["table"]
    expected = np.zeros((10, 2))
    expected[3] = 2.0   # id 3 twice; ids -1 and 12 touch no row (row 0 and row 9 included)
    np.testing.assert_array_equal(grad, expected)


def test_embedding_gradient_accumulates_repeated_ids(key):
    layer = Embedding(10, 3)
    _, params, state = layer.init(key, (2, 4))
    dy = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, state, jnp.asarray(IDS))[0] * dy))(params)
    expected = np.zeros((10, 3), np.float32)
    for (b, t), v in np.ndenumerate(IDS):
        expected[v] += dy[b, t]
    np.testing.assert_allclose(grad["table"], expected, rtol=1e-6)


def test_embedding_jit_compiles_once_and_vmap_equals_batch(key):
    layer = Embedding(10, 4)
    _, params, state = layer.init(key, (2, 4))
    apply = jax.jit(chex.assert_max_traces(layer.apply, n=1))
    first, _ = apply(params, state, jnp.asarray(IDS))
    second, _ = apply(params, state, jnp.asarray(IDS[::-1]))
    np.testing.assert_array_equal(second, first[::-1])
    mapped = jax.vmap(lambda i: layer.apply(params, state, i[None])[0][0])(jnp.asarray(IDS))
    np.testing.assert_array_equal(mapped, first)


def test_embedding_equals_torch_and_flax_with_copied_weights(key, torch):
    import flax.linen as nn

    with jax.enable_x64(True):
        layer = Embedding(10, 6)
        _, params, state = layer.init(key, (2, 4))
        table = np.random.default_rng(2).normal(size=(10, 6))
        params = {"table": jnp.asarray(table)}
        y, _ = layer.apply(params, state, jnp.asarray(IDS))
        assert y.dtype == jnp.float64
        flax_y = nn.Embed(10, 6, param_dtype=jnp.float64).apply({"params": {"embedding": table}},
                                                                 jnp.asarray(IDS))
    torch_layer = torch.nn.Embedding(10, 6, dtype=torch.float64)
    with torch.no_grad():
        torch_layer.weight.copy_(torch.from_numpy(table))
    torch_y = torch_layer(torch.from_numpy(IDS)).detach().numpy()
    np.testing.assert_array_equal(y, torch_y)
    np.testing.assert_array_equal(y, flax_y)


def test_embedding_traits_and_spec():
    layer = Embedding(1000, 64)
    spec = layer.spec
    assert trait(spec, "label")(spec) == "Embedding(1000, 64)"
    assert trait(spec, "family") == "embedding"
    assert trait(spec, "flops")(spec, (8, 20), (8, 20, 64)) == 0
    assert not trait(spec, "padded", False)
    assert repr(spec) == "Embedding(vocab_size=1000, features=64, w_init='unit_normal')"
    assert rebuild(spec).spec == spec


def test_id_check_runs_on_the_data_before_training():
    spec = Embedding(10, 4).spec
    check = trait(spec, "check_input")
    assert check(spec, IDS) is None
    bad = IDS.copy()
    bad[0, 3] = 11
    assert "id 11 at position (0, 3)" in check(spec, bad)
    assert "ids must be integers" in check(spec, IDS.astype(np.float64))
    assert id_problem(10, np.array([0, 9])) is None
    model = serial(Embedding(10, 4), LayerNorm(), Dense(3))
    with pytest.raises(ValueError, match=r"x does not fit the model's first layer Embedding: id 11 "
                                         r"at position \(0, 3\)"):
        jdnn.data.check_data(bad, np.zeros((2, 4), np.int32), model=model)


# --- PositionalEmbedding -----------------------------------------------------------------------


def test_learned_positions_add_the_first_rows(key):
    layer = PositionalEmbedding(8)
    out_shape, params, state = layer.init(key, (2, 5, 3))
    assert out_shape == (2, 5, 3) and state == {}
    assert set(params) == {"table"} and params["table"].shape == (8, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 3)), jnp.float32)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, np.asarray(x) + np.asarray(params["table"])[:5], rtol=1e-6)
    shorter, _ = layer.apply(params, state, x[:, :2])   # any T <= max_length, same rows
    np.testing.assert_array_equal(shorter, y[:, :2])


def test_learned_positions_start_small(key):
    _, params, _ = PositionalEmbedding(512).init(key, (1, 4, 64))
    assert abs(float(params["table"].std()) - 0.02) < 0.001


@pytest.mark.parametrize("features", [6, 7], ids=["even", "odd"])
def test_sinusoidal_table_is_the_transformers(features):
    table = sinusoidal_table(50, features)
    assert table.shape == (50, features)
    for t in (0, 1, 17, 49):
        for j in range(features):
            i = j // 2
            angle = t / 10000 ** (2 * i / features)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[t, j] == pytest.approx(expected, abs=1e-14)


def test_sinusoidal_positions_have_no_params(key):
    layer = PositionalEmbedding(16, "sinusoidal")
    out_shape, params, state = layer.init(key, (2, 5, 7))
    assert out_shape == (2, 5, 7) and params == {} and state == {}
    x = jnp.zeros((2, 5, 7), jnp.float32)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y[1], sinusoidal_table(5, 7), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y[0], y[1])


def test_sequences_longer_than_max_length_are_an_error(key):
    layer = PositionalEmbedding(4)
    with pytest.raises(LayerError, match=r"PositionalEmbedding layer at <root>: the input of "
                                         r"shape \(2, 6, 3\) has 6 time steps \(axis 1\) but "
                                         r"max_length is 4; build the layer with max_length >= 6"):
        layer.init(key, (2, 6, 3))
    _, params, state = layer.init(key, (2, 3, 3))
    for encoding, p in (("learned", params), ("sinusoidal", {})):
        apply = PositionalEmbedding(4, encoding).apply
        for run in (apply, jax.jit(apply)):   # a shape is known under jit
            with pytest.raises(LayerError, match=r"has 5 time steps \(axis 1\) but max_length "
                                                 r"is 4"):
                run(p, state, jnp.zeros((2, 5, 3)))


def test_positional_shape_errors(key):
    layer = PositionalEmbedding(4)
    with pytest.raises(LayerError, match=r"expected sequences of shape \(batch, time, features\)"
                                         r", got shape \(3, 2\); a single sequence needs a batch "
                                         r"axis"):
        layer.init(key, (3, 2))
    _, params, state = layer.init(key, (2, 3, 3))
    with pytest.raises(LayerError, match=r"expected input with last axis \(features\) of size 3"):
        layer.apply(params, state, jnp.zeros((2, 3, 5)))


@pytest.mark.parametrize("args, match", [
    ((0,), "max_length must be a positive int, got 0"),
    ((4, "rope"), "encoding must be 'learned' or 'sinusoidal', got 'rope'"),
])
def test_positional_bad_hyperparameters(args, match):
    with pytest.raises(ValueError, match=match):
        PositionalEmbedding(*args)


def test_positional_traits():
    spec = PositionalEmbedding(128, "sinusoidal").spec
    assert trait(spec, "label")(spec) == "PositionalEmbedding(128, sinusoidal)"
    assert trait(spec, "flops")(spec, (8, 20, 64), (8, 20, 64)) == 20 * 64
    assert rebuild(spec).spec == spec


def test_positional_vmap_equals_batch(key):
    layer = PositionalEmbedding(6)
    _, params, state = layer.init(key, (3, 4, 2))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 2)), jnp.float32)
    batch, _ = layer.apply(params, state, x)
    mapped = jax.vmap(lambda xi: layer.apply(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(mapped, batch, rtol=1e-6)


# --- a token model on padded sequences ---------------------------------------------------------

LENGTHS = np.array([4, 1, 0, 3])


def _token_model():
    return serial(Embedding(10, 6), PositionalEmbedding(8), LayerNorm(), Dense(3))


def _token_batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, size=(4, 5)), rng.integers(0, 3, size=(4, 5))


def test_padded_batches_keep_their_lengths_through_the_model(key):
    model = serial(Embedding(10, 6), LayerNorm(), Dense(3))
    ids, _ = _token_batch()
    _, params, state = model.init(key, ids.shape)
    y, _ = jax.jit(model.apply)(params, state, Padded(jnp.asarray(ids), jnp.asarray(LENGTHS)))
    assert isinstance(y, Padded) and y.values.shape == (4, 5, 3)
    np.testing.assert_array_equal(y.lengths, LENGTHS)


def test_padding_never_changes_outputs_or_gradients_at_real_steps(key):
    model = _token_model()
    ids, labels = _token_batch()
    ids[1, 1:] = 9   # other ids in the padding
    _, params, state = model.init(key, ids.shape)
    loss = jdnn.losses.softmax_cross_entropy

    @jax.jit   # one compilation per shape; eager grads of the model are far slower
    def outputs_and_grads(p, x, y):
        def objective(q):
            out, _ = model.apply(q, state, x)
            return jnp.sum(jdnn.losses.per_example_values(loss, out, y)), out

        return jax.grad(objective, has_aux=True)(p)

    grads, out = outputs_and_grads(params, Padded(jnp.asarray(ids), jnp.asarray(LENGTHS)),
                                   jnp.asarray(labels))
    expected = jax.tree.map(jnp.zeros_like, params)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        alone = jnp.asarray(ids[b:b + 1, :n])   # unpadded: a plain array of n steps
        g, alone_out = outputs_and_grads(params, alone, jnp.asarray(labels[b:b + 1, :n]))
        assert not isinstance(alone_out, Padded)
        np.testing.assert_allclose(out.values[b, :n], alone_out[0], rtol=1e-5, atol=1e-6)
        expected = jax.tree.map(jnp.add, expected, g)
    chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-6)
