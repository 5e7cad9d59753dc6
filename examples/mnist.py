"""The classic MNIST CNN, on the 28x28 MNIST files in a local directory.

conv 32 -> pool -> conv 64 -> pool -> dense 128 -> 10 logits (ReLU, He init, dropout before the
last layer), trained with Adam by `jdnn.fit`. The data are read with `jdnn.data.load_mnist`;
this script never downloads anything. Fetch the four files once with
`python -c "import jdnn; jdnn.data.download_mnist('~/data/mnist')"`, then run:
`python examples/mnist.py --data-dir ~/data/mnist [--epochs N] [--subset N] [--seed N]`.
A missing file ends it with exit status 2 and a message saying how to get it.
"""

import argparse
import sys

import jax
import optax

import jdnn

DATA_DIR = "~/data/mnist"
SEED = 0
EPOCHS = 3
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
DROPOUT = 0.5                # before the last layer
VALIDATION_FRACTION = 0.1    # the last tenth of the training images, held out


def build_model() -> jdnn.Layer:
    """28x28x1 -> conv32-relu-pool (14x14) -> conv64-relu-pool (7x7) -> dense128-relu -> 10."""
    he = "he_normal"
    return jdnn.serial(
        jdnn.Conv2D(32, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Conv2D(64, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Flatten(), jdnn.Dense(128, w_init=he), jdnn.Relu(), jdnn.Dropout(DROPOUT),
        jdnn.Dense(10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help="the directory holding the four MNIST IDX files (.gz or raw)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--subset", type=int, default=None,
                        help="train on the first N training images only")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    # 1. Data: (N, 28, 28, 1) float32 in [0, 1], int32 labels. Nothing is downloaded here.
    try:
        (x_train, y_train), (x_test, y_test) = jdnn.data.load_mnist(args.data_dir)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    if args.subset is not None:
        x_train, y_train = x_train[: args.subset], y_train[: args.subset]
    n_val = int(len(x_train) * VALIDATION_FRACTION)
    x_fit, y_fit = x_train[: len(x_train) - n_val], y_train[: len(x_train) - n_val]
    validation = (x_train[len(x_train) - n_val :], y_train[len(x_train) - n_val :])
    print(f"train {x_fit.shape}, validation {validation[0].shape}, test {x_test.shape}")

    # 2. Train.
    model = build_model()
    print(f"model: {model.spec}")
    loss = jdnn.losses.softmax_cross_entropy
    train_state, history = jdnn.fit(
        model, (x_fit, y_fit), loss=loss, optimizer=optax.adam(LEARNING_RATE),
        epochs=args.epochs, batch_size=BATCH_SIZE, key=jax.random.key(args.seed),
        validation_data=validation if n_val else None)
    for record in history.records:
        line = (f"epoch {record['epoch']:2d}: loss {record['loss']:.4f}  "
                f"accuracy {record['accuracy']:.4f}")
        if "val_accuracy" in record:
            line += (f"  val_loss {record['val_loss']:.4f}  "
                     f"val_accuracy {record['val_accuracy']:.4f}")
        print(f"{line}  ({record['seconds']:.1f} s)")

    # 3. Test, once.
    test = jdnn.evaluate(model, train_state, (x_test, y_test), loss=loss)
    print(f"test loss: {test['loss']:.4f}")
    print(f"test accuracy: {test['accuracy']:.4f}")


if __name__ == "__main__":
    main()
