"""Conv2D's hand-stated gradients equal jax's own, for every stride, padding and kernel shape, in
both formulations: im2col + GEMM (what `conv2d` lowers to on CPU) and XLA's convolutions (every
other platform)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdnn.layers import conv
from jdnn.layers.conv import conv2d

DN = ("NHWC", "HWIO", "NHWC")


# Odd and even sizes, square and non-square kernels, strides that do and do not divide the
# padded size (where SAME pads asymmetrically and VALID drops a remainder).
CASES = [((7, 6), (3, 3), (1, 1), "SAME"), ((5, 5), (3, 3), (2, 2), "SAME"),
         ((7, 6), (2, 3), (2, 2), "SAME"), ((7, 6), (3, 3), (3, 1), "SAME"),
         ((7, 6), (2, 3), (3, 1), "VALID"), ((5, 5), (1, 1), (2, 2), "VALID"),
         ((7, 6), (3, 3), (2, 2), "VALID"), ((5, 5), (2, 3), (1, 1), "VALID")]


@pytest.mark.parametrize("size,kernel,strides,padding", CASES)
def test_vjp_equals_lax(size, kernel, strides, padding):
    with jax.enable_x64(True):
        kx, kw, ky = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (2, *size, 3), jnp.float64)
        w = jax.random.normal(kw, (*kernel, 3, 4), jnp.float64)
        pads = tuple(tuple(p) for p in lax.padtype_to_pads(size, kernel, strides, padding))
        def both(x, w, dy):
            ours, our_vjp = jax.vjp(lambda a, b: conv2d(a, b, strides, pads), x, w)
            theirs, their_vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(
                a, b, strides, padding, dimension_numbers=DN), x, w)
            return (ours, *our_vjp(dy)), (theirs, *their_vjp(dy))

        out_shape = jax.eval_shape(lambda a, b: conv2d(a, b, strides, pads), x, w).shape
        dy = jax.random.normal(ky, out_shape, jnp.float64)
        ours, theirs = jax.jit(both)(x, w, dy)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("formulation", ["gemm", "conv"])
@pytest.mark.parametrize("size,kernel,strides,padding", CASES)
def test_each_formulation_equals_lax(formulation, size, kernel, strides, padding):
    forward = getattr(conv, f"_{formulation}_forward")
    backward = getattr(conv, f"_{formulation}_backward")
    with jax.enable_x64(True):
        kx, kw, ky = jax.random.split(jax.random.key(1), 3)
        x = jax.random.normal(kx, (3, *size, 2), jnp.float64)
        w = jax.random.normal(kw, (*kernel, 2, 3), jnp.float64)
        pads = tuple(tuple(p) for p in lax.padtype_to_pads(size, kernel, strides, padding))
        theirs, their_vjp = jax.vjp(lambda a, b: lax.conv_general_dilated(
            a, b, strides, padding, dimension_numbers=DN), x, w)
        dy = jax.random.normal(ky, theirs.shape, jnp.float64)
        ours = forward(x, w, strides, pads)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        for a, b in zip(backward(x, w, dy, strides, pads), their_vjp(dy)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for every x and c, strides and asymmetric pads included.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(2), (2, 7, 6, 3), jnp.float64)
        kernel, strides, pads = (2, 3), (3, 2), ((0, 1), (1, 1))
        cols = conv.im2col(x, kernel, strides, pads)
        c = jax.random.normal(jax.random.key(3), cols.shape, jnp.float64)
        np.testing.assert_allclose(jnp.vdot(cols, c),
                                   jnp.vdot(x, conv.col2im(c, x.shape, kernel, strides, pads)),
                                   rtol=1e-12)


def test_cpu_lowers_to_gemms_not_convolutions():
    x = jnp.ones((2, 8, 8, 3))
    w = jnp.ones((3, 3, 3, 4))
    grad = jax.jit(jax.grad(lambda w: jnp.sum(conv2d(x, w, (1, 1), ((1, 1), (1, 1))) ** 2)))
    hlo = grad.lower(w).compile().as_text()
    assert "convolution(" not in hlo
    assert "dot(" in hlo or "__ynn_fusion" in hlo or "dot_general" in hlo


def test_second_order_reverse_mode_works():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (3, 3, 2, 2), jnp.float64)
        pads = ((1, 1), (1, 1))

        def loss(conv, w):
            return jnp.sum(jnp.tanh(conv(x, w)) ** 2)

        ours = jax.grad(lambda w: jnp.sum(jax.grad(lambda v: loss(
            lambda a, b: conv2d(a, b, (1, 1), pads), v))(w) ** 2))(w)
        theirs = jax.grad(lambda w: jnp.sum(jax.grad(lambda v: loss(
            lambda a, b: lax.conv_general_dilated(a, b, (1, 1), pads, dimension_numbers=DN),
            v))(w) ** 2))(w)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_gradients_inside_a_scan_equal_those_outside():
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
    pads = ((0, 1), (0, 1))
    grad = jax.grad(lambda w: jnp.sum(conv2d(x, w, (2, 2), pads) ** 2))
    outside = jax.jit(grad)(w)
    inside, _ = jax.jit(lambda w: lax.scan(lambda c, _: (grad(c), None), w, None, length=1))(w)
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-5)
