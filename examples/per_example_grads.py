"""Which training examples pull hardest on the model? Per-example gradient norms on digits.

Train a small MLP on scikit-learn's 8x8 digits, then take the gradient of every training
example's own loss (`jdnn.per_example_grads`: `vmap(grad)`, each example a batch of one) and
rank the examples by its norm. Large norms mark what the model still gets wrong or finds
atypical: mislabeled-looking, ambiguous or badly drawn digits. The same norms come from ghost
clipping (`jdnn.ghost_clipped_grad`) without forming any per-example gradient; the script
checks they agree. Run: `python examples/per_example_grads.py [--epochs 10] [--top 5]`.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdnn
from jdnn.privacy.ghost import ghost_clipped_grad
from jdnn.privacy.per_example import per_example_grads

SEED = 0
EPOCHS = 10
BATCH_SIZE = 64
CHUNK = 256  # examples per compiled per-example-gradient call
TOP = 5
LOSS = jdnn.losses.softmax_cross_entropy


def train(epochs: int):
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits()
    model = jdnn.serial(jdnn.Dense(64, w_init="he_normal"), jdnn.Relu(), jdnn.Dense(10))
    train_state, history = jdnn.fit(model, (x_train, y_train), loss=LOSS,
                                    optimizer=optax.adam(1e-3), epochs=epochs,
                                    batch_size=BATCH_SIZE, key=jax.random.key(SEED),
                                    validation_data=(x_test, y_test), progress=False)
    print(f"trained {epochs} epochs: test accuracy {history['val_accuracy'][-1]:.1%}")
    return model, train_state, x_train, y_train


def gradient_norms(model, train_state, x, y):
    """Every example's gradient norm, loss and prediction, CHUNK examples per compiled call (the
    last chunk padded and masked, so one compilation serves all)."""

    @jax.jit
    def chunk(xb, yb, mask):
        grads, aux = per_example_grads(model, LOSS, train_state.params, train_state.state, xb,
                                       yb, train=False, mask=mask, return_aux=True)
        norms = jax.vmap(optax.tree.norm)(grads)
        _, ghost_norms = ghost_clipped_grad(model, LOSS, train_state.params, train_state.state,
                                            xb, yb, l2_norm_clip=1.0, train=False, mask=mask)
        return norms, ghost_norms, aux.loss, jnp.argmax(aux.outputs, axis=-1)

    n = len(x)
    pad = -n % CHUNK
    xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    yp = np.concatenate([y, np.zeros(pad, y.dtype)])
    valid = np.arange(n + pad) < n
    parts = [chunk(xp[i:i + CHUNK], yp[i:i + CHUNK], valid[i:i + CHUNK])
             for i in range(0, n + pad, CHUNK)]
    return [np.concatenate(column)[:n] for column in zip(*parts)]


def ascii_digit(image: np.ndarray) -> str:
    shades = " .:-=+*#%@"
    rows = image.reshape(8, 8)
    return "\n".join("    " + "".join(shades[min(int(v * 9.99), 9)] * 2 for v in row)
                     for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--top", type=int, default=TOP)
    args = parser.parse_args()

    model, train_state, x, y = train(args.epochs)
    norms, ghost_norms, losses, predicted = gradient_norms(model, train_state, x, y)
    agreement = np.max(np.abs(norms - ghost_norms) / np.maximum(norms, 1e-12))
    print(f"per-example gradient norms of {len(x)} training examples: median "
          f"{np.median(norms):.3g}, max {norms.max():.3g}; ghost norms agree to {agreement:.1e}")
    wrong = predicted != y
    print(f"{wrong.sum()} training examples misclassified; mean norm {norms[wrong].mean():.3g} "
          f"for those vs {norms[~wrong].mean():.3g} for the rest")

    print(f"\nthe {args.top} examples with the largest gradient norms:")
    for rank, i in enumerate(np.argsort(-norms)[:args.top], 1):
        print(f"#{rank}: example {i}, label {y[i]}, predicted {predicted[i]}, "
              f"loss {losses[i]:.3f}, gradient norm {norms[i]:.3f}")
        print(ascii_digit(x[i]))


if __name__ == "__main__":
    main()
