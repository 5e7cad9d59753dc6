"""Transfer learning: pretrain a CNN on digits 0-4, then fine-tune only a new head on 5-9.

The steps: train a CNN (a conv body and a 5-way head) on the digits 0-4 and save it with
`jdnn.checkpoint.save`; build the same body with a fresh head for the digits 5-9 (labels
remapped to 0-4); load the body's params and batch-norm statistics with
`jdnn.checkpoint.restore_matching`; freeze the body with `jdnn.freeze` (no updates) and
`fit(..., frozen_state=...)` (no running-statistics updates); train the head on a small budget
of labelled examples. For comparison the same architecture is trained from scratch, all layers,
on the same examples for the same number of epochs.

What to expect on these 8x8 digits: fine-tuning does NOT win. Over seeds 0-4 (20 images per
digit, 20 epochs) the fine-tuned head reached 0.933-0.978 test accuracy (mean 0.958) and the
same network trained from scratch 0.960-0.973 (mean 0.965). The images are so simple that a
small CNN trained from scratch on a hundred of them already reaches ~96%, and features learned
on 0-4 are no more useful for 5-9 than the ones a fresh network learns (a frozen *random* body
did about as well in our trials); transfer pays off on harder data. What fine-tuning does buy
here: it trains 6% of the parameters. Run:
`python examples/transfer_learning.py [--epochs N] [--pretrain-epochs N] [--per-class N]
[--seed N]`.
"""

import argparse
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdnn

SEED = 0
PRETRAIN_EPOCHS = 15
EPOCHS = 20                  # fine-tuning (and from-scratch) epochs
PER_CLASS = 20               # labelled examples of each digit 5-9: the small budget
BATCH_SIZE = 32
SMALL_BATCH_SIZE = 16        # for the small budget
LEARNING_RATE = 1e-3         # pretraining and training from scratch (Adam)
HEAD_LEARNING_RATE = 1e-2    # a lone linear head on fixed features learns well at a higher rate
BODY = "0_serial"            # the body's path in `serial(body, head)`
INPUT_SHAPE = (SMALL_BATCH_SIZE, 8, 8, 1)


def build_model() -> jdnn.Layer:
    """`serial(body, head)`: the body's params live under `0_serial`, the head's under `1_dense`.

    Body: conv32-bn-relu-pool-conv64-bn-relu-pool-flatten (8x8x1 -> 256 features); head: 5 logits.
    """
    he = "he_normal"
    body = jdnn.serial(
        jdnn.Conv2D(32, 3, w_init=he), jdnn.BatchNorm(), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Conv2D(64, 3, w_init=he), jdnn.BatchNorm(), jdnn.Relu(), jdnn.MaxPool2D(2),
        jdnn.Flatten(),
    )
    return jdnn.serial(body, jdnn.Dense(5))


def count(tree) -> int:
    """The number of scalars in a tree of arrays."""
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    loss = jdnn.losses.softmax_cross_entropy

    # 1. Data: the source task is digits 0-4; the target task is digits 5-9, labels shifted to
    #    0-4, with only `per_class` training images of each.
    (x_train, y_train), (x_test, y_test) = jdnn.data.digits(layout="nhwc", seed=args.seed)
    source, source_test = y_train < 5, y_test < 5
    rng = np.random.default_rng(args.seed)
    budget = np.concatenate([rng.choice(np.flatnonzero(y_train == digit), args.per_class,
                                        replace=False) for digit in range(5, 10)])
    target_train = (x_train[budget], y_train[budget] - 5)
    target_test = (x_test[~source_test], y_test[~source_test] - 5)
    print(f"source: {source.sum()} training images of 0-4; target: {len(budget)} training "
          f"images of 5-9 ({args.per_class} per digit), {len(target_test[0])} test images")

    # 2. Pretrain on 0-4 and save.
    model = build_model()
    pretrained, _ = jdnn.fit(
        model, (x_train[source], y_train[source]), loss=loss,
        optimizer=optax.adam(LEARNING_RATE), epochs=args.pretrain_epochs,
        batch_size=BATCH_SIZE, key=jax.random.key(args.seed), progress=False)
    accuracy = jdnn.evaluate(model, pretrained, (x_test[source_test], y_test[source_test]),
                             loss=loss)["accuracy"]
    print(f"pretrained on 0-4: test accuracy on 0-4 {accuracy:.4f}")
    with tempfile.TemporaryDirectory() as directory:
        path = jdnn.checkpoint.save(pathlib.Path(directory) / "digits04.safetensors",
                                    pretrained, model)

        # 3. The same body with a fresh head. The old head has the same shape (5 classes), so
        #    restore_matching would load it too: hand it the body's subtrees only.
        _, fresh_params, fresh_state = model.init(jax.random.key(args.seed + 1), INPUT_SHAPE)
        body_params, body_state, report = jdnn.checkpoint.restore_matching(
            path, {BODY: fresh_params[BODY]}, state={BODY: fresh_state[BODY]})
    print(f"restore_matching:\n{report}")
    params = {**fresh_params, **body_params}
    state = {**fresh_state, **body_state}

    # 4. Freeze the body: its params get no updates, its batch-norm statistics stay as loaded
    #    (in training mode batch norm still normalizes each batch with the batch's statistics).
    optimizer = jdnn.freeze(optax.adam(HEAD_LEARNING_RATE), params, [BODY])
    start = jdnn.TrainState.create(model, optimizer, jax.random.key(args.seed), INPUT_SHAPE)
    start = start._replace(params=params, state=state, opt_state=optimizer.init(params))
    body_before = jax.tree.map(jnp.copy, (params[BODY], state[BODY]))  # fit donates `start`
    finetuned, _ = jdnn.fit(model, target_train, loss=loss, optimizer=optimizer,
                            epochs=args.epochs, batch_size=SMALL_BATCH_SIZE,
                            key=jax.random.key(args.seed), train_state=start,
                            frozen_state=[BODY], progress=False)
    unchanged = jax.tree.all(jax.tree.map(
        jnp.array_equal, body_before, (finetuned.params[BODY], finetuned.state[BODY])))
    print(f"body unchanged by fine-tuning: {unchanged}")

    # 5. The same architecture from scratch, all layers trained, on the same small budget.
    scratch, _ = jdnn.fit(model, target_train, loss=loss, optimizer=optax.adam(LEARNING_RATE),
                          epochs=args.epochs, batch_size=SMALL_BATCH_SIZE,
                          key=jax.random.key(args.seed + 2), progress=False)

    # 6. Both on the held-out images of 5-9.
    head_size = count(params) - count(params[BODY])
    finetuned_accuracy = jdnn.evaluate(model, finetuned, target_test, loss=loss)["accuracy"]
    scratch_accuracy = jdnn.evaluate(model, scratch, target_test, loss=loss)["accuracy"]
    print(f"\ndigits 5-9 from {len(budget)} labelled images, {args.epochs} epochs:")
    print(f"fine-tuned accuracy: {finetuned_accuracy:.4f}   "
          f"(head only: {head_size} of {count(params)} parameters trained)")
    print(f"from-scratch accuracy: {scratch_accuracy:.4f}   "
          f"(all {count(params)} parameters trained)")


if __name__ == "__main__":
    main()
