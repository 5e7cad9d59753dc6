"""Knowledge distillation on the 8x8 digits: a small student learns from a larger teacher.

The teacher (two wide hidden layers) is trained on the labels; its logits on the training images
are computed once. The student (one narrow hidden layer) is then trained with
`jdnn.losses.Distillation` (Hinton et al. 2015: the teacher's softened probabilities plus the
labels), and, for comparison, the same student from the labels alone, with the same seed and
budget. `fit` takes one target array per example, so the student's targets are the teacher's
logits with the label as a last column (`jdnn.losses.distillation_targets`).
Run: `python examples/distill_digits.py [--epochs N] [--seed N]`.
"""

import argparse

import numpy as np
import optax

import jdnn

SEED = 0
TEACHER_EPOCHS = 30
STUDENT_EPOCHS = 60
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
TEACHER_HIDDEN = (512, 256)
STUDENT_HIDDEN = (16,)
TEMPERATURE = 4.0   # softens both distributions; 2 to 10 is usual
ALPHA = 0.7         # the weight of the teacher's soft targets; 1 - ALPHA goes to the labels


def mlp(hidden: tuple[int, ...]) -> jdnn.Layer:
    """Dense-ReLU blocks (He init), then a 10-way linear head (logits)."""
    layers = []
    for width in hidden:
        layers += [jdnn.Dense(width, w_init="he_normal"), jdnn.Relu()]
    return jdnn.serial(*layers, jdnn.Dense(10))


def accuracy(model: jdnn.Layer, train_state: jdnn.TrainState, x, y) -> float:
    return float(np.mean(jdnn.predict(model, train_state, x).argmax(-1) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"student epochs (default {STUDENT_EPOCHS}); the teacher gets half")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    student_epochs = STUDENT_EPOCHS if args.epochs is None else args.epochs
    teacher_epochs = TEACHER_EPOCHS if args.epochs is None else max(args.epochs // 2, 1)

    # 1. Data: 1,347 train / 450 test images of 64 pixels in [0, 1].
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(seed=args.seed)
    optimizer = optax.adam(LEARNING_RATE)

    # 2. The teacher, trained on the labels; its logits on the training images, once.
    teacher = mlp(TEACHER_HIDDEN)
    teacher_state, _ = jdnn.fit(
        teacher, (x_train, y_train), loss=jdnn.losses.softmax_cross_entropy,
        optimizer=optimizer, epochs=teacher_epochs, batch_size=BATCH_SIZE, key=args.seed,
        progress=False)
    teacher_logits = jdnn.predict(teacher, teacher_state, x_train)

    # 3. The student, distilled: targets (N, 11) = the teacher's 10 logits and the label.
    student = mlp(STUDENT_HIDDEN)
    targets = jdnn.losses.distillation_targets(y_train, teacher_logits)
    distilled, history = jdnn.fit(
        student, (x_train, targets), loss=jdnn.losses.Distillation(TEMPERATURE, ALPHA),
        optimizer=optimizer, epochs=student_epochs, batch_size=BATCH_SIZE, key=args.seed + 1,
        progress=False)
    print(f"distillation loss: first epoch {history['loss'][0]:.3f}, last "
          f"{history['loss'][-1]:.3f}")

    # 4. The same student from the labels alone: same seed, same budget.
    alone, _ = jdnn.fit(
        student, (x_train, y_train), loss=jdnn.losses.softmax_cross_entropy,
        optimizer=optimizer, epochs=student_epochs, batch_size=BATCH_SIZE, key=args.seed + 1,
        progress=False)

    sizes = {name: jdnn.summary(model, (1, 64)).params
             for name, model in (("teacher", teacher), ("student", student))}
    print(f"teacher {sizes['teacher']:,} params, student {sizes['student']:,} params "
          f"({sizes['teacher'] / sizes['student']:.0f}x fewer)")
    print(f"teacher accuracy: {accuracy(teacher, teacher_state, x_test, y_test):.4f}")
    print(f"student (distilled) accuracy: {accuracy(student, distilled, x_test, y_test):.4f}")
    print(f"student (labels only) accuracy: {accuracy(student, alone, x_test, y_test):.4f}")


if __name__ == "__main__":
    main()
