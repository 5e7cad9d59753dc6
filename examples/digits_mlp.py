"""An MLP on the 8x8 digits with `jdnn.fit`: Adam, a cosine schedule, dropout, a validation split.

`jdnn.fit` runs each epoch as one compiled program and returns the train state and a History,
one record per epoch. The validation set is carved from the training split, so the test set is
looked at once, at the end. Run: `python examples/digits_mlp.py [--epochs N] [--seed N]`.
"""

import argparse

import jax
import numpy as np
import optax

import jdnn

SEED = 0
EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 1e-3         # the peak of the cosine schedule, which decays to 0
HIDDEN = (512, 256)
DROPOUT = 0.3                # the fraction of units dropped in training
VALIDATION_FRACTION = 0.15   # of the training split, held out to watch the run


def hold_out(x, y, fraction: float, seed: int):
    """Splits `(x, y)` at random into `(x_fit, y_fit), (x_held, y_held)`."""
    order = np.random.default_rng(seed).permutation(len(x))
    held, kept = order[: int(len(x) * fraction)], order[int(len(x) * fraction) :]
    return (x[kept], y[kept]), (x[held], y[held])


def build_model() -> jdnn.Layer:
    """Dense-ReLU-Dropout blocks (He init for ReLU), then a 10-way linear head (logits)."""
    layers = []
    for width in HIDDEN:
        layers += [jdnn.Dense(width, w_init="he_normal"), jdnn.Relu(), jdnn.Dropout(DROPOUT)]
    return jdnn.serial(*layers, jdnn.Dense(10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    # 1. Data: 1,347 train / 450 test images of 64 pixels in [0, 1]; validation from train.
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(seed=args.seed)
    (x_fit, y_fit), (x_val, y_val) = hold_out(x_train, y_train, VALIDATION_FRACTION, args.seed)
    print(f"train {len(x_fit)}, validation {len(x_val)}, test {len(x_test)} images")

    # 2. Model and optimizer: the schedule counts steps, so it needs the steps per epoch.
    model = build_model()
    print(f"model: {model.spec}")
    steps_per_epoch = -(-len(x_fit) // BATCH_SIZE)
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, max(args.epochs * steps_per_epoch, 1))
    loss = jdnn.losses.softmax_cross_entropy

    # 3. Train: the key initializes the model and draws the shuffles and dropout masks.
    train_state, history = jdnn.fit(
        model, (x_fit, y_fit), loss=loss, optimizer=optax.adam(schedule), epochs=args.epochs,
        batch_size=BATCH_SIZE, key=jax.random.key(args.seed), validation_data=(x_val, y_val))
    for record in history.records:
        print(f"epoch {record['epoch']:3d}: loss {record['loss']:.4f}  "
              f"accuracy {record['accuracy']:.4f}  val_loss {record['val_loss']:.4f}  "
              f"val_accuracy {record['val_accuracy']:.4f}  ({record['seconds']:.2f} s)")

    # 4. Test, once: evaluation mode switches dropout off.
    test = jdnn.evaluate(model, train_state, (x_test, y_test), loss=loss)
    print(f"test loss: {test['loss']:.4f}")
    print(f"test accuracy: {test['accuracy']:.4f}")
    predicted = jdnn.predict(model, train_state, x_test[:10]).argmax(-1)
    print(f"predicted: {predicted.tolist()}")
    print(f"true:      {y_test[:10].tolist()}")


if __name__ == "__main__":
    main()
