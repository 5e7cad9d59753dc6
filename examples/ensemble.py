"""A deep ensemble of 16 MLPs on the 8x8 digits, trained together in one compiled program.

`fit_ensemble` initializes 16 members from 16 keys and trains them with the very epoch
`jdnn.fit` runs, vmapped: each member has its own initialization, data order and dropout masks.
The ensemble predicts with the mean of the members' softmax probabilities, which is usually
more accurate (and better calibrated) than any single member. Member i is exactly
`jdnn.fit(..., key=ensemble_keys(SEED, MEMBERS)[i])`. Run:
`python examples/ensemble.py [--epochs N] [--members K] [--seed N]`.
"""

import argparse
import time

import optax

import jdnn
from jdnn.multi.ensemble import evaluate_ensemble, fit_ensemble, predict_ensemble

SEED = 0
MEMBERS = 16
EPOCHS = 20
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
HIDDEN = 128
DROPOUT = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    # 1. Data: 1,347 train / 450 test images of 64 pixels in [0, 1].
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(seed=args.seed)
    model = jdnn.serial(jdnn.Dense(HIDDEN, w_init="he_normal"), jdnn.Relu(),
                        jdnn.Dropout(DROPOUT), jdnn.Dense(10))
    loss = jdnn.losses.softmax_cross_entropy

    # 2. Train every member at once; the test set serves as validation data here, so the
    #    history shows each member's and the ensemble's test accuracy per epoch.
    began = time.perf_counter()
    states, history = fit_ensemble(
        model, (x_train, y_train), size=args.members, loss=loss,
        optimizer=optax.adam(LEARNING_RATE), epochs=args.epochs, batch_size=BATCH_SIZE,
        key=args.seed, validation_data=(x_test, y_test))
    print(f"{args.members} members x {args.epochs} epochs in {time.perf_counter() - began:.1f} s")
    for record in history.ensemble.records[:: max(1, args.epochs // 5)]:
        members = history["val_accuracy"][record["epoch"] - 1]
        print(f"epoch {record['epoch']:3d}: ensemble accuracy {record['val_accuracy']:.4f}, "
              f"members {members.mean():.4f} on average (best {members.max():.4f})")

    # 3. Test: each member alone, then the ensemble (the mean of their probabilities).
    report = evaluate_ensemble(model, states, (x_test, y_test), loss=loss)
    for i, scores in enumerate(report["members"]):
        print(f"member {i:2d}: test accuracy {scores['accuracy']:.4f}  loss {scores['loss']:.4f}")
    accuracies = [m["accuracy"] for m in report["members"]]
    ensemble = report["ensemble"]
    print(f"members:  test accuracy {sum(accuracies) / len(accuracies):.4f} on average, "
          f"best {max(accuracies):.4f}")
    print(f"ensemble: test accuracy {ensemble['accuracy']:.4f}  loss {ensemble['loss']:.4f}")
    probabilities = predict_ensemble(model, states, x_test[:10])
    print(f"predicted: {probabilities.argmax(-1).tolist()}")
    print(f"true:      {y_test[:10].tolist()}")


if __name__ == "__main__":
    main()
