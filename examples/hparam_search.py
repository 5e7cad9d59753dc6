"""Hyper-parameter search on the 8x8 digits: every configuration of a structure trains at once.

The learning rate, the L2 strength, the dropout rate and the seed are vectorized: the trials
that share a hidden width train as members of one stacked state, in one compiled program, each
stopping early on its own. The width is structural: one program per width. Run:
`python examples/hparam_search.py [--strategy grid|random] [--trials N] [--epochs N]`.
"""

import argparse
import time

import numpy as np

import jdnn
from jdnn.multi.tuning import search

SEED = 0
EPOCHS = 30
BATCH_SIZE = 32
PATIENCE = 5
VALIDATION_FRACTION = 0.2   # of the training split; the test set is looked at once, at the end
GRID = {"width": [64, 128], "learning_rate": [3e-4, 1e-3, 3e-3], "l2": [0.0, 1e-4],
        "dropout": [0.0, 0.3]}
RANDOM = {"width": [64, 128], "learning_rate": ("log_uniform", 1e-4, 1e-2),
          "l2": ("log_uniform", 1e-6, 1e-3), "dropout": ("uniform", 0.0, 0.5), "seed": [0, 1, 2]}


def model_fn(width: int) -> jdnn.Layer:
    """The searched network: the width is structural; the dropout rate lives in the layer's
    state (`rate_in_state=True`), where the search sets it per trial."""
    return jdnn.serial(jdnn.Dense(width, w_init="he_normal"), jdnn.Relu(),
                       jdnn.Dropout(0.0, rate_in_state=True), jdnn.Dense(10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=("grid", "random"), default="random")
    parser.add_argument("--trials", type=int, default=16, help="random search only")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--json", help="also write the results table to this JSON file")
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    held = int(len(x_train) * VALIDATION_FRACTION)
    fit_data = (x_train[order[held:]], y_train[order[held:]])
    validation = (x_train[order[:held]], y_train[order[:held]])
    loss = jdnn.losses.softmax_cross_entropy

    began = time.perf_counter()
    result = search(
        model_fn, fit_data, GRID if args.strategy == "grid" else RANDOM,
        strategy=args.strategy, trials=args.trials if args.strategy == "random" else None,
        loss=loss, epochs=args.epochs, batch_size=BATCH_SIZE, key=args.seed,
        validation_data=validation, metric="val_accuracy", mode="max", optimizer="adam",
        patience=PATIENCE)
    print(f"{len(result.rows)} trials in {time.perf_counter() - began:.1f} s\n")
    print(result)
    if args.json:
        result.to_json(args.json)

    test = jdnn.evaluate(result.best_model, result.best_train_state, (x_test, y_test),
                         loss=loss)
    print(f"\nbest configuration: {result.best_config}")
    print(f"its test accuracy: {test['accuracy']:.4f} (loss {test['loss']:.4f})")


if __name__ == "__main__":
    main()
