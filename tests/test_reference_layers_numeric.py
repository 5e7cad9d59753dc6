"""The NumPy reference layers checked without JAX: central finite differences, float32 dtypes,
the kink and tie conventions, the error paths, and that the reference imports no JAX.

Everything here is NumPy; the comparisons with jdnn's JAX layers are in test_reference_layers.py.
"""

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jdnn.reference.layers import KINDS, activations, conv, dense, dropout, pooling

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "jdnn" / "reference" / "layers"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str
    shape: tuple[int, ...]
    params: dict = dataclasses.field(default_factory=dict)  # name -> shape
    hparams: dict = dataclasses.field(default_factory=dict)
    inputs: str = "away"  # "away": |x| >= 0.3; "distinct": a permutation of distinct values;
    # "ids": token ids in [0, 6) (an Embedding's input: no gradient, no finite differences)

    def x(self, rng):
        if self.inputs == "ids":
            return rng.integers(0, 6, size=self.shape)
        if self.inputs == "distinct":
            n = int(np.prod(self.shape))
            return (rng.permutation(n) / n * 4.0 - 2.0).reshape(self.shape)
        x = rng.normal(size=self.shape)
        return x + np.where(x >= 0, 0.3, -0.3)


def _mask(shape, seed=5):
    return np.random.default_rng(seed).random(shape) < 0.6


SAME2 = {"strides": (2, 2), "padding": "SAME"}
BN_STATE = {"mean": np.array([0.1, -0.2, 0.3]), "var": np.array([0.5, 1.5, 2.0])}

CASES = [
    Case("dense", "Dense", (3, 5), {"w": (5, 4), "b": (4,)}),
    Case("dense_rank3_no_bias", "Dense", (2, 3, 5), {"w": (5, 2)}),
    Case("conv_same_s2_odd", "Conv2D", (2, 7, 5, 3), {"w": (3, 2, 3, 4), "b": (4,)}, SAME2),
    Case("conv_valid", "Conv2D", (2, 6, 7, 2), {"w": (2, 3, 2, 3), "b": (3,)},
         {"strides": (1, 2), "padding": "VALID"}),
    Case("maxpool_same_overlap", "MaxPool2D", (2, 5, 6, 2), {},
         {"window": (3, 3), "strides": (1, 1), "padding": "SAME"}, "distinct"),
    Case("maxpool_valid", "MaxPool2D", (2, 6, 5, 2), {},
         {"window": (2, 2), "strides": (2, 2), "padding": "VALID"}, "distinct"),
    Case("avgpool_same_overlap", "AvgPool2D", (2, 5, 6, 2), {},
         {"window": (3, 2), "strides": (2, 1), "padding": "SAME"}),
    Case("avgpool_valid", "AvgPool2D", (2, 6, 5, 2), {},
         {"window": (2, 2), "strides": (1, 1), "padding": "VALID"}),
    Case("flatten", "Flatten", (2, 3, 4, 2)),
    Case("dropout_train", "Dropout", (4, 6), {}, {"keep_mask": _mask((4, 6)), "rate": 0.4}),
    Case("dropout_eval", "Dropout", (4, 6), {}, {"keep_mask": None, "rate": 0.4}),
    Case("batchnorm_train", "BatchNorm", (2, 4, 3), {"scale": (3,), "bias": (3,)},
         {"state": BN_STATE, "train": True, "momentum": 0.9, "eps": 1e-3}),
    Case("batchnorm_eval", "BatchNorm", (2, 4, 3), {"scale": (3,), "bias": (3,)},
         {"state": BN_STATE, "train": False, "momentum": 0.9, "eps": 1e-3}),
    Case("relu", "Relu", (4, 5)),
    Case("sigmoid", "Sigmoid", (4, 5)),
    Case("tanh", "Tanh", (4, 5)),
    Case("leakyrelu", "LeakyRelu", (4, 5), {}, {"negative_slope": 0.2}),
    Case("prelu", "PRelu", (2, 3, 5), {"alpha": (5,)}),
    Case("elu", "Elu", (4, 5), {}, {"alpha": 0.7}),
    Case("gelu_tanh", "Gelu", (4, 5), {}, {"approximate": True}),
    Case("gelu_erf", "Gelu", (4, 5), {}, {"approximate": False}),
    Case("softmax", "Softmax", (2, 3, 5)),
    Case("embedding", "Embedding", (3, 5), {"table": (6, 4)}, {}, "ids"),
    Case("positional_learned", "PositionalEmbedding", (2, 3, 4), {"table": (5, 4)},
         {"max_length": 5, "encoding": "learned"}),
    Case("positional_sinusoidal", "PositionalEmbedding", (2, 3, 5), {},
         {"max_length": 5, "encoding": "sinusoidal"}),
    Case("layernorm", "LayerNorm", (2, 3, 5), {"scale": (5,), "bias": (5,)}, {"eps": 1e-3}),
    Case("layernorm_no_affine", "LayerNorm", (4, 5), {}, {"eps": 1e-3}),
    Case("conv1d_causal_dilated", "Conv1D", (2, 7, 3), {"w": (3, 3, 4), "b": (4,)},
         {"strides": 1, "padding": "CAUSAL", "dilation": 2}),
    Case("conv1d_same_s2", "Conv1D", (2, 7, 3), {"w": (2, 3, 2)},
         {"strides": 2, "padding": "SAME", "dilation": 1}),
    Case("maxpool1d_same", "MaxPool1D", (2, 7, 3), {},
         {"window": 3, "strides": 2, "padding": "SAME"}, "distinct"),
    Case("avgpool1d_valid", "AvgPool1D", (2, 7, 3), {},
         {"window": 2, "strides": 1, "padding": "VALID"}),
    Case("global_avg", "GlobalAvgPool", (2, 5, 3)),
    Case("global_max_images", "GlobalMaxPool", (2, 3, 4, 3), {}, {}, "distinct"),
    Case("attention", "MultiHeadAttention", (2, 5, 4),
         {"w_q": (4, 2, 3), "w_k": (4, 2, 3), "w_v": (4, 2, 3), "w_o": (6, 5),
          "b_q": (2, 3), "b_k": (2, 3), "b_v": (2, 3), "b_o": (5,)}, {"causal": False}),
    Case("simple_rnn", "SimpleRNN", (2, 4, 3), {"w_x": (3, 2), "w_h": (2, 2), "b": (2,)},
         {"return_sequences": True, "reverse": False, "activation": "tanh"}),
    Case("gru_reverse_last", "GRU", (2, 4, 3), {"w_x": (3, 6), "w_h": (2, 6), "b_x": (6,),
                                                "b_h": (6,), "h0": (2,)},
         {"return_sequences": False, "reverse": True}),
    Case("lstm", "LSTM", (2, 4, 3), {"w_x": (3, 8), "w_h": (2, 8), "b": (8,)},
         {"return_sequences": True, "reverse": False}),
    Case("attention_causal_no_bias", "MultiHeadAttention", (2, 5, 4),
         {"w_q": (4, 1, 2), "w_k": (4, 1, 2), "w_v": (4, 1, 2), "w_o": (2, 4)},
         {"causal": True}),
]
by_case = pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)


def run_forward(case, params, x):
    """`(y, cache)` of the case's kind; BatchNorm's new state is dropped."""
    out = KINDS[case.kind].forward(params, x, **case.hparams)
    return out[:2]


def make_params(case, rng, dtype=np.float64):
    return {k: rng.normal(size=shape).astype(dtype) for k, shape in case.params.items()}


def test_cases_cover_every_kind():
    assert {case.kind for case in CASES} == set(KINDS)


# --- gradients against central finite differences -------------------------------------------


@by_case
def test_backward_matches_finite_differences(case):
    """`backward` vs `(L(v + h) - L(v - h)) / 2h` for L = sum(g * y), at a few coordinates of
    the input and of every parameter."""
    rng = np.random.default_rng(0)
    x, params = case.x(rng), make_params(case, rng)
    y, cache = run_forward(case, params, x)
    g = rng.normal(size=y.shape)
    dx, dparams = KINDS[case.kind].backward(params, cache, g)
    assert dx.shape == x.shape and dparams.keys() == params.keys()

    def loss(x_, params_):
        return float(np.sum(g * run_forward(case, params_, x_)[0]))

    arrays = {"x": (x, dx)} if case.inputs != "ids" else {}   # ids are not differentiable
    arrays |= {k: (params[k], dparams[k]) for k in params}
    h = 1e-6
    for name, (value, grad) in arrays.items():
        assert grad.shape == value.shape, name
        for flat in rng.choice(value.size, size=min(6, value.size), replace=False):
            index = np.unravel_index(flat, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[index] += h
            minus[index] -= h
            if name == "x":
                numeric = (loss(plus, params) - loss(minus, params)) / (2 * h)
            else:
                numeric = (loss(x, params | {name: plus}) - loss(x, params | {name: minus})) / (
                    2 * h)
            assert abs(grad[index] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, index)


# --- float32 in, float32 out ------------------------------------------------------------------


@by_case
def test_float32_stays_float32(case):
    rng = np.random.default_rng(1)
    x64, params64 = case.x(rng), make_params(case, rng)
    x32 = x64 if case.inputs == "ids" else x64.astype(np.float32)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    hparams32 = dict(case.hparams)
    if "state" in hparams32:
        hparams32["state"] = {k: v.astype(np.float32) for k, v in hparams32["state"].items()}
    pair = KINDS[case.kind]
    out32 = pair.forward(params32, x32, **hparams32)
    y64, cache64 = run_forward(case, params64, x64)
    y32, cache32 = out32[:2]
    dy = rng.normal(size=y64.shape)
    dx64, dparams64 = pair.backward(params64, cache64, dy)
    dx32, dparams32 = pair.backward(params32, cache32, dy.astype(np.float32))

    assert y32.dtype == dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4)
    for k in params32:
        assert dparams32[k].dtype == np.float32, k
        np.testing.assert_allclose(dparams32[k], dparams64[k], rtol=1e-4, atol=1e-4)
    if case.kind == "BatchNorm":
        assert all(v.dtype == np.float32 for v in out32[2].values())


# --- hand-checked values ----------------------------------------------------------------------


def test_batchnorm_train_state_and_statistics():
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0]])
    params = {"scale": np.array([2.0, 1.0]), "bias": np.array([0.5, 0.0])}
    state = {"mean": np.zeros(2), "var": np.ones(2)}
    y, _, new_state = KINDS["BatchNorm"].forward(params, x, state=state, train=True,
                                                 momentum=0.9, eps=1e-12)
    # feature 0: mean 3, biased var 8/3; feature 1: mean 12, biased var 8
    np.testing.assert_allclose(new_state["mean"], [0.3, 1.2])
    np.testing.assert_allclose(new_state["var"], [0.9 + 0.1 * 8 / 3, 0.9 + 0.8])
    np.testing.assert_allclose(y[:, 0], 2.0 * (x[:, 0] - 3.0) / np.sqrt(8 / 3) + 0.5)
    _, _, same = KINDS["BatchNorm"].forward(params, x, state=state, train=False, momentum=0.9,
                                            eps=1e-12)
    assert same is state


def test_avgpool_same_divides_by_real_pixels():
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    y, _ = pooling.avg_forward({}, x, window=(2, 2), strides=(2, 2), padding="SAME")
    # out 2x2; SAME pads 1 at the bottom/right: windows hold 4, 2, 2 and 1 real pixels
    np.testing.assert_allclose(y[0, :, :, 0], [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2],
                                               [(6 + 7) / 2, 8.0]])


def test_conv_same_padding_matches_xla_rule():
    # total = max((out - 1) * stride + k - size, 0); low = total // 2, the rest high
    assert conv.same_padding(5, 3, 1) == (1, 1)
    assert conv.same_padding(5, 4, 1) == (1, 2)
    assert conv.same_padding(7, 4, 3) == (1, 2)
    assert conv.same_padding(6, 3, 2) == (0, 1)
    assert conv.same_padding(5, 1, 2) == (0, 0)
    x = np.ones((1, 7, 5, 1))
    y, _ = conv.forward({"w": np.ones((3, 2, 1, 1))}, x, strides=(2, 2), padding="SAME")
    assert y.shape == (1, 4, 3, 1)
    y, _ = conv.forward({"w": np.ones((3, 2, 1, 1))}, x, strides=(2, 2), padding="VALID")
    assert y.shape == (1, 3, 2, 1)


def test_dense_rank1_input():
    w, b = np.arange(6.0).reshape(3, 2), np.array([1.0, -1.0])
    y, cache = dense.forward({"w": w, "b": b}, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(y, [17.0, 21.0])
    dx, dparams = dense.backward({"w": w, "b": b}, cache, np.array([1.0, 0.0]))
    np.testing.assert_allclose(dx, [0.0, 2.0, 4.0])
    np.testing.assert_allclose(dparams["w"], [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    np.testing.assert_allclose(dparams["b"], [1.0, 0.0])


# --- conventions where the derivative is a choice ---------------------------------------------


def test_kink_conventions():
    x, dy = np.array([[0.0, -0.0]]), np.array([[2.0, 3.0]])
    alpha = {"alpha": np.array([0.25, 0.25])}
    dx, _ = activations.relu.backward({}, activations.relu.forward({}, x)[1], dy)
    np.testing.assert_array_equal(dx, [[0.0, 0.0]])
    _, cache = activations.leaky_relu.forward({}, x, negative_slope=0.1)
    np.testing.assert_array_equal(activations.leaky_relu.backward({}, cache, dy)[0], dy)
    _, cache = activations.elu.forward({}, x, alpha=0.5)
    np.testing.assert_array_equal(activations.elu.backward({}, cache, dy)[0], 0.5 * dy)
    dx, dparams = activations.prelu.backward(alpha, activations.prelu.forward(alpha, x)[1], dy)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_array_equal(dparams["alpha"], [0.0, 0.0])


def test_maxpool_ties_go_to_first_max_in_row_major_order():
    x = np.zeros((1, 2, 2, 1))
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 1.0  # tied maxima at window slots 1 and 2
    y, cache = pooling.max_forward({}, x, window=(2, 2), strides=(2, 2), padding="VALID")
    dx, _ = pooling.max_backward({}, cache, np.full(y.shape, 3.0))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0.0, 3.0], [0.0, 0.0]])


def test_maxpool_overlapping_windows_accumulate():
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 5.0  # the centre wins all four overlapping 2x2 windows
    y, cache = pooling.max_forward({}, x, window=(2, 2), strides=(1, 1), padding="VALID")
    dx, _ = pooling.max_backward({}, cache, np.array([1.0, 2.0, 3.0, 4.0]).reshape(y.shape))
    assert dx[0, 1, 1, 0] == 10.0 and dx.sum() == 10.0


# --- error paths ------------------------------------------------------------------------------


def test_dropout_mask_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"keep_mask has shape \(2, 3\) but x has shape \(3, 2\)"):
        dropout.forward({}, np.ones((3, 2)), keep_mask=np.ones((2, 3), bool), rate=0.5)


def test_unknown_padding_is_an_error():
    with pytest.raises(ValueError, match="padding must be \"SAME\" or \"VALID\", got 'FULL'"):
        conv.forward({"w": np.ones((2, 2, 1, 1))}, np.ones((1, 3, 3, 1)), strides=(1, 1),
                     padding="FULL")


# --- the reference shares no code with the JAX side -------------------------------------------


def test_reference_modules_import_no_jax():
    """Import the reference in a fresh interpreter, bypassing jdnn/__init__.py (which imports
    the JAX layers), and check that no JAX module got loaded."""
    root = REFERENCE_DIR.parents[2]
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('jdnn')\n"
        f"pkg.__path__ = [{str(root / 'jdnn')!r}]\n"
        "sys.modules['jdnn'] = pkg\n"
        "import jdnn.reference.layers as r\n"
        "assert len(r.KINDS) == len(set(r.KINDS)) >= 24\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib'))\n"
        "print(' '.join(loaded) or 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean", out.stdout


@pytest.mark.parametrize("path", sorted(REFERENCE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_reference_sources_import_only_numpy_and_the_reference(path):
    allowed = {"__future__", "math", "types", "numpy"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            ok = (name.split(".")[0] in allowed or name.startswith("jdnn.reference.layers")
                  or name == "jdnn.reference.padded")
            assert ok, f"{path.name} imports {name}"
