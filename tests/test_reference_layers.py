"""The NumPy reference layers against jdnn's JAX layers, in float64.

For every layer kind and variant: the reference forward equals `apply`, and the reference
backward equals `jax.vjp` of `apply` with respect to the input and every parameter, for a random
cotangent. The reference is driven only through `KINDS[spec.kind]` and the spec's
hyper-parameters, the way a network built from specs drives it. JAX-independent checks (finite
differences, conventions, imports) are in test_reference_layers_numeric.py.
"""

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdnn.layers
from jdnn.core import Layer, LayerError
from jdnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Elu,
    AvgPool1D,
    Conv1D,
    Embedding,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool1D,
    MultiHeadAttention,
    GRU,
    LSTM,
    SimpleRNN,
    Gelu,
    LayerNorm,
    LeakyRelu,
    MaxPool2D,
    PositionalEmbedding,
    PRelu,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
)
from jdnn.reference.layers import KINDS

FORWARD_TOL = 1e-12
BACKWARD_TOL = 1e-10
# Keyword arguments of a reference forward that are inputs rather than spec hyper-parameters.
RUNTIME_INPUTS = {"keep_mask", "state", "train", "lengths"}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Layer]
    shape: tuple[int, ...]  # without the batch axis
    inputs: str = "away"  # "away": |x| >= 0.3; "distinct": a permutation of distinct values;
    train: bool = False   # "ids": token ids in [0, 6), an Embedding's input

    def x(self, batch, rng):
        shape = (batch, *self.shape)
        if self.inputs == "ids":
            return rng.integers(0, 6, size=shape)
        if self.inputs == "distinct":
            n = int(np.prod(shape))
            return (rng.permutation(n) / n * 4.0 - 2.0).reshape(shape)
        x = rng.normal(size=shape)
        return x + np.where(x >= 0, 0.3, -0.3)


VEC, IMG = (5,), (5, 6, 3)

CASES = [
    Case("dense", lambda: Dense(4), VEC),
    Case("dense_no_bias", lambda: Dense(4, use_bias=False), VEC),
    Case("dense_rank3", lambda: Dense(3), (2, 5)),
    Case("conv_same_s1", lambda: Conv2D(4, (3, 3)), IMG),
    Case("conv_same_s2_nonsquare_odd", lambda: Conv2D(4, (3, 2), strides=2), (7, 5, 3)),
    Case("conv_same_even_kernel_asym", lambda: Conv2D(2, (4, 4), strides=3, use_bias=False),
         (8, 7, 2)),
    Case("conv_same_stride_over_kernel", lambda: Conv2D(2, 1, strides=(2, 3)), (5, 7, 3)),
    Case("conv_valid_s1", lambda: Conv2D(3, (2, 3), padding="VALID"), IMG),
    Case("conv_valid_s2_leftover", lambda: Conv2D(3, (3, 2), strides=(2, 1), padding="VALID"),
         (8, 6, 2)),
    Case("maxpool_valid", lambda: MaxPool2D(2), (6, 6, 3), "distinct"),
    Case("maxpool_valid_overlap", lambda: MaxPool2D((3, 2), strides=(2, 1)), (7, 5, 2),
         "distinct"),
    Case("maxpool_same_overlap", lambda: MaxPool2D(3, strides=1, padding="SAME"), (5, 6, 2),
         "distinct"),
    Case("maxpool_same_odd", lambda: MaxPool2D(2, padding="SAME"), (5, 5, 2), "distinct"),
    Case("avgpool_valid", lambda: AvgPool2D(2), (6, 6, 3)),
    Case("avgpool_valid_overlap", lambda: AvgPool2D((3, 2), strides=(2, 1)), (7, 5, 2)),
    Case("avgpool_same_overlap", lambda: AvgPool2D(3, strides=1, padding="SAME"), (5, 6, 2)),
    Case("avgpool_same_odd_s2", lambda: AvgPool2D((2, 3), strides=2, padding="SAME"), (5, 5, 2)),
    Case("flatten_images", Flatten, (3, 4, 2)),
    Case("flatten_vectors", Flatten, VEC),
    Case("dropout_train", lambda: Dropout(0.4), (4, 6), train=True),
    Case("dropout_eval", lambda: Dropout(0.4), (4, 6)),
    Case("dropout_rate_in_state_train", lambda: Dropout(0.4, rate_in_state=True), (4, 6),
         train=True),
    Case("dropout_rate_in_state_eval", lambda: Dropout(0.4, rate_in_state=True), (4, 6)),
    Case("batchnorm_train", lambda: BatchNorm(momentum=0.8, eps=1e-3), (4,), train=True),
    Case("batchnorm_train_images", BatchNorm, (3, 4, 3), train=True),
    Case("batchnorm_eval", lambda: BatchNorm(eps=1e-3), (4,)),
    Case("batchnorm_eval_images", BatchNorm, (3, 4, 3)),
    Case("relu", Relu, VEC),
    Case("sigmoid", Sigmoid, VEC),
    Case("tanh", Tanh, VEC),
    Case("leakyrelu", lambda: LeakyRelu(0.2), VEC),
    Case("prelu", PRelu, VEC),
    Case("prelu_images", lambda: PRelu(0.1), (3, 3, 4)),
    Case("gelu_tanh", lambda: Gelu(approximate=True), VEC),
    Case("gelu_erf", lambda: Gelu(approximate=False), VEC),
    Case("elu", lambda: Elu(0.7), VEC),
    Case("softmax", Softmax, VEC),
    Case("softmax_rank3", Softmax, (3, 5)),
    Case("embedding", lambda: Embedding(6, 4), (5,), "ids"),
    Case("embedding_rank3", lambda: Embedding(6, 3), (2, 4), "ids"),
    Case("positional_learned", lambda: PositionalEmbedding(7), (5, 4)),
    Case("positional_sinusoidal_odd", lambda: PositionalEmbedding(7, "sinusoidal"), (5, 5)),
    Case("layernorm", lambda: LayerNorm(1e-3), (3, 5)),
    Case("layernorm_no_scale", lambda: LayerNorm(use_scale=False), (6,)),
    Case("conv1d_causal_dilated", lambda: Conv1D(4, 3, padding="CAUSAL", dilation=2), (7, 3)),
    Case("conv1d_same_s2", lambda: Conv1D(2, 2, strides=2, use_bias=False), (7, 3)),
    Case("conv1d_valid", lambda: Conv1D(3, 3, padding="VALID"), (6, 2)),
    Case("maxpool1d_same", lambda: MaxPool1D(3, strides=2, padding="SAME"), (7, 3), "distinct"),
    Case("avgpool1d_valid", lambda: AvgPool1D(2, strides=1), (7, 3)),
    Case("global_avg_sequences", GlobalAvgPool, (5, 3)),
    Case("global_max_images", GlobalMaxPool, (3, 4, 3), "distinct"),
    Case("attention", lambda: MultiHeadAttention(2, 3, output_features=5), (5, 4)),
    Case("simple_rnn_relu_reverse", lambda: SimpleRNN(3, reverse=True, activation="relu"),
         (4, 2)),
    Case("gru_last_state_learned", lambda: GRU(3, return_sequences=False,
                                               initial_state="learned"), (4, 2)),
    Case("lstm_sequences", lambda: LSTM(3), (4, 2)),
    Case("attention_causal_no_bias", lambda: MultiHeadAttention(1, 2, causal=True,
                                                                 use_bias=False), (5, 4)),
]


def assert_close(actual, expected, tol, what):
    """Shape equality and a normwise relative error `max|a - e| / max|e|` of at most `tol`."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def random_like(name, value, rng):
    """Random float64 parameters/statistics of `value`'s shape, so no bias hides at zero."""
    shape = np.shape(value)
    if name == "scale":
        return 1.0 + 0.3 * rng.normal(size=shape)
    if name == "var":
        return rng.uniform(0.5, 2.0, size=shape)
    if name == "rate":  # a rate-in-state Dropout's rate, moved off its initial value
        return rng.uniform(0.2, 0.6, size=shape)
    return rng.normal(size=shape)


def reference_kwargs(spec, forward, **runtime):
    """The forward's keyword arguments: the spec hyper-parameters it names, plus `runtime`."""
    wanted = [p.name for p in inspect.signature(forward).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = set(wanted) - set(spec.names) - RUNTIME_INPUTS
    assert not unknown, f"{spec.kind}: forward takes {unknown}, which the spec does not name"
    kwargs = {name: value for name, value in spec.hparams if name in wanted}
    kwargs.update({name: value for name, value in runtime.items() if name in wanted})
    return kwargs


def jax_init(layer, shape):
    """The params and state trees `layer.init` would build, by tracing only (nothing compiles)."""
    return jax.eval_shape(lambda key: layer.init(key, shape)[1:], jax.random.key(0))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_matches_jax(case, batch):
    rng = np.random.default_rng(batch)
    x = case.x(batch, rng)
    if case.name == "batchnorm_train" and batch == 1:  # one value per feature: refused, not zeros
        layer = case.make()
        _, params, state = layer.init(jax.random.key(0), x.shape)
        with pytest.raises(LayerError, match="1 value per feature"):
            layer.apply(params, state, x, train=True)
        return
    with jax.enable_x64(True):
        layer = case.make()
        params, state = jax_init(layer, x.shape)
        params = {k: random_like(k, v, rng) for k, v in params.items()}
        state = {k: random_like(k, v, rng) for k, v in state.items()}
        key = jax.random.key(7) if case.train else None

        def apply(p, xx):
            return layer.apply(p, state, xx, key=key, train=case.train)

        @jax.jit  # one compilation per case instead of one per primitive: keeps the test fast
        def forward_and_vjp(p, xx, cotangent):
            if case.inputs == "ids":   # token ids get no gradient: the twin's dx is zeros
                y, vjp, new_state = jax.vjp(lambda q: apply(q, xx), p, has_aux=True)
                return y, new_state, *vjp(cotangent), jnp.zeros(xx.shape, cotangent.dtype)
            y, vjp, new_state = jax.vjp(apply, p, xx, has_aux=True)
            return y, new_state, *vjp(cotangent)

        dy = rng.normal(size=jax.eval_shape(apply, params, x)[0].shape)
        y_jax, new_state_jax, dparams_jax, dx_jax = forward_and_vjp(params, x, dy)
        assert y_jax.dtype == jnp.float64

    ref = KINDS[layer.spec.kind]
    keep_mask = np.asarray(y_jax) != 0 if case.train else None  # x has no zeros
    if layer.spec.kind == "Dropout" and case.train:  # a mask that drops some and keeps some
        assert 0 < keep_mask.sum() < keep_mask.size
    kwargs = reference_kwargs(layer.spec, ref.forward, keep_mask=keep_mask, state=state,
                              train=case.train)
    if "rate_in_state" in layer.spec.names:  # the rate is the state's, as the network twin reads
        kwargs["rate"] = float(state["rate"])
    out = ref.forward(params, x, **kwargs)
    if layer.spec.kind == "BatchNorm":
        y, cache, new_state = out
        assert new_state.keys() == new_state_jax.keys()
        for k in new_state:
            assert_close(new_state[k], new_state_jax[k], FORWARD_TOL, f"new_state[{k}]")
    else:
        y, cache = out
    assert_close(y, y_jax, FORWARD_TOL, "y")

    dx, dparams = ref.backward(params, cache, dy)
    assert_close(dx, dx_jax, BACKWARD_TOL, "dx")
    assert dparams.keys() == params.keys()
    # a gradient that is zero in exact arithmetic (attention's key bias: the softmax ignores a
    # constant added to every score) is compared on the scale of the layer's largest gradient
    largest = max((float(np.max(np.abs(g), initial=0.0)) for g in dparams_jax.values()),
                  default=0.0)
    for k in params:
        if float(np.max(np.abs(dparams_jax[k]), initial=0.0)) < 1e-12 * largest:
            assert float(np.max(np.abs(dparams[k]), initial=0.0)) <= BACKWARD_TOL * largest, k
            continue
        assert_close(dparams[k], dparams_jax[k], BACKWARD_TOL, f"d{k}")


def test_cases_cover_every_kind():
    assert {case.make().spec.kind for case in CASES} == set(KINDS)


def test_kinds_are_jdnns_layer_kinds():
    """One entry per layer constructor jdnn.layers exports (combinators aside), named by kind."""
    constructors = set(jdnn.layers.__all__) - {"serial", "residual", "branches", "bidirectional"}
    assert set(KINDS) == constructors
    for kind, pair in KINDS.items():
        assert callable(pair.forward) and callable(pair.backward), kind


# --- conventions where the derivative is a choice: kinks and ties ----------------------------


@pytest.mark.parametrize("make", [Relu, lambda: LeakyRelu(0.2), lambda: Elu(0.7), PRelu],
                         ids=["relu", "leakyrelu", "elu", "prelu"])
def test_kink_derivatives_match_jax(make):
    x = np.array([[0.0, -0.0, 1.5, -1.5]])
    dy = np.array([[2.0, 3.0, 5.0, 7.0]])
    with jax.enable_x64(True):
        layer = make()
        _, params, state = layer.init(jax.random.key(0), x.shape)
        params = {k: np.asarray(v) for k, v in params.items()}
        _, vjp = jax.vjp(lambda p, xx: layer.apply(p, state, xx)[0], params, jnp.asarray(x))
        dparams_jax, dx_jax = vjp(jnp.asarray(dy))
    ref = KINDS[layer.spec.kind]
    y, cache = ref.forward(params, x, **reference_kwargs(layer.spec, ref.forward))
    dx, dparams = ref.backward(params, cache, dy)
    np.testing.assert_allclose(dx, np.asarray(dx_jax), rtol=1e-14, atol=0)
    for k in params:
        np.testing.assert_allclose(dparams[k], np.asarray(dparams_jax[k]), rtol=1e-14, atol=0)


def test_maxpool_ties_route_like_xla_cpu():
    """All-equal windows: both sides send the whole gradient to the first slot (row-major)."""
    x = np.zeros((1, 4, 5, 2))
    x[0, 1:3, 1:3, 0] = 1.0  # a 2x2 block of tied maxima, shared by overlapping windows
    layer = MaxPool2D(3, strides=1, padding="SAME")
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        y_jax, vjp = jax.vjp(lambda xx: layer.apply({}, {}, xx)[0], jnp.asarray(x))
        dy = np.random.default_rng(0).normal(size=y_jax.shape)
        (dx_jax,) = vjp(jnp.asarray(dy))
    ref = KINDS["MaxPool2D"]
    y, cache = ref.forward({}, x, window=(3, 3), strides=(1, 1), padding="SAME")
    dx, _ = ref.backward({}, cache, dy)
    np.testing.assert_array_equal(y, np.asarray(y_jax))
    np.testing.assert_allclose(dx, np.asarray(dx_jax), rtol=1e-14, atol=1e-14)
