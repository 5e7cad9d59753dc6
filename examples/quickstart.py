"""jdnn in one page: build a network, initialize it, train it with a compiled step, predict.

The data are scikit-learn's bundled 8x8 handwritten digits (real data, no download). Run:
`python examples/quickstart.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import jdnn

SEED = 0
BATCH_SIZE = 64
EPOCHS = 15
LEARNING_RATE = 1e-3

# 1. Data: 1,797 images of 64 pixels in [0, 16] and their labels 0-9; hold out a quarter.
digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
order = np.random.default_rng(SEED).permutation(len(x))
test, train = order[: len(x) // 4], order[len(x) // 4 :]
x_train, y_train = jnp.asarray(x[train]), jnp.asarray(y[train])
x_test, y_test = jnp.asarray(x[test]), jnp.asarray(y[test])

# 2. Model: layers are pure functions; `serial` threads the shapes, so no input sizes needed.
model = jdnn.serial(
    jdnn.Dense(128, w_init="he_normal"), jdnn.Relu(), jdnn.Dropout(0.2),
    jdnn.Dense(10),
)
print(model.spec)

# 3. State: params, layer state, optimizer state, random key and step in one pytree.
optimizer = optax.adam(LEARNING_RATE)
train_state = jdnn.TrainState.create(model, optimizer, jax.random.key(SEED), (BATCH_SIZE, 64))

# 4. Steps: the whole update (forward, loss, grad, optax) is one compiled, donated function.
loss = jdnn.losses.softmax_cross_entropy
step = jdnn.make_train_step(model, loss, optimizer, penalty=jdnn.regularizers.penalty(l2=1e-5),
                            metrics=("accuracy",))
evaluate = jdnn.make_eval_step(model, loss, metrics=("accuracy",))

# The last batch of an epoch is padded and masked, so the step compiles exactly once.
n_batches = -(-len(x_train) // BATCH_SIZE)
for epoch in range(EPOCHS):
    perm = jax.random.permutation(jax.random.key(epoch), len(x_train))
    perm = jnp.concatenate([perm, jnp.zeros(n_batches * BATCH_SIZE - len(perm), perm.dtype)])
    valid = jnp.arange(n_batches * BATCH_SIZE) < len(x_train)
    batch_losses = []
    for b in range(n_batches):
        idx = perm[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
        mask = valid[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
        train_state, metrics = step(train_state, x_train[idx], y_train[idx], mask)
        batch_losses.append(metrics["loss"])  # stays on the device: no sync per step
    test_metrics = evaluate(train_state, x_test, y_test)
    print(f"epoch {epoch + 1:2d}: train loss {float(jnp.mean(jnp.stack(batch_losses))):.3f}  "
          f"test loss {float(test_metrics['loss']):.3f}  "
          f"test accuracy {float(test_metrics['accuracy']):.1%}")

# 5. Predict: apply the trained params in eval mode (dropout off).
logits, _ = model.apply(train_state.params, train_state.state, x_test[:8])
print("predicted:", jnp.argmax(logits, axis=-1).tolist())
print("true:     ", y_test[:8].tolist())
