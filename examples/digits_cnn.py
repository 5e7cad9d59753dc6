"""A small CNN on the 8x8 digits as NHWC images: two Conv2D/MaxPool2D stages, then a dense head.

8x8x1 -> conv 32 -> pool -> 4x4x32 -> conv 64 -> pool -> 2x2x64 -> dense 128 -> 10 logits,
He-initialized for ReLU, trained with `jdnn.fit` and Adam on a cosine schedule. `--augment`
shifts each training image by up to one pixel (`jdnn.data.augment.random_shift`), inside the
compiled step; it needs more epochs, so it defaults to 40. Run:
`python examples/digits_cnn.py [--epochs N] [--seed N] [--augment]`.
"""

import argparse

import jax
import numpy as np
import optax

import jdnn
from jdnn.data import augment

SEED = 0
EPOCHS = 30
AUGMENT_EPOCHS = 40
BATCH_SIZE = 32
LEARNING_RATE = 2e-3         # the peak of the cosine schedule, which decays to 0
DROPOUT = 0.3                # before the last layer
MAX_SHIFT = 1                # pixels, for --augment
VALIDATION_FRACTION = 0.15   # of the training split, held out to watch the run


def hold_out(x, y, fraction: float, seed: int):
    """Splits `(x, y)` at random into `(x_fit, y_fit), (x_held, y_held)`."""
    order = np.random.default_rng(seed).permutation(len(x))
    held, kept = order[: int(len(x) * fraction)], order[int(len(x) * fraction) :]
    return (x[kept], y[kept]), (x[held], y[held])


def build_model() -> jdnn.Layer:
    """conv32-relu-pool-conv64-relu-pool-flatten-dense128-relu-dropout-dense10."""
    he = "he_normal"
    return jdnn.serial(
        jdnn.Conv2D(32, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Conv2D(64, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Flatten(), jdnn.Dense(128, w_init=he), jdnn.Relu(), jdnn.Dropout(DROPOUT),
        jdnn.Dense(10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default {EPOCHS}, or {AUGMENT_EPOCHS} with --augment")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--augment", action="store_true",
                        help=f"shift training images by up to {MAX_SHIFT} pixel")
    args = parser.parse_args()
    epochs = args.epochs if args.epochs is not None else (
        AUGMENT_EPOCHS if args.augment else EPOCHS)

    # 1. Data: (N, 8, 8, 1) images in [0, 1]; validation carved from the training split.
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(layout="nhwc", seed=args.seed)
    (x_fit, y_fit), (x_val, y_val) = hold_out(x_train, y_train, VALIDATION_FRACTION, args.seed)
    print(f"train {x_fit.shape}, validation {x_val.shape}, test {x_test.shape}")

    # 2. Model and optimizer.
    model = build_model()
    print(f"model: {model.spec}")
    steps_per_epoch = -(-len(x_fit) // BATCH_SIZE)
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, max(epochs * steps_per_epoch, 1))
    loss = jdnn.losses.softmax_cross_entropy

    # 3. Train; the augmentation (if any) draws its own key from the train state each step.
    train_state, history = jdnn.fit(
        model, (x_fit, y_fit), loss=loss, optimizer=optax.adam(schedule), epochs=epochs,
        batch_size=BATCH_SIZE, key=jax.random.key(args.seed), validation_data=(x_val, y_val),
        augment=augment.random_shift(MAX_SHIFT) if args.augment else None)
    for record in history.records:
        print(f"epoch {record['epoch']:3d}: loss {record['loss']:.4f}  "
              f"accuracy {record['accuracy']:.4f}  val_loss {record['val_loss']:.4f}  "
              f"val_accuracy {record['val_accuracy']:.4f}")
    print(f"training took {sum(history['seconds']):.1f} s (the first epoch includes compiling)")

    # 4. Test, once.
    test = jdnn.evaluate(model, train_state, (x_test, y_test), loss=loss)
    print(f"test loss: {test['loss']:.4f}")
    print(f"test accuracy: {test['accuracy']:.4f}")


if __name__ == "__main__":
    main()
