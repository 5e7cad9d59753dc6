"""Vanishing gradients, measured: a deep sigmoid MLP next to a ReLU + batch-norm MLP of the same
depth, trained alike on the digits, with the GradientFlow callback recording every layer's
gradient norm.

In the sigmoid net each layer multiplies the backward signal by sigmoid' <= 1/4 (times the
weights), so the gradient reaching the first layers is orders of magnitude smaller than at the
output and they barely learn. ReLU passes gradients through unchanged where it is active and
batch norm keeps every layer's scale in check, so the norms stay level across depth.

Run: `python examples/vanishing_gradients.py [--out DIR] [--epochs N]` (default
`figures/vanishing_gradients`). Writes `vanishing_gradients.png` (both runs' gradient flow, one
row each) into DIR.
"""

import argparse
import pathlib

import jax
import optax

import jdnn
from jdnn import viz

OUT = "figures/vanishing_gradients"
DEPTH, WIDTH = 8, 32        # hidden layers, units each
EPOCHS, BATCH_SIZE = 20, 32
OPTIMIZER = optax.sgd(0.02, momentum=0.9)  # plain momentum SGD: Adam would rescale the gradients
PROBE = 256                 # training examples the gradient flow is measured on
SEED = 0
DPI = 80                    # keeps the PNG small enough for a README


def sigmoid_mlp() -> jdnn.Layer:
    hidden = [layer for _ in range(DEPTH) for layer in (jdnn.Dense(WIDTH), jdnn.Sigmoid())]
    return jdnn.serial(*hidden, jdnn.Dense(10))


def relu_bn_mlp() -> jdnn.Layer:
    hidden = [layer for _ in range(DEPTH)
              for layer in (jdnn.Dense(WIDTH, w_init="he_normal"), jdnn.BatchNorm(), jdnn.Relu())]
    return jdnn.serial(*hidden, jdnn.Dense(10))


def train(model, data, epochs):
    (x, y), (x_test, y_test) = data
    flow = viz.GradientFlow(x[:PROBE], y[:PROBE], jdnn.losses.softmax_cross_entropy)
    train_state, history = jdnn.fit(
        model, (x, y), loss=jdnn.losses.softmax_cross_entropy, optimizer=OPTIMIZER,
        epochs=epochs, batch_size=BATCH_SIZE, key=jax.random.key(SEED),
        validation_data=(x_test, y_test), callbacks=[flow], progress=False,
        # The short last batch is dropped, not padded: padding repeats one example, and those
        # copies would enter batch norm's batch statistics (the loss masks them, batch norm not).
        drop_remainder=True)
    return flow, history


def ratio(record) -> float:
    """First layer's gradient norm over the last layer's."""
    norms = list(record["grad_norms"].values())
    return norms[0] / norms[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    data = jdnn.data.digits()

    flows = {}
    for name, build in ((f"sigmoid, {DEPTH} hidden layers", sigmoid_mlp),
                        (f"ReLU + batch norm, {DEPTH} hidden layers", relu_bn_mlp)):
        flow, history = train(build(), data, args.epochs)
        flows[name] = flow
        first, last = flow.records[0], flow.records[-1]
        print(f"{name}:")
        print(f"  first/last layer gradient norm: {ratio(first):.2e} at epoch 0, "
              f"{ratio(last):.2e} at epoch {last['epoch']}")
        print(f"  test accuracy after {len(history)} epochs: "
              f"{history.records[-1]['val_accuracy']:.1%}")
        if last["saturated"]:
            print(f"  saturated sigmoid units (mean over layers): "
                  f"{sum(last['saturated'].values()) / len(last['saturated']):.1%}")
        if last["dead_relu"]:
            print(f"  dead ReLU units (mean over layers): "
                  f"{sum(last['dead_relu'].values()) / len(last['dead_relu']):.1%}")
    viz.plot_gradient_flow(flows, path=out / "vanishing_gradients.png", dpi=DPI)
    print(f"wrote {out / 'vanishing_gradients.png'}")


if __name__ == "__main__":
    main()
