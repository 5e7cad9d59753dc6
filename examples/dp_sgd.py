"""Differentially private training (DP-SGD) on digits: clip each example's gradient, add noise.

DP-SGD (Abadi et al., 2016) bounds how much any one training example can move the model: each
example's gradient is clipped to L2 norm C, and Gaussian noise of standard deviation sigma * C
is added to their sum. `jdnn.privacy.dp.make_dp_train_step` does both in one compiled step; by
default it clips by ghost clipping (per-example norms without per-example gradients), at about
the cost of a plain step plus the noise draw. This script trains the same MLP without privacy
and with DP-SGD at a few noise multipliers sigma, and prints each one's test accuracy. (The
privacy budget epsilon follows from sigma, the sampling rate and the number of steps through
a privacy accountant, e.g. the `dp_accounting` package; it is not computed here.)

Run: `python examples/dp_sgd.py [--epochs 30] [--noise 1 2 4]`.
"""

import argparse

import jax
import numpy as np
import optax

import jdnn
from jdnn.privacy.dp import make_dp_train_step

SEED = 0
EPOCHS = 30
BATCH_SIZE = 128
LEARNING_RATE = 0.5  # plain SGD: DP-SGD's noise favors large batches and simple optimizers
L2_NORM_CLIP = 1.0
NOISE_MULTIPLIERS = (1.0, 2.0, 4.0)
LOSS = jdnn.losses.softmax_cross_entropy


def build_model() -> jdnn.Layer:
    # No BatchNorm: batch statistics would mix examples that DP-SGD keeps apart.
    return jdnn.serial(jdnn.Dense(64, w_init="he_normal"), jdnn.Relu(), jdnn.Dense(10))


def train(step, x, y, epochs: int, seed: int = SEED) -> jdnn.TrainState:
    """Runs `step` over `epochs` shuffled epochs; the last batch is padded and masked."""
    optimizer = optax.sgd(LEARNING_RATE)
    state = jdnn.TrainState.create(build_model(), optimizer, jax.random.key(seed),
                                   (BATCH_SIZE, x.shape[1]))
    rng = np.random.default_rng(seed)
    n = len(x)
    batches = -(-n // BATCH_SIZE)
    for _ in range(epochs):
        order = np.concatenate([rng.permutation(n), np.zeros(batches * BATCH_SIZE - n, int)])
        valid = np.arange(batches * BATCH_SIZE) < n
        for b in range(batches):
            idx = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            state, _ = step(state, x[idx], y[idx], valid[b * BATCH_SIZE:(b + 1) * BATCH_SIZE])
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--noise", type=float, nargs="+", default=NOISE_MULTIPLIERS,
                        help="noise multipliers sigma to try")
    parser.add_argument("--method", choices=("ghost", "vmap"), default="ghost",
                        help="how per-example gradients are clipped")
    args = parser.parse_args()

    (x_train, y_train), (x_test, y_test) = jdnn.data.digits()
    model, optimizer = build_model(), optax.sgd(LEARNING_RATE)
    evaluate = jdnn.make_eval_step(model, LOSS, metrics=("accuracy",))
    print(f"{len(x_train)} training digits, batch {BATCH_SIZE}, {args.epochs} epochs, SGD "
          f"{LEARNING_RATE}, clip C = {L2_NORM_CLIP}, {args.method} clipping")

    runs = [("non-private", jdnn.make_train_step(model, LOSS, optimizer))]
    runs += [(f"DP-SGD sigma = {sigma:g}",
              make_dp_train_step(model, LOSS, optimizer, l2_norm_clip=L2_NORM_CLIP,
                                 noise_multiplier=sigma, method=args.method))
             for sigma in (0.0, *args.noise)]
    for name, step in runs:
        state = train(step, x_train, y_train, args.epochs)
        accuracy = float(evaluate(state, x_test, y_test)["accuracy"])
        note = "  (clipping only, no noise)" if name.endswith("= 0") else ""
        print(f"{name:<22} test accuracy {accuracy:6.1%}{note}")


if __name__ == "__main__":
    main()
