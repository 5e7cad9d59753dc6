"""Data-parallel training with `jdnn.parallel`: each batch split across 8 devices.

The train state and the data are replicated on every device; inside the compiled epoch each
batch is sharded along the mesh's "data" axis, so every device runs the step on its eighth of
the batch, and XLA adds the all-reduces that make gradients and batch-norm statistics those of
the whole batch. The same training then runs on one device, and the two are compared: they
agree up to the order of float32 additions.

With fewer than 8 devices (a laptop), the script simulates 8 CPU devices: that checks
correctness, not speed (they share the same cores). Run: `python examples/data_parallel.py`.
"""

import jax

DEVICES = 8
# Must happen before JAX starts its backends: gives the CPU platform 8 (simulated) devices.
# Accelerators are untouched; with 8 or more of them, those are used instead.
jax.config.update("jax_num_cpu_devices", DEVICES)

import numpy as np  # noqa: E402
import optax  # noqa: E402

import jdnn  # noqa: E402
from jdnn import parallel  # noqa: E402
from jdnn.train.fit import epoch_orders, make_epoch  # noqa: E402
from jdnn.train.step import train_step_fn  # noqa: E402

SEED = 0
BATCH_SIZE = 128          # over all devices: 16 examples per device per step
EPOCHS = 10
LEARNING_RATE = 1e-3

# 1. The devices and the mesh: one axis, "data", along which every batch is split.
devices = jax.devices()
if len(devices) < DEVICES:
    devices = jax.devices("cpu")
devices = devices[:DEVICES]
mesh = parallel.data_mesh(devices)
print(f"mesh: {dict(mesh.shape)} over {devices[0].platform} devices")

# 2. Data and model: digits, an MLP with batch norm and dropout (both must behave as on one
# device: global batch statistics, the same dropout masks).
(x_train, y_train), (x_test, y_test) = jdnn.data.digits()
model = jdnn.serial(
    jdnn.Dense(128, use_bias=False), jdnn.BatchNorm(), jdnn.Relu(), jdnn.Dropout(0.2),
    jdnn.Dense(10),
)
loss = jdnn.losses.softmax_cross_entropy
optimizer = optax.adam(LEARNING_RATE)
step = train_step_fn(model, loss, optimizer, metrics=("accuracy",))
n = len(x_train)


def initial_state():
    return jdnn.TrainState.create(model, optimizer, jax.random.key(SEED), (BATCH_SIZE, 64))


# 3. Data parallel: a replicated state, replicated data, the batch sharded inside the epoch.
epoch = parallel.make_parallel_epoch(step, BATCH_SIZE, mesh)
train_state = parallel.replicate(initial_state(), mesh)
x, y = parallel.put_data((x_train, y_train), mesh)
parallel_losses = []
for _ in range(EPOCHS):
    order = epoch_orders(train_state, n)            # the epoch's shuffle, from key and step
    train_state, means = epoch(train_state, x, y, order)   # donates the old state
    parallel_losses.append(float(means["loss"]))
    print(f"{len(devices)} devices, epoch {len(parallel_losses):2d}: loss {means['loss']:.4f}  "
          f"accuracy {means['accuracy']:.1%}")

# 4. The same run on one device, from the same key: the same permutations and dropout masks.
one_epoch = make_epoch(step, BATCH_SIZE)
one_state = jax.device_put(initial_state(), devices[0])
x_one, y_one = jax.device_put((x_train, y_train), devices[0])
single_losses = []
for _ in range(EPOCHS):
    one_state, means = one_epoch(one_state, x_one, y_one, epoch_orders(one_state, n))
    single_losses.append(float(means["loss"]))

# 5. Compare, then evaluate the data-parallel model on the held-out digits.
differences = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                           (train_state.params, train_state.state),
                           (one_state.params, one_state.state))
largest = max(jax.tree.leaves(differences))
print(f"final training loss: {parallel_losses[-1]:.6f} on {len(devices)} devices, "
      f"{single_losses[-1]:.6f} on one")
print(f"largest difference in any parameter or batch-norm statistic: {largest:.2e}")
test = jdnn.evaluate(model, train_state, (x_test, y_test), loss=loss)
print(f"test accuracy (data parallel): {test['accuracy']:.1%}")
assert np.allclose(parallel_losses, single_losses, rtol=1e-4), (parallel_losses, single_losses)
assert largest < 1e-3, largest
print("data-parallel training matches one device")
