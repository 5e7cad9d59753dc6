"""Validate jdnn's gradients against hand-written NumPy backprop and finite differences.

A CNN with batch norm and dropout, checked in training mode in float64: `jax.grad`, the NumPy
reference (`jdnn.reference`, forward and backward written out per layer) and central finite
differences must agree. Then a deliberately wrong gradient, to see what a failure looks like.
Run: `python examples/gradcheck.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jdnn

SEED = 0
BATCH = 4

# A model with every moving part: convolution, batch norm, pooling, dropout, a penalty.
model = jdnn.serial(
    jdnn.Conv2D(4, 3), jdnn.BatchNorm(), jdnn.Relu(), jdnn.MaxPool2D(2),
    jdnn.Flatten(), jdnn.Dropout(0.3), jdnn.Dense(10),
)
rng = np.random.default_rng(SEED)
x = rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 10, size=BATCH)
_, params, state = model.init(jax.random.key(SEED), x.shape)

report = jdnn.check_gradients(model, params, state, x, y, jdnn.losses.softmax_cross_entropy,
                              key=jax.random.key(1), train=True,
                              penalty=jdnn.regularizers.penalty(l2=1e-3))
print(report)
assert report.ok

# A bug: a tanh whose backward is 10% too large. The check fails and names the parameters
# upstream of it, whose gradients flow through the wrong derivative.
@jax.custom_vjp
def wrong_tanh(v):
    return jnp.tanh(v)


wrong_tanh.defvjp(lambda v: (jnp.tanh(v), v), lambda v, g: (1.1 * g * (1 - jnp.tanh(v) ** 2),))
tanh = jdnn.Tanh()
buggy = jdnn.Layer(tanh.init, lambda p, s, v, *, key=None, train=False: (wrong_tanh(v), s),
                   tanh.spec)
mlp = jdnn.serial(jdnn.Dense(8), buggy, jdnn.Dense(3))
x2 = rng.normal(size=(BATCH, 5)).astype(np.float32)
_, params2, state2 = mlp.init(jax.random.key(SEED), x2.shape)
bad = jdnn.check_gradients(mlp, params2, state2, x2, y % 3, jdnn.losses.softmax_cross_entropy)
print()
print(bad)
print("failing parameters:", [p.path for p in bad.params if not p.ok])
