"""Ensembles: members equal independent jdnn.fit runs; the ensemble's prediction and scores."""

import functools
import json

import chex
import jax
import numpy as np
import optax
import pytest

import jdnn
from jdnn.multi.ensemble import (EnsembleHistory, combined_logits, combined_prediction,
                                 default_combine, ensemble_keys, evaluate_ensemble, fit_ensemble,
                                 init_members, member, predict_ensemble)

CE = jdnn.losses.softmax_cross_entropy
SIZE, EPOCHS = 3, 2


def _blobs(n, seed, d=6, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    centers = np.random.default_rng(99).normal(size=(classes, d)) * 2
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


MODEL = jdnn.serial(jdnn.Dense(16), jdnn.Relu(), jdnn.Dropout(0.25), jdnn.Dense(3))
TRAIN, TEST = _blobs(70, 0), _blobs(40, 1)
OPTIONS = dict(loss=CE, epochs=EPOCHS, batch_size=16, validation_data=TEST, progress=False)


def test_ensemble_members_fit_independently_and_combine(tmp_path):
    # One training serves every check: it is the expensive part, and a module fixture would be
    # recomputed by every pytest-xdist worker that runs a user of it.
    # NumPy ints are ints: size, key, epochs, batch_size, epochs_per_call
    trained = fit_ensemble(MODEL, TRAIN, size=np.int64(SIZE), optimizer=optax.adam(1e-2),
                           key=np.int64(7), epochs_per_call=np.int32(10),
                           **{**OPTIONS, "epochs": np.int64(EPOCHS), "batch_size": np.int64(16)})
    _check_member_i_equals_an_independent_fit_with_key_i(trained)
    _check_members_are_independent(trained)
    _check_ensemble_scores_and_prediction_combine_the_members(trained)
    _check_history_round_trips_through_json(trained, tmp_path)


def _check_member_i_equals_an_independent_fit_with_key_i(trained):
    states, history = trained
    assert jax.tree.leaves(states.params)[0].shape[0] == SIZE
    i = 1
    single, single_history = jdnn.fit(MODEL, TRAIN, optimizer=optax.adam(1e-2),
                                      key=ensemble_keys(7, SIZE)[i], **OPTIONS)
    mine = member(states, i)
    chex.assert_trees_all_close(mine.params, single.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(mine.opt_state, single.opt_state, rtol=1e-5, atol=1e-6)
    assert np.array_equal(jax.random.key_data(mine.key), jax.random.key_data(single.key))
    assert int(mine.step) == int(single.step) == EPOCHS * 5
    for a, b in zip(history.members[i].records, single_history.records):
        assert list(a) == list(b)  # same keys, same order
        np.testing.assert_allclose([a[k] for k in a if k != "seconds"],
                                   [b[k] for k in b if k != "seconds"], rtol=1e-5)


def _check_members_are_independent(trained):
    states, _ = trained
    w = np.asarray(states.params["0_dense"]["w"])
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])
    keys = jax.random.key_data(states.key)
    assert len({tuple(k) for k in np.asarray(keys)}) == SIZE


def _check_ensemble_scores_and_prediction_combine_the_members(trained):
    states, history = trained
    report = evaluate_ensemble(MODEL, states, TEST, loss=CE)
    assert len(report["members"]) == SIZE
    last = history.ensemble.records[-1]
    assert last["epoch"] == EPOCHS
    np.testing.assert_allclose(report["ensemble"]["loss"], last["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(report["ensemble"]["accuracy"], last["val_accuracy"])
    np.testing.assert_allclose([m["accuracy"] for m in report["members"]],
                               history["val_accuracy"][-1], rtol=1e-6)
    assert history["val_accuracy"].shape == (EPOCHS, SIZE) and len(history) == EPOCHS
    probs = predict_ensemble(MODEL, states, TEST[0])
    logits = np.stack([jdnn.predict(MODEL, member(states, i), TEST[0]) for i in range(SIZE)])
    np.testing.assert_allclose(probs, jax.nn.softmax(logits, -1).mean(0), rtol=1e-5, atol=1e-7)
    accuracy = np.mean(probs.argmax(-1) == TEST[1])
    np.testing.assert_allclose(report["ensemble"]["accuracy"], accuracy, rtol=1e-6)
    nll = -np.mean(np.log(probs[np.arange(len(probs)), TEST[1]]))
    np.testing.assert_allclose(report["ensemble"]["loss"], nll, rtol=1e-5)


def _check_history_round_trips_through_json(trained, tmp_path):
    _, history = trained
    history.to_json(tmp_path / "h.json")
    data = json.loads((tmp_path / "h.json").read_text())
    assert data == history.to_dict() and len(data["members"]) == SIZE
    assert isinstance(history, EnsembleHistory)


@pytest.mark.parametrize("combine", ["softmax", "sigmoid", "mean"])
def test_combined_logits_are_the_loss_space_image_of_the_mean_prediction(combine):
    back = {"softmax": lambda z: jax.nn.softmax(z, -1), "sigmoid": jax.nn.sigmoid,
            "mean": lambda z: z}[combine]

    @jax.jit  # one compilation instead of one per eager op
    def check(outputs):
        logits, mean = combined_logits(outputs, combine), combined_prediction(outputs, combine)
        return back(logits), mean, back(outputs).mean(0), combined_logits(outputs * 1e4, combine)

    outputs = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32) * 3
    recovered, mean, expected, extreme = check(outputs)
    np.testing.assert_allclose(recovered, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    assert np.all(np.isfinite(extreme))


def test_default_combine_follows_the_loss():
    assert default_combine(CE) == "softmax"
    assert default_combine(functools.partial(CE, label_smoothing=0.1)) == "softmax"
    assert default_combine(jdnn.losses.binary_cross_entropy) == "sigmoid"
    assert default_combine(jdnn.losses.mse) == "mean"


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="fit_ensemble: size must be a positive int, got 0"):
        fit_ensemble(MODEL, TRAIN, size=0, optimizer=optax.adam(1e-2), key=0, **OPTIONS)
    with pytest.raises(ValueError, match="combine must be one of"):
        fit_ensemble(MODEL, TRAIN, size=2, optimizer=optax.adam(1e-2), key=0, combine="vote",
                     **OPTIONS)
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        fit_ensemble(MODEL, TRAIN, size=2, optimizer=optax.adam(1e-2), key=0,
                     **{**OPTIONS, "epochs": -1})
    for name, value, expected in (("size", np.int64(0), "a positive int"),
                                  ("size", True, "a positive int"),
                                  ("size", 2.0, "a positive int"),
                                  ("batch_size", 0, "a positive int"),
                                  ("batch_size", np.float64(16), "a positive int"),
                                  ("epochs", 1.5, "an int >= 0"),
                                  ("epochs_per_call", 0, "a positive int")):
        with pytest.raises(ValueError, match=f"fit_ensemble: {name} must be {expected}, got"):
            fit_ensemble(MODEL, TRAIN, optimizer=optax.adam(1e-2), key=0,
                         **{**OPTIONS, "size": 2, name: value})
    with pytest.raises(TypeError, match=r"fit_ensemble: key must be one key .* got an array of "
                                        r"keys of shape \(2,\)"):
        fit_ensemble(MODEL, TRAIN, size=2, optimizer=optax.adam(1e-2),
                     key=jax.random.split(jax.random.key(0), 2), **OPTIONS)
    with pytest.raises(TypeError, match=r"fit_ensemble: loss must be a per-example loss "
                                        r"function, got the string 'softmax_cross_entropy'"):
        fit_ensemble(MODEL, TRAIN, size=2, optimizer=optax.adam(1e-2), key=0,
                     **{**OPTIONS, "loss": "softmax_cross_entropy"})
    with pytest.raises(TypeError, match=r"fit_ensemble: optimizer must be an optax "
                                        r"GradientTransformation, got the function adam"):
        fit_ensemble(MODEL, TRAIN, size=2, optimizer=optax.adam, key=0, **OPTIONS)
    with pytest.raises(ValueError, match="ensemble_keys: size must be a positive int, got -1"):
        ensemble_keys(0, -1)
    assert ensemble_keys(np.int64(0), np.int64(2)).shape == (2,)


def _counting(model, calls):
    def apply(params, state, x, *, key=None, train=False):
        calls.append(x.shape)
        return model.apply(params, state, x, key=key, train=train)

    return jdnn.Layer(model.init, apply, model.spec)


def _with(a, index, value):
    a = np.array(a)
    a[index] = value
    return a


def test_bad_labels_and_nan_inputs_are_refused_before_anything_compiles():
    calls = []
    model = _counting(MODEL, calls)
    (x, y), (xv, yv) = TRAIN, TEST
    cases = [
        ((x, _with(y, 4, -1)), TEST,
         r"fit_ensemble: train_data: y has 1 negative class label\(s\); the first is y\[4\] = -1"),
        ((x, _with(y, 4, 3)), TEST,
         r"fit_ensemble: train_data: y has class labels up to 3 but the model outputs 3 classes"),
        ((_with(x, (2, 1), np.nan), y), TEST,
         r"fit_ensemble: train_data: x has 1 non-finite value\(s\) \(NaN or inf\); the first "
         r"is x\[2, 1\]"),
        ((x, y), (xv, _with(yv, 0, -2)), r"fit_ensemble: validation_data: y has 1 negative"),
        ((x, y), (_with(xv, (0, 0), np.nan), yv), r"fit_ensemble: validation_data: x has 1 "
                                                  r"non-finite"),
    ]
    for data, validation, match in cases:
        with pytest.raises(ValueError, match=match):
            fit_ensemble(model, data, size=2, optimizer=optax.adam(1e-2), key=0,
                         **{**OPTIONS, "validation_data": validation})
    assert calls == []  # nothing traced, let alone compiled


def test_predict_and_evaluate_ensemble_name_bad_arguments():
    states = init_members(MODEL, optax.adam(1e-2), ensemble_keys(0, 2), (16, 6))
    with pytest.raises(ValueError, match=r"predict_ensemble: train_state must be the stacked "
                                         r"TrainState .* step has shape \(\)"):
        predict_ensemble(MODEL, member(states, 0), TEST[0])
    with pytest.raises(ValueError, match=r"predict_ensemble: batch_size must be a positive int"):
        predict_ensemble(MODEL, states, TEST[0], batch_size=0)
    with pytest.raises(ValueError, match=r"predict_ensemble: combine must be one of"):
        predict_ensemble(MODEL, states, TEST[0], combine="vote")
    with pytest.raises(ValueError, match=r"predict_ensemble: x must be an array of real numbers"):
        predict_ensemble(MODEL, states, np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"predict_ensemble: x of shape \(6,\) does not fit the "
                                         r"model"):
        predict_ensemble(MODEL, states, TEST[0][0])
    with pytest.raises(ValueError, match=r"evaluate_ensemble: data: y has 1 negative class"):
        evaluate_ensemble(MODEL, states, (TEST[0], _with(TEST[1], 0, -1)), loss=CE)
    with pytest.raises(ValueError, match=r"evaluate_ensemble: train_state must be the stacked"):
        evaluate_ensemble(MODEL, member(states, 1), TEST, loss=CE)
    with pytest.raises(ValueError, match=r"evaluate_ensemble: batch_size must be a positive int"):
        evaluate_ensemble(MODEL, states, TEST, loss=CE, batch_size=np.int64(-1))
