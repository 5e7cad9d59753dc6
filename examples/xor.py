"""XOR with the 2-3-2-1 sigmoid network of the DNN tutorials, trained with jdnn.

XOR is the smallest problem a single layer cannot solve: the hidden layers have to bend the
plane. Run: `python examples/xor.py [--relu] [--steps N]`.
"""

import argparse

import jax
import jax.numpy as jnp
import optax

import jdnn

SEED = 0
STEPS = 500
# Momentum SGD: on this tiny sigmoid net Adam often stalls in the local minimum where three of
# the four points are right; momentum carries SGD through it (30 seeds out of 30 in our tests).
SIGMOID_OPTIMIZER = {"learning_rate": 0.5, "momentum": 0.9}
RELU_OPTIMIZER = {"learning_rate": 0.1, "momentum": 0.9}

# The four points and their labels: 1 when exactly one input is 1.
X = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
Y = jnp.array([0.0, 1.0, 1.0, 0.0])


def build_model(relu: bool) -> jdnn.Layer:
    """2-3-2-1 with sigmoid hidden units (the tutorial's net) or a ReLU variant; emits a logit."""
    if relu:
        return jdnn.serial(jdnn.Dense(8, w_init="he_normal"), jdnn.Relu(),
                           jdnn.Dense(8, w_init="he_normal"), jdnn.Relu(), jdnn.Dense(1))
    return jdnn.serial(jdnn.Dense(3), jdnn.Sigmoid(), jdnn.Dense(2), jdnn.Sigmoid(), jdnn.Dense(1))


def train(relu: bool = False, steps: int = STEPS, seed: int = SEED):
    """Trains on the four XOR points (full batch); returns the final state and metrics."""
    model = build_model(relu)
    optimizer = optax.sgd(**(RELU_OPTIMIZER if relu else SIGMOID_OPTIMIZER))
    train_state = jdnn.TrainState.create(model, optimizer, jax.random.key(seed), X.shape)
    step = jdnn.make_train_step(model, jdnn.losses.binary_cross_entropy, optimizer,
                                metrics=("accuracy",))
    for _ in range(steps):
        train_state, metrics = step(train_state, X, Y)
    return model, train_state, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relu", action="store_true", help="train the ReLU variant")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()

    model, train_state, metrics = train(args.relu, args.steps)
    print(f"model: {model.spec}")
    print(f"after {int(train_state.step)} steps: loss {float(metrics['loss']):.4f}, "
          f"accuracy {float(metrics['accuracy']):.0%}")

    logits, _ = model.apply(train_state.params, train_state.state, X)
    for point, probability in zip(X.tolist(), jax.nn.sigmoid(logits[:, 0]).tolist()):
        print(f"  xor{tuple(int(v) for v in point)} -> {probability:.3f}")


if __name__ == "__main__":
    main()
