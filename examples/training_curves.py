"""Training curves of a digits run: loss and accuracy, train vs validation, the best epoch, the
learning-rate drops of ReduceLROnPlateau and the epoch EarlyStopping ended the run.

Run: `python examples/training_curves.py [--out DIR]` (default `figures/digits`). Writes
`digits_curves.png` and prints the model's summary table.
"""

import argparse
import pathlib

import jax
import optax

import jdnn
from jdnn import viz
from jdnn.summarize import summary

OUT = "figures/digits"
EPOCHS, BATCH_SIZE = 100, 32      # an upper bound: early stopping ends the run
LEARNING_RATE = 3e-3
PATIENCE_LR, PATIENCE_STOP = 2, 6  # epochs without a better val_loss before acting
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args()

    (x, y), (x_test, y_test) = jdnn.data.digits()
    model = jdnn.serial(jdnn.Dense(128, w_init="he_normal"), jdnn.Relu(), jdnn.Dropout(0.2),
                        jdnn.Dense(10))
    print(summary(model, (BATCH_SIZE, *x.shape[1:])))
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=LEARNING_RATE)
    callbacks = [jdnn.ReduceLROnPlateau("val_loss", factor=0.3, patience=PATIENCE_LR),
                 jdnn.EarlyStopping("val_loss", patience=PATIENCE_STOP)]
    _, history = jdnn.fit(model, (x, y), loss=jdnn.losses.softmax_cross_entropy,
                          optimizer=optimizer, epochs=EPOCHS, batch_size=BATCH_SIZE,
                          key=jax.random.key(SEED), validation_data=(x_test, y_test),
                          callbacks=callbacks, progress=False)
    best = history.best("val_loss")
    print(f"{len(history)} epochs; best epoch {best['epoch']}: val_loss {best['val_loss']:.4f}, "
          f"val_accuracy {best['val_accuracy']:.1%}")
    print(history.stop_reason or "ran all epochs")
    path = pathlib.Path(args.out) / "digits_curves.png"
    viz.plot_history(history, path=path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
