"""What did a digits CNN learn? Attributions for test images, and the input each class wants.

Trains a small CNN on the 8x8 digits briefly (`jdnn.fit`), then, with `jdnn.explain`:
1. attributes each of a few test images' true class to its pixels four ways (saliency,
   integrated gradients, SmoothGrad, occlusion) and checks integrated gradients' completeness
   (the attributions add up to logit(x) - logit(black image));
2. finds, by regularized gradient ascent, the image that most excites each class's logit, and
   each channel of the second convolution (`3_conv2d`) at the centre, and asks the model what
   it sees in the class images (a briefly trained model may read one or two as another digit:
   3 epochs read the 8 as a 4, 4 epochs read all ten as their own).
Writes `attributions.png`, `classes.png` and `units.png` to `--out`.
Run: `python examples/explain_digits.py [--epochs N] [--seed N] [--out DIR]` (default
`figures/explain`).
"""

import argparse
import pathlib

import jax
import numpy as np
import optax

import jdnn
from jdnn import explain, viz

SEED = 0
EPOCHS = 10
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
EXAMPLES = 6          # test images explained
IG_STEPS = 64         # integrated gradients' points along the path
SMOOTHGRAD_NOISE = 0.15
ASCENT_STEPS = 256    # activation maximization
OUT = "figures/explain"


def build_model() -> jdnn.Layer:
    """conv16-relu-pool-conv32-relu-pool-flatten-dense10."""
    he = "he_normal"
    return jdnn.serial(
        jdnn.Conv2D(16, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Conv2D(32, 3, w_init=he), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Flatten(), jdnn.Dense(10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    args = parser.parse_args()
    out = pathlib.Path(args.out)

    # 1. Train: (N, 8, 8, 1) images in [0, 1].
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(layout="nhwc", seed=args.seed)
    model = build_model()
    loss = jdnn.losses.softmax_cross_entropy
    train_state, _ = jdnn.fit(model, (x_train, y_train), loss=loss,
                              optimizer=optax.adam(LEARNING_RATE), epochs=args.epochs,
                              batch_size=BATCH_SIZE, key=jax.random.key(args.seed))
    accuracy = jdnn.evaluate(model, train_state, (x_test, y_test), loss=loss)["accuracy"]
    print(f"test accuracy: {accuracy:.4f}")
    params, state = train_state.params, train_state.state

    # 2. Attributions of each image's true class (its logit), four ways.
    x, y = x_test[:EXAMPLES], y_test[:EXAMPLES]
    ig, delta = explain.integrated_gradients(model, params, state, x, y, steps=IG_STEPS,
                                             return_delta=True)
    attributions = {
        "saliency": explain.saliency(model, params, state, x, y),
        "integrated gradients": ig,
        "SmoothGrad": explain.smoothgrad(model, params, state, x, y, key=args.seed,
                                         noise=SMOOTHGRAD_NOISE),
        "occlusion 2x2": explain.occlusion(model, params, state, x, y, window=2),
    }
    logits = jdnn.predict(model, train_state, x)
    gap = logits[np.arange(EXAMPLES), y] - jdnn.predict(model, train_state, 0 * x)[
        np.arange(EXAMPLES), y]
    print(f"integrated gradients completeness: largest |sum - (logit(x) - logit(0))| / "
          f"|logit(x) - logit(0)| = {np.max(np.abs(delta) / np.abs(gap)):.4%}")
    captions = [f"{label} (pred {pred})" for label, pred in zip(y, logits.argmax(-1))]
    viz.plot_attributions(x, attributions, labels=captions, path=out / "attributions.png",
                          title="which pixels raise each image's true-class logit")

    # 3. The input each class's logit (and each first-layer channel) responds to most.
    classes = explain.activation_maximization(model, params, state, range(10), shape=(8, 8, 1),
                                              key=args.seed, steps=ASCENT_STEPS,
                                              value_range=(0.0, 1.0))
    probabilities = jax.nn.softmax(jdnn.predict(model, train_state, classes))
    seen = probabilities.argmax(-1)
    own = int((seen == np.arange(10)).sum())
    print(f"maximized classes: the model sees {seen.tolist()} ({own} of 10 as their own "
          f"class), each with probability >= {probabilities.max(-1).min():.3f}")
    viz.plot_maximized_inputs(classes, path=out / "classes.png",
                              title="the input that most excites each class's logit")
    # A layer is named by its path (see jdnn.summary); before its ReLU, so a channel that is
    # off for the starting image still has a gradient to climb. At one position of its 4x4
    # maps, each channel shows the strokes it looks for within its receptive field.
    units = explain.activation_maximization(model, params, state, range(16), shape=(8, 8, 1),
                                            layer="3_conv2d", position=(2, 2), key=args.seed,
                                            steps=ASCENT_STEPS, value_range=(0.0, 1.0))
    viz.plot_maximized_inputs(units, path=out / "units.png",
                              title="3_conv2d at (2, 2): the input each channel wants most")
    for name in ("attributions.png", "classes.png", "units.png"):
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
