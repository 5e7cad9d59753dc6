"""SimpleRNN, GRU, LSTM and bidirectional: shapes, errors, PyTorch with copied weights (outputs and
gradients, both directions, packed sequences), padding never changing a result, jit, vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn
from jdnn.core import LayerError, output_shape, rebuild, trait
from jdnn.layers.recurrent import GRU, LSTM, SimpleRNN, bidirectional
from jdnn.padded import Padded

B, T, F, H = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 3])
KINDS = {"SimpleRNN": (SimpleRNN, "RNN"), "GRU": (GRU, "GRU"), "LSTM": (LSTM, "LSTM")}
GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


def _x(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).normal(size=shape)


def _values(y):
    return y.values if isinstance(y, Padded) else y


# --- shapes, parameters, traits ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_shapes_and_parameters(kind, return_sequences, key):
    layer = KINDS[kind][0](H, return_sequences=return_sequences)
    found = []

    def init_and_apply(key):   # abstractly: shapes and dtypes, nothing compiled
        out_shape, params, state = layer.init(key, (B, T, F))
        found.append(out_shape)
        return params, state, layer.apply(params, state, jnp.zeros((B, T, F)))

    params, state, (y, new_state) = jax.eval_shape(init_and_apply, key)
    out_shape = found[0]
    assert out_shape == y.shape == ((B, T, H) if return_sequences else (B, H))
    assert state == new_state == {}
    gates = GATES[kind]
    biases = {"b_x": (3 * H,), "b_h": (3 * H,)} if kind == "GRU" else {"b": (gates * H,)}
    assert {k: v.shape for k, v in params.items()} == {"w_x": (F, gates * H),
                                                       "w_h": (H, gates * H), **biases}
    assert all(v.dtype == jnp.float32 for v in params.values())


@pytest.mark.parametrize("kind", KINDS)
def test_initialization(kind, key):
    _, params, _ = KINDS[kind][0](64).init(key, (1, 2, 256))
    gates = GATES[kind]
    # w_h: an orthogonal (H, H) block per gate
    for block in np.split(np.asarray(params["w_h"]), gates, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(64), atol=1e-5)
    # w_x: LeCun normal, variance 1 / F
    assert abs(float(params["w_x"].std()) - np.sqrt(1 / 256)) < 0.05 * np.sqrt(1 / 256)
    for name in ("b", "b_x", "b_h"):
        if name in params:
            expected = np.zeros(gates * 64)
            if kind == "LSTM":
                expected[64:128] = 1.0   # the forget gate
            np.testing.assert_array_equal(params[name], expected)


@pytest.mark.parametrize("kind", KINDS)
def test_learned_initial_state(kind, key):
    layer = KINDS[kind][0](H, initial_state="learned", return_sequences=False)
    _, params, state = layer.init(key, (B, T, F))
    names = {"h0", "c0"} if kind == "LSTM" else {"h0"}
    assert names <= set(params) and all(params[n].shape == (H,) for n in names)
    params = {**params, **{n: jnp.full((H,), 0.5) for n in names}}

    def total(params, x):
        y, _ = layer.apply(params, state, x)
        return jnp.sum(y), y

    # a sequence of length 0 leaves the initial state: h0, for every example
    grads, y = jax.jit(jax.grad(total, has_aux=True))(
        params, Padded(jnp.asarray(_x(), jnp.float32), jnp.array([0, 0, 2])))
    np.testing.assert_array_equal(y[:2], 0.5)
    assert not np.allclose(y[2], 0.5)
    assert all(float(jnp.abs(grads[n]).min()) > 0 for n in names)   # every unit learns


def test_labels_flops_and_family():
    assert trait(GRU(128).spec, "label")(GRU(128).spec) == "GRU(128)"
    assert trait(LSTM(64).spec, "label")(LSTM(64, reverse=True).spec) == "LSTM(64, reverse)"
    spec = SimpleRNN(8, activation="relu").spec
    assert trait(spec, "label")(spec) == "SimpleRNN(8, relu)"
    assert all(trait(KINDS[k][0](3).spec, "family") == "recurrent" for k in KINDS)
    assert all(trait(KINDS[k][0](3).spec, "padded") for k in KINDS)
    spec = GRU(H).spec
    flops = trait(spec, "flops")(spec, (B, T, F), (B, T, H))
    assert flops == T * (2 * (F + H) * 3 * H + 16 * H)
    spec = bidirectional(GRU(H), merge="sum").spec
    assert trait(spec, "flops")(spec, (B, T, F), (B, T, H)) == T * H
    assert trait(spec, "family") == "combinator" and trait(spec, "padded")


def test_rebuild_and_output_shape(key):
    layer = LSTM(H, reverse=True, initial_state="learned", return_sequences=False)
    twin = rebuild(layer.spec)
    assert twin.spec == layer.spec
    _, params, state = layer.init(key, (B, T, F))
    x = jnp.asarray(_x(), jnp.float32)
    np.testing.assert_array_equal(jax.jit(twin.apply)(params, state, x)[0],
                                  jax.jit(layer.apply)(params, state, x)[0])
    assert output_shape(layer, (7, 11, F)) == (7, H)
    assert output_shape(bidirectional(GRU(H)), (7, 11, F)) == (7, 11, 2 * H)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: GRU(0), r"GRU: features must be a positive int, got 0"),
    (lambda: LSTM(4, return_sequences=1), r"LSTM: return_sequences must be True .* got 1"),
    (lambda: GRU(4, reverse="yes"), r"GRU: reverse must be a bool, got 'yes'"),
    (lambda: GRU(4, initial_state="random"),
     r"GRU: initial_state must be one of \('zeros', 'learned'\), got 'random'"),
    (lambda: SimpleRNN(4, activation="sigmoid"),
     r"SimpleRNN: activation must be one of \('tanh', 'relu'\), got 'sigmoid'"),
    (lambda: bidirectional(jdnn.Dense(3)),
     r"bidirectional: layer must be a recurrent layer with a `reverse` hyper-parameter"),
    (lambda: bidirectional(GRU(3), merge="mean"),
     r"bidirectional: merge must be one of \('concat', 'sum'\), got 'mean'"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs(key):
    layer = GRU(H)
    with pytest.raises(LayerError, match=r"GRU layer at <root>: expected an input_shape \(batch, "
                                         r"time, features\) of rank 3, got \(3, 4\)"):
        layer.init(key, (B, F))
    _, params, state = layer.init(key, (B, T, F))
    with pytest.raises(LayerError, match=r"rank 3, got an input of shape \(5, 4\); a single "
                                         r"sequence needs a batch axis: x\[None\]"):
        layer.apply(params, state, jnp.zeros((T, F)))
    with pytest.raises(LayerError, match=r"last axis \(features\) of size 4, got an input of "
                                         r"shape \(3, 5, 2\)"):
        layer.apply(params, state, jnp.zeros((B, T, 2)))
    with pytest.raises(LayerError, match=r"needs lengths of shape \(3,\), got \(2,\)"):
        layer.apply(params, state, Padded(jnp.zeros((B, T, F)), jnp.array([1, 2])))
    model = jdnn.serial(jdnn.Dense(F), bidirectional(LSTM(H)))
    _, params, state = model.init(key, (B, T, F))
    with pytest.raises(LayerError, match=r"LSTM layer at 1_bidirectional/0_lstm: .*rank 3"):
        model.apply(params, state, jnp.zeros((B, F)))


# --- PyTorch, weights copied, float64 ---------------------------------------------------------


def _torch_params(module, kind, reverse):
    """jdnn params from the (reverse, if asked) direction of a torch RNN/GRU/LSTM."""
    suffix = "_l0_reverse" if reverse else "_l0"
    w = {name: getattr(module, name + suffix).detach().numpy()
         for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    params = {"w_x": w["weight_ih"].T, "w_h": w["weight_hh"].T}
    if kind == "GRU":
        params.update(b_x=w["bias_ih"], b_h=w["bias_hh"])
    else:
        params["b"] = w["bias_ih"] + w["bias_hh"]   # only their sum matters
    return {k: jnp.asarray(v) for k, v in params.items()}


def _torch_grads(module, kind, reverse):
    suffix = "_l0_reverse" if reverse else "_l0"
    g = {name: getattr(module, name + suffix).grad.numpy()
         for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    grads = {"w_x": g["weight_ih"].T, "w_h": g["weight_hh"].T}
    if kind == "GRU":
        grads.update(b_x=g["bias_ih"], b_h=g["bias_hh"])
    else:
        grads["b"] = g["bias_ih"]   # b = bias_ih + bias_hh: each gets b's gradient
        np.testing.assert_allclose(g["bias_hh"], g["bias_ih"], rtol=1e-12)
    return grads


@pytest.mark.parametrize("kind", KINDS)
def test_equal_to_torch_outputs_and_gradients(kind, torch):
    """Both directions at once: bidirectional against `bidirectional=True`, the forward layer
    with torch's `*_l0` weights, the reversed one with its `*_l0_reverse` weights."""
    torch.manual_seed(0)
    module = getattr(torch.nn, KINDS[kind][1])(F, H, batch_first=True, bidirectional=True).double()
    x = _x(1)
    xt = torch.tensor(x, requires_grad=True)
    out, _ = module(xt)
    weights = np.random.default_rng(2).normal(size=(B, T, 2 * H))
    (out * torch.tensor(weights)).sum().backward()
    names = f"0_{kind.lower()}", f"1_{kind.lower()}"
    with jax.enable_x64(True):
        layer = bidirectional(KINDS[kind][0](H))
        params = {names[0]: _torch_params(module, kind, False),
                  names[1]: _torch_params(module, kind, True)}

        def loss(params, x):
            y, _ = layer.apply(params, {names[0]: {}, names[1]: {}}, x)
            return jnp.sum(y * weights), y

        (_, y), (grads, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            params, jnp.asarray(x))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, reverse in zip(names, (False, True)):
        expected = _torch_grads(module, kind, reverse)
        for leaf in expected:
            np.testing.assert_allclose(grads[name][leaf], expected[leaf], rtol=1e-10,
                                       atol=1e-12, err_msg=f"{name}/{leaf}")
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, return_sequences", [("SimpleRNN", True), ("GRU", True),
                                                    ("LSTM", True), ("GRU", False)])
def test_bidirectional_equals_torch_on_packed_sequences(kind, return_sequences, torch):
    torch.manual_seed(1)
    module = getattr(torch.nn, KINDS[kind][1])(F, H, batch_first=True, bidirectional=True).double()
    x = _x(3)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(LENGTHS),
                                                     batch_first=True, enforce_sorted=False)
    out, last = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n = (last[0] if kind == "LSTM" else last).detach().numpy()   # (2, B, H)
    h_n = np.concatenate([h_n[0], h_n[1]], axis=-1)
    with jax.enable_x64(True):
        layer = bidirectional(KINDS[kind][0](H, return_sequences=return_sequences))
        name = f"0_{kind.lower()}", f"1_{kind.lower()}"
        params = {name[0]: _torch_params(module, kind, False),
                  name[1]: _torch_params(module, kind, True)}
        y, _ = jax.jit(layer.apply)(params, {name[0]: {}, name[1]: {}},
                                    Padded(jnp.asarray(x), jnp.asarray(LENGTHS)))
    if not return_sequences:
        np.testing.assert_allclose(y, h_n, rtol=1e-10, atol=1e-12)
        return
    assert isinstance(y, Padded)
    np.testing.assert_array_equal(y.lengths, LENGTHS)
    np.testing.assert_allclose(y.values, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(y.values)[1, 2:] == 0)   # padded steps output 0
    # the last states: forward at each example's last real step, backward at its first
    last_steps = np.concatenate([y.values[np.arange(B), LENGTHS - 1, :H], y.values[:, 0, H:]],
                                axis=-1)
    np.testing.assert_allclose(last_steps, h_n, rtol=1e-10, atol=1e-12)


def test_bidirectional_layout_and_merge(key):
    layer = bidirectional(GRU(H), merge="sum")
    assert [c["reverse"] for c in layer.spec.children] == [False, True]
    out_shape, params, state = layer.init(key, (B, T, F))
    assert out_shape == (B, T, H) and set(params) == {"0_gru", "1_gru"}
    assert not np.allclose(params["0_gru"]["w_x"], params["1_gru"]["w_x"])   # own weights
    x = jnp.asarray(_x(), jnp.float32)
    y, _ = layer.apply(params, state, x)
    forward, _ = GRU(H).apply(params["0_gru"], {}, x)
    backward, _ = GRU(H, reverse=True).apply(params["1_gru"], {}, x)
    np.testing.assert_allclose(y, forward + backward, rtol=1e-6)
    # rebuilt from its spec (both children given), the same layer
    twin = rebuild(layer.spec)
    assert twin.spec == layer.spec
    np.testing.assert_array_equal(twin.apply(params, state, x)[0], y)
    # a reversed layer's partner runs forward
    assert [c["reverse"] for c in bidirectional(LSTM(H, reverse=True)).spec.children] == [True,
                                                                                         False]


# --- padding never changes a result -------------------------------------------------------------


@pytest.mark.parametrize("kind, reverse, return_sequences, initial_state", [
    ("GRU", True, True, "learned"), ("LSTM", False, False, "learned"),
])
def test_padding_never_changes_a_result(kind, reverse, return_sequences, initial_state, key):
    """Each example alone, cut to its length, against the padded batch: the outputs at real
    steps (and the last states), and the parameter gradients of a loss reading only those."""
    layer = KINDS[kind][0](H, reverse=reverse, return_sequences=return_sequences,
                           initial_state=initial_state)
    lengths = np.array([5, 0, 2])
    x = _x(4)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 1e3   # garbage in the padding
    weights = np.random.default_rng(5).normal(size=(B, T, H) if return_sequences else (B, H))

    def loss(params, x, weights):   # the padded outputs are 0: only real steps count
        y, _ = layer.apply(params, state, x)
        return jnp.sum(_values(y) * weights), y

    with jax.enable_x64(True):
        _, params, state = layer.init(key, x.shape)
        params = {k: v + 0.1 for k, v in params.items()}   # h0, c0 nonzero
        run = jax.jit(jax.grad(loss, has_aux=True))
        grads, y = run(params, Padded(jnp.asarray(x), jnp.asarray(lengths)), weights)
        alone = [run(params, jnp.asarray(x[b:b + 1, :n]),
                     weights[b:b + 1, :n] if return_sequences else weights[b:b + 1])
                 for b, n in enumerate(lengths)]
    for b, (n, (_, y_alone)) in enumerate(zip(lengths, alone)):
        if return_sequences:
            np.testing.assert_allclose(y.values[b, :n], y_alone[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_array_equal(y.values[b, n:], 0.0)
        else:
            np.testing.assert_allclose(y[b], y_alone[0], rtol=1e-12, atol=1e-14)
    total = jax.tree.map(lambda *g: sum(np.asarray(a) for a in g), *[g for g, _ in alone])
    chex.assert_trees_all_close(grads, total, rtol=1e-10, atol=1e-12)


# --- jit, vmap, inside models -----------------------------------------------------------------


def test_jit_traces_once_and_vmap(key):
    layer = LSTM(H)
    _, params, state = layer.init(key, (B, T, F))
    apply = jax.jit(chex.assert_max_traces(layer.apply, n=1))
    x = jnp.asarray(_x(), jnp.float32)
    lengths = jnp.asarray(LENGTHS)
    y1, _ = apply(params, state, Padded(x, lengths))
    y2, _ = apply(params, state, Padded(x + 1, lengths[::-1]))   # new values, no retrace
    assert not np.allclose(y1.values, y2.values)
    # vmap over a leading axis of inputs (padded batches too), and over stacked parameters
    xs = Padded(jnp.stack([x + 1, x]), jnp.stack([lengths[::-1], lengths]))
    ys, _ = jax.jit(jax.vmap(layer.apply, in_axes=(None, None, 0)))(params, state, xs)
    np.testing.assert_allclose(ys.values[0], y2.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys.values[1], y1.values, rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf / 2, leaf]), params)
    ys, _ = jax.jit(jax.vmap(layer.apply, in_axes=(0, None, None)))(stacked, state,
                                                                    Padded(x, lengths))
    np.testing.assert_allclose(ys.values[1], y1.values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ys.values[0], y1.values)


def test_in_a_sequence_classifier(key):
    model = jdnn.serial(jdnn.Dense(F), bidirectional(GRU(H)), LSTM(H, return_sequences=False),
                        jdnn.Dense(2))
    _, params, state = model.init(key, (B, T, F))
    assert set(params["1_bidirectional"]) == {"0_gru", "1_gru"}
    x = jnp.asarray(_x(), jnp.float32)
    logits, _ = jax.jit(model.apply)(params, state, Padded(x, jnp.asarray(LENGTHS)))
    assert logits.shape == (B, 2) and not isinstance(logits, Padded)
    # the same as the last example alone, cut to its length
    alone, _ = jax.jit(model.apply)(params, state, x[2:3, :LENGTHS[2]])
    np.testing.assert_allclose(logits[2], alone[0], rtol=1e-5, atol=1e-6)
