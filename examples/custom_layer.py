"""A layer of your own, with a learned parameter, made known to all of jdnn; and a loss of your own.

Swish with a learned beta per feature, `y = x * sigmoid(beta * x)`, written with the public API
only: a constructor decorated with `jdnn.register_layer`, a NumPy twin (forward and backward by
hand) given to `jdnn.reference.register_layer`. Then, on the 8x8 digits, everything jdnn offers
its own layers works for it: gradient checks against the twin and finite differences (and a
wrong backward caught), `fit`, `summary` with FLOPs, a diagram, a checkpoint round trip. Last, a
Huber loss written in JAX, trained with and checked, first by finite differences alone, then
against its own NumPy twin too.
Run: `python examples/custom_layer.py [--epochs N] [--out DIR]`.
"""

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdnn
import jdnn.viz  # matplotlib: imported on demand

SEED = 0
EPOCHS = 10
BATCH_SIZE = 64
BOTH = ("reference", "finite_differences")


# --- 1. The layer: a constructor returning jdnn.Layer(init, apply, spec) -------------------------
# The spec's hyper-parameters are the constructor's keyword arguments, as plain Python values, so
# `jdnn.core.rebuild(spec)` (checkpoints, summaries, the reference) can call it again. Its params
# sit in a serial model under "{index}_swish", e.g. params["1_swish"]["beta"].
@jdnn.register_layer(family="activation", flops=jdnn.core.per_output(4))
def Swish(beta_init: float = 1.0) -> jdnn.Layer:
    """`y = x * sigmoid(beta * x)`, one learned `beta` per feature (the last axis)."""

    def init(key, input_shape):
        del key
        return input_shape, {"beta": jnp.full((input_shape[-1],), beta_init, jnp.float32)}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return x * jax.nn.sigmoid(params["beta"] * x), state

    return jdnn.Layer(init, apply, jdnn.make_spec("Swish", beta_init=float(beta_init)))


# --- 2. Its NumPy twin: what jax.grad is checked against ------------------------------------------
def swish_forward(params, x):
    """`s = sigmoid(beta * x)`, `y = x * s`; the cache keeps what the backward needs."""
    s = 1 / (1 + np.exp(-params["beta"] * x))
    return x * s, (params["beta"], x, s)


def swish_backward(params, cache, dy):
    """dy/dx    = s + beta * x * s * (1 - s)
    dy/dbeta = x**2 * s * (1 - s), summed over every axis but the last (beta is per feature)."""
    del params
    beta, x, s = cache
    dx = dy * (s + beta * x * s * (1 - s))
    dbeta = (dy * x**2 * s * (1 - s)).reshape(-1, x.shape[-1]).sum(0)
    return dx, {"beta": dbeta}


jdnn.reference.register_layer("Swish", swish_forward, swish_backward)


# A twin with a bug (dbeta 1% too large), for a kind of its own, to see the check catch it.
@jdnn.register_layer(family="activation", flops=jdnn.core.per_output(4))
def BrokenSwish(beta_init: float = 1.0) -> jdnn.Layer:
    """Swish under another kind name, so it can have another (wrong) twin."""
    swish = Swish(beta_init)
    return jdnn.Layer(swish.init, swish.apply,
                      jdnn.make_spec("BrokenSwish", beta_init=float(beta_init)))


def broken_backward(params, cache, dy):
    dx, grads = swish_backward(params, cache, dy)
    return dx, {"beta": 1.01 * grads["beta"]}


jdnn.reference.register_layer("BrokenSwish", swish_forward, broken_backward)


# --- 3. A loss of one's own: per example, (B, ...) outputs -> (B,) ------------------------------
def huber(outputs, y, delta=1.0):
    """Huber loss per example: quadratic within `delta` of the target, linear beyond."""
    r = outputs - y.reshape(outputs.shape)
    a = jnp.abs(r)
    values = jnp.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))
    return values.reshape(len(r), -1).mean(1)


def huber_twin(outputs, y, delta=1.0):
    """`(loss (B,), dloss/doutputs)`: d/dr = r within delta, delta * sign(r) beyond, over the
    mean's count."""
    r = outputs - y.reshape(outputs.shape)
    small = np.abs(r) <= delta
    values = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grads = np.where(small, r, delta * np.sign(r)) / r[0].size
    return values.reshape(len(r), -1).mean(1), grads


def failing(report) -> list[str]:
    return [p.path for p in report.params if not p.ok]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=None,
                        help="where the diagram and checkpoint go (default: a temporary dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="jdnn_custom_layer_"))
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(seed=SEED)
    model = jdnn.serial(jdnn.Dense(32), Swish(), jdnn.Dense(10))
    loss = jdnn.losses.softmax_cross_entropy
    print(f"model: {model.spec}")

    # Gradients: jax.grad against the hand-written twin and against finite differences.
    _, params, state = model.init(jax.random.key(SEED), x_train[:8].shape)
    params["1_swish"]["beta"] = jnp.linspace(0.5, 1.5, 32)  # not all equal, to test per feature
    report = jdnn.check_gradients(model, params, state, x_train[:8], y_train[:8], loss,
                                  oracles=BOTH)
    print(report)
    assert report.ok, failing(report)

    broken = jdnn.serial(jdnn.Dense(32), BrokenSwish(), jdnn.Dense(10))
    _, bparams, bstate = broken.init(jax.random.key(SEED), x_train[:8].shape)
    bad = jdnn.check_gradients(broken, bparams, bstate, x_train[:8], y_train[:8], loss,
                               oracles=BOTH)
    print(f"\nbroken twin caught: {not bad.ok}, failing parameters: {failing(bad)}")

    # Training: accuracy before and after.
    optimizer = optax.adam(1e-2)
    before = jdnn.TrainState.from_params(params, state, optimizer, SEED)
    print(f"\naccuracy before training: "
          f"{jdnn.evaluate(model, before, (x_test, y_test), loss=loss)['accuracy']:.4f}")
    train_state, history = jdnn.fit(model, (x_train, y_train), loss=loss, optimizer=optimizer,
                                    epochs=args.epochs, batch_size=BATCH_SIZE, key=SEED,
                                    validation_data=(x_test, y_test), progress=False)
    for record in history.records:
        print(f"epoch {record['epoch']:3d}: loss {record['loss']:.4f}  "
              f"val_accuracy {record['val_accuracy']:.4f}")
    print(f"test accuracy: {history.records[-1]['val_accuracy']:.4f}")
    beta = np.asarray(train_state.params["1_swish"]["beta"])
    print(f"learned beta: min {beta.min():.3f}, mean {beta.mean():.3f}, max {beta.max():.3f}")

    # The summary and the diagram read the spec and the declared traits.
    print()
    print(jdnn.summary(model, (1, 64)))
    png = out / "custom_layer.png"
    jdnn.viz.draw_network(model, input_shape=(1, 64), path=png)
    print(f"diagram: {png}")

    # A checkpoint round trip: the spec (with Swish in it) is saved and checked on restore.
    ckpt_path = jdnn.checkpoint.save(out / "swish.safetensors", train_state, model=model)
    restored = jdnn.checkpoint.restore(ckpt_path, model).train_state(optimizer)
    same = np.array_equal(jdnn.predict(model, train_state, x_test),
                          jdnn.predict(model, restored, x_test))
    print(f"checkpoint: {ckpt_path.name}, predictions equal after restore: {same}")
    assert same

    # A custom loss: regress each digit's mean pixel, targets (B, 1) like the outputs.
    regressor = jdnn.serial(jdnn.Dense(32), Swish(), jdnn.Dense(1))
    t_train, t_test = x_train.mean(1, keepdims=True), x_test.mean(1, keepdims=True)
    reg_state, reg_history = jdnn.fit(regressor, (x_train, t_train), loss=huber,
                                      optimizer=optax.adam(1e-2), epochs=args.epochs,
                                      batch_size=BATCH_SIZE, key=SEED,
                                      validation_data=(x_test, t_test), progress=False)
    print(f"\nhuber regression: loss {reg_history.records[0]['loss']:.5f} -> "
          f"{reg_history.records[-1]['loss']:.5f}, val_loss "
          f"{reg_history.records[-1]['val_loss']:.5f}")
    _, rparams, rstate = regressor.init(jax.random.key(SEED), x_train[:8].shape)
    fd_only = jdnn.check_gradients(regressor, rparams, rstate, x_train[:8], t_train[:8], huber,
                                   oracles=("finite_differences",))
    print(f"huber, finite differences only: ok {fd_only.ok}")
    assert fd_only.ok, failing(fd_only)
    jdnn.reference.register_loss(huber, huber_twin)
    both = jdnn.check_gradients(regressor, rparams, rstate, x_train[:8], t_train[:8], huber,
                                oracles=BOTH)
    print(both)
    assert both.ok, failing(both)


if __name__ == "__main__":
    main()
