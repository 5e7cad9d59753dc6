"""int8 quantization: the compiled program really multiplies int8 by int8 into int32, outputs
stay close to the float model's, kernels are stored per output channel, and the layers are
found through the `quantize` trait, never by kind name. qwix is an optional extra: each test
that needs it skips on its own where it is missing."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jdnn
from jdnn.compress import quantize, quantize_kernel
from jdnn.core import make_spec, trait

KEY = jax.random.key(0, impl="rbg")


def _cnn():
    return jdnn.serial(jdnn.Conv2D(4, 3, strides=2), jdnn.Relu(), jdnn.Flatten(), jdnn.Dense(8),
                       jdnn.Relu(), jdnn.Dense(3))


def _model_and_data():
    model = _cnn()
    _, params, state = jax.jit(model.init, static_argnums=1)(KEY, (2, 8, 8, 1))
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
    return model, params, state, x


def _relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_import_jdnn_never_imports_qwix():
    code = "import sys, jdnn, jdnn.compress; sys.exit('qwix' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_qwix_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "qwix", None)
    with pytest.raises(ImportError, match=r"pip install 'jdnn\[quant\]'"):
        quantize(jdnn.Dense(2), {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, {})


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_program_multiplies_int8_into_int32_and_stays_close(static):
    pytest.importorskip("qwix")
    model, params, state, x = _model_and_data()
    qmodel, qparams = quantize(model, params, state, calibration=[x[:8], x[8:]] if static
                               else None)
    run = jax.jit(qmodel.apply)
    text = run.lower(qparams, state, x).as_text()
    products = [line for line in text.splitlines()
                if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
    assert len(products) == 3
    for line in products:   # (tensor<..xi8>, tensor<..xi8>) -> tensor<..xi32>
        operands, result = line.rsplit(":", 1)[1].split("->")
        assert operands.count("xi8>") == 2 and "xi32>" in result, line
    y, _ = run(qparams, state, x)
    assert _relative_error(y, jax.jit(model.apply)(params, state, x)[0]) < 0.05
    assert ("scale_x" in qparams["3_dense"]) == static


def test_kernels_are_int8_with_a_scale_per_output_channel():
    pytest.importorskip("qwix")
    w = jax.random.normal(jax.random.key(2), (3, 3, 2, 5)) * jnp.arange(1, 6)
    q, scale = quantize_kernel(w)
    assert q.dtype == jnp.int8 and q.shape == w.shape and scale.shape == (5,)
    # qwix's symmetric bound: max|w| maps to 127.5, so every int8 bucket is used
    np.testing.assert_allclose(scale, jnp.max(jnp.abs(w), axis=(0, 1, 2)) / 127.5, rtol=1e-6)
    assert int(jnp.max(q)) <= 127 and int(jnp.min(q)) >= -128 and int(jnp.max(jnp.abs(q))) >= 127
    assert float(jnp.max(jnp.abs(q * scale - w) / scale)) <= 0.5 + 1e-5   # half a step


def test_static_scale_is_the_calibrated_range_and_saturates_beyond():
    pytest.importorskip("qwix")
    model = jdnn.Dense(2)
    _, params, state = model.init(KEY, (1, 3))
    calibration = jnp.array([[0.5, -2.0, 1.0]])
    qmodel, qparams = quantize(model, params, state, calibration=calibration)
    assert float(qparams["scale_x"]) == pytest.approx(2.0 / 127.5)
    big = jnp.array([[0.5, -20.0, 1.0]])   # clipped to -2.0 as int8
    y, _ = jax.jit(qmodel.apply)(qparams, state, big)
    expected = jax.jit(model.apply)(params, state, jnp.array([[0.5, -2.0, 1.0]]))[0]
    np.testing.assert_allclose(y, expected, rtol=0.02, atol=0.02)


def test_trait_apply_with_lax_is_the_float_layer():
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 3))
    for layer, shape in ((jdnn.Conv2D(4, 3, strides=2, padding="VALID"), x.shape),
                         (jdnn.Dense(5), (2, 3))):
        xs = x if len(shape) == 4 else x[:, 0, 0, :]
        _, params, state = layer.init(KEY, shape)
        kernels, apply_with = trait(layer.spec, "quantize")(layer.spec)
        assert kernels == {"w": -1}
        np.testing.assert_allclose(jax.jit(apply_with(lax))(params, state, xs)[0],
                                   jax.jit(layer.apply)(params, state, xs)[0], rtol=1e-5,
                                   atol=1e-5)


def test_a_users_kind_is_quantized_through_its_trait():
    pytest.importorskip("qwix")

    def quantizable(spec):
        def apply_with(ops):
            def apply(params, state, x, *, key=None, train=False):   # y = x @ w.T, w (out, in)
                return ops.dot_general(x, params["w"], (((1,), (1,)), ((), ()))), state
            return apply
        return {"w": 0}, apply_with

    @jdnn.register_layer(quantize=quantizable)
    def TransposedLinear(features: int = 2) -> jdnn.Layer:
        def init(key, input_shape):
            return (input_shape[0], features), {"w": jax.random.normal(key, (features,
                                                                             input_shape[-1]))}, {}

        def apply(params, state, x, *, key=None, train=False):
            return x @ params["w"].T, state

        return jdnn.Layer(init, apply, make_spec("TransposedLinear", features=features))

    model = jdnn.serial(TransposedLinear(3), jdnn.Relu())
    _, params, state = model.init(KEY, (1, 4))
    qmodel, qparams = quantize(model, params, state)
    assert qparams["0_transposedlinear"]["scale_w"].shape == (3,)
    x = jax.random.normal(jax.random.key(4), (5, 4))
    assert _relative_error(jax.jit(qmodel.apply)(qparams, state, x)[0],
                           jax.jit(model.apply)(params, state, x)[0]) < 0.05


def test_init_gives_params_the_quantized_model_takes():
    pytest.importorskip("qwix")
    model, params, state, x = _model_and_data()
    qmodel, qparams = quantize(model, params, state, calibration=x)
    _, fresh, _ = qmodel.init(KEY, (2, 8, 8, 1))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), fresh) == jax.tree.map(
        lambda a: (jnp.shape(a), jnp.asarray(a).dtype), qparams)
    assert jax.eval_shape(qmodel.apply, fresh, state, x)[0].shape == (16, 3)
    assert qmodel.spec == model.spec


def test_errors_name_what_is_wrong():
    pytest.importorskip("qwix")
    model = jdnn.serial(jdnn.Relu(), jdnn.Flatten())
    with pytest.raises(ValueError, match=r"no layer of serial\(Relu\(\), Flatten\(\)\) declares "
                                         r"the `quantize` trait"):
        quantize(model, {"0_relu": {}, "1_flatten": {}}, {"0_relu": {}, "1_flatten": {}})
    model, params, state, _ = _model_and_data()
    with pytest.raises(ValueError, match="calibration is empty"):
        quantize(model, params, state, calibration=[])
    with pytest.raises(TypeError, match="model must be a jdnn Layer"):
        quantize(model.apply, params, state)
