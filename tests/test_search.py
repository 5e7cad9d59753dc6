"""Hyper-parameter search: vectorized members equal to jdnn.fit, early stopping by
masking, one program per structure, the sorted results table."""

import collections
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from tests.blobs import blobs
from jdnn.multi.tuning import SearchResult, _set_dropout, search

CE = jdnn.losses.softmax_cross_entropy
EPOCHS = 3


TRAIN, TEST = blobs(70, 0), blobs(40, 1)
SPACE = {"width": [4, 8], "learning_rate": ("log_uniform", 1e-2, 1e-1),
         "momentum": ("uniform", 0.0, 0.9), "l2": [0.0, 1e-3], "dropout": ("uniform", 0.0, 0.5),
         "seed": [0, 1, 2]}
TRACES = collections.Counter()


def counting_model_fn(width):
    """The searched model; counts how often each structure's `apply` is traced."""
    inner = jdnn.serial(jdnn.Dense(width), jdnn.Relu(), jdnn.Dropout(0.0, rate_in_state=True),
                        jdnn.Dense(3))

    def apply(params, state, x, *, key=None, train=False):
        TRACES[width] += 1
        return inner.apply(params, state, x, key=key, train=train)

    return jdnn.Layer(inner.init, apply, inner.spec)


def _search():
    TRACES.clear()
    # NumPy ints are ints everywhere (patience=EPOCHS cannot stop a trial within EPOCHS).
    return search(counting_model_fn, TRAIN, SPACE, strategy="random", trials=np.int64(3),
                  loss=CE, epochs=np.int64(EPOCHS), batch_size=np.int64(16), key=np.int64(3),
                  validation_data=TEST, optimizer="sgd", restore_best=False, progress=False,
                  patience=np.int64(EPOCHS), epochs_per_call=np.int32(10))


def test_search_trains_like_fit_compiles_once_per_structure_and_ranks(tmp_path):
    # One search serves the three checks: it is the expensive part (two compilations), and a
    # module fixture would be recomputed by every pytest-xdist worker that runs a user of it.
    result = _search()
    _check_a_vectorized_member_equals_a_sequential_fit(result)
    _check_one_program_per_structure()
    _check_rows_are_sorted_and_the_best_config_is_the_argmax(result, tmp_path)


def _check_a_vectorized_member_equals_a_sequential_fit(result):
    groups = collections.Counter(row["width"] for row in result.rows)
    assert sorted(groups.values()) == [1, 2]  # a member trained alongside another
    row = next(r for r in result.rows if groups[r["width"]] == 2)
    t = row["trial"]
    config = {name: row[name] for name in SPACE}
    model = jdnn.serial(jdnn.Dense(config["width"]), jdnn.Relu(),
                        jdnn.Dropout(config["dropout"]), jdnn.Dense(3))
    state, history = jdnn.fit(
        model, TRAIN, loss=CE, epochs=EPOCHS, batch_size=16, validation_data=TEST,
        optimizer=optax.sgd(config["learning_rate"], momentum=config["momentum"]),
        penalty=jdnn.regularizers.penalty(l2=config["l2"]),
        key=jax.random.fold_in(jax.random.key(3), config["seed"]), progress=False)
    for a, b in zip(result.history[t].records, history.records):
        np.testing.assert_allclose([a[k] for k in b if k != "seconds"],
                                   [b[k] for k in b if k != "seconds"], rtol=1e-5)
    chex.assert_trees_all_close(jax.tree.leaves(result.train_state(t).params),
                                jax.tree.leaves(state.params), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.tree.leaves(result.train_state(t).opt_state.inner_state),
                                jax.tree.leaves(state.opt_state), rtol=1e-5, atol=1e-6)


def _check_one_program_per_structure():
    assert set(TRACES) == {4, 8}
    # the structure with two trials traced its program as often as the one with one trial
    assert TRACES[4] == TRACES[8] >= 1


def _check_rows_are_sorted_and_the_best_config_is_the_argmax(result, tmp_path):
    values = [row["val_accuracy"] for row in result.rows]
    assert values == sorted(values, reverse=True)
    assert [row["rank"] for row in result.rows] == [1, 2, 3]
    best = max(result.rows, key=lambda r: (r["val_accuracy"], -r["trial"]))
    assert result.best_config == {name: best[name] for name in SPACE}
    assert all(row["epochs"] == row["epoch"] == EPOCHS for row in result.rows)
    for row in result.rows:  # each member trained with its own dropout rate, in its state
        rate = result.train_state(row["trial"]).state["2_dropout"]["rate"]
        assert float(rate) == pytest.approx(row["dropout"], rel=1e-6)
    assert result.best_model.spec.children[0]["features"] == result.best_config["width"]
    text = str(result)
    assert "val_accuracy" in text and "learning_rate" in text and len(text.splitlines()) == 7
    result.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["best_config"] == result.best_config and len(data["rows"]) == 3


def test_every_rate_in_state_dropout_gets_each_members_rate():
    inner = jdnn.serial(jdnn.Dense(4), jdnn.Dropout(0.2, rate_in_state=True))
    model = jdnn.serial(jdnn.Dense(4), jdnn.Dropout(0.1, rate_in_state=True),
                        jdnn.residual(inner), jdnn.Dropout(0.5))
    keys = jax.random.split(jax.random.key(0), 3)
    stacked = jax.vmap(lambda k: model.init(k, (2, 3))[2])(keys)
    rates = jnp.asarray([0.0, 0.25, 0.4])
    state = _set_dropout(model, stacked, rates)
    np.testing.assert_array_equal(state["1_dropout"]["rate"], rates.astype(jnp.float32))
    np.testing.assert_array_equal(state["2_residual"]["0_serial"]["1_dropout"]["rate"],
                                  rates.astype(jnp.float32))
    assert state["3_dropout"] == {}  # a fixed-rate Dropout has no rate to set


def test_bad_searches_are_clear_errors():
    options = dict(loss=CE, epochs=1, batch_size=16, key=0, progress=False)
    with pytest.raises(ValueError, match="strategy must be .*did you mean 'random'"):
        search(counting_model_fn, TRAIN, {"width": [4]}, strategy="randon", **options)
    with pytest.raises(ValueError, match="trials is for strategy='random' or 'bayes'"):
        search(counting_model_fn, TRAIN, {"width": [4]}, trials=3, **options)
    with pytest.raises(ValueError, match="mode must be"):
        search(counting_model_fn, TRAIN, {"width": [4]}, mode="best", **options)
    with pytest.raises(ValueError, match="val_\\* metrics need validation_data"):
        search(counting_model_fn, TRAIN, {"width": [4]}, **options)
    with pytest.raises(ValueError, match="learning_rate must be a float > 0"):
        search(counting_model_fn, TRAIN, {"width": [4], "learning_rate": [0.0]},
               metric="loss", mode="min", **options)
    with pytest.raises(ValueError, match=r"no Dropout layer with its rate in the state .*: "
                                         r"build them as jdnn.Dropout\(rate, "
                                         r"rate_in_state=True\)"):
        search(lambda: jdnn.serial(jdnn.Dense(3)), TRAIN, {"dropout": [0.1]}, metric="loss",
               mode="min", **options)
    with pytest.raises(ValueError, match=r"its Dropout layers at 1_dropout have a fixed rate"):
        search(lambda: jdnn.serial(jdnn.Dense(3), jdnn.Dropout(0.5)), TRAIN, {"dropout": [0.1]},
               metric="loss", mode="min", **options)


def test_optimizers_take_their_hyper_parameters_from_their_state():
    from jdnn.multi.tuning import _optimizer

    params = {"w": jnp.ones(3)}
    adam = _optimizer("adam", 0.1, 0.5).init(params).hyperparams
    assert set(adam) >= {"learning_rate", "b1"} and float(adam["b1"]) == 0.5
    sgd = _optimizer(optax.sgd, 0.1, 0.9).init(params).hyperparams
    assert float(sgd["momentum"]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="optax optimizer's name"):
        _optimizer("adamm", 0.1, None)
    with pytest.raises(ValueError, match="neither momentum nor b1"):
        _optimizer("adagrad", 0.1, 0.9)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        search(counting_model_fn, TRAIN, {"width": [4], "batch_size": [0]}, loss=CE, epochs=1,
               batch_size=16, key=0, metric="loss", mode="min", progress=False)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, all before anything is traced or compiled.

QUICK = dict(loss=CE, epochs=1, batch_size=16, key=0, metric="loss", mode="min", progress=False)


def _counting(model, tag):
    """`model`, counting in TRACES how often its `apply` is traced (under `tag`)."""
    def apply(params, state, x, *, key=None, train=False):
        TRACES[tag] += 1
        return model.apply(params, state, x, key=key, train=train)

    return jdnn.Layer(model.init, apply, model.spec)


def test_space_names_are_checked_against_the_model_fns_parameters():
    def model_fn(width, activation="relu"):
        return jdnn.serial(jdnn.Dense(width), jdnn.Relu(), jdnn.Dense(3))

    with pytest.raises(TypeError, match=(
            r"search: the space names \['depth'\], which model_fn \(.*model_fn\) does not take"
            r"\. model_fn \(.*\) takes the keyword arguments \['width', 'activation'\]; jdnn "
            r"handles "
            r"\['learning_rate', 'momentum', 'l1', 'l2', 'dropout', 'seed', 'optimizer', "
            r"'batch_size'\] itself, and passes every other space name to model_fn")):
        search(model_fn, TRAIN, {"width": [4], "depth": [2], "learning_rate": [0.1]}, **QUICK)
    with pytest.raises(TypeError, match=r"model_fn \(.*\) requires \['width'\], which the "
                                        r"space does not give \(a fixed value works"):
        search(model_fn, TRAIN, {"learning_rate": [0.1]}, **QUICK)

    def needs_seed(width, seed):
        return model_fn(width)

    with pytest.raises(TypeError, match=r"requires \['seed'\], which jdnn handles itself and "
                                        r"never passes to model_fn"):
        search(needs_seed, TRAIN, {"width": [4], "seed": [0, 1]}, **QUICK)

    def positional(width, /):
        return model_fn(width)

    with pytest.raises(TypeError, match=r"parameters \['width'\] are positional-only, but the "
                                        r"search passes keyword arguments"):
        search(positional, TRAIN, {"width": [4]}, **QUICK)
    with pytest.raises(TypeError, match=r"search: model_fn must be a function that builds the "
                                        r"model .* got Layer"):
        search(model_fn(4), TRAIN, {"learning_rate": [0.1]}, **QUICK)
    with pytest.raises(TypeError, match=r"search: model_fn\(width=4\) returned tuple, not a "
                                        r"jdnn Layer"):
        search(lambda width: (model_fn(width),), TRAIN, {"width": [4]}, **QUICK)

    # **kwargs takes any name: the search gets past the signature, as far as the labels.
    def flexible(**kwargs):
        return model_fn(kwargs["width"])

    with pytest.raises(ValueError, match="the model outputs 3 classes"):
        search(flexible, (TRAIN[0], np.full_like(TRAIN[1], 3)), {"width": [4], "depth": [2]},
               **QUICK)


def _with(a, index, value):
    a = np.array(a)
    a[index] = value
    return a


def test_bad_labels_and_nan_inputs_are_refused_before_anything_compiles():
    (x, y), (xv, yv) = TRAIN, TEST
    TRACES.clear()
    cases = [
        ((x, _with(y, 4, -1)), None,
         r"search \(structure \{'width': 4\}\): train_data: y has 1 negative class label\(s\); "
         r"the first is y\[4\] = -1"),
        ((x, _with(y, 4, 3)), None,
         r"train_data: y has class labels up to 3 but the model outputs 3 classes"),
        ((_with(x, (2, 1), np.nan), y), None,
         r"train_data: x has 1 non-finite value\(s\) \(NaN or inf\); the first is x\[2, 1\]"),
        ((x, y), (xv, _with(yv, 0, 7)),
         r"validation_data: y has class labels up to 7 but the model outputs 3 classes"),
        ((x, y), (_with(xv, (0, 0), np.inf), yv), r"validation_data: x has 1 non-finite"),
    ]
    for data, validation, match in cases:
        with pytest.raises(ValueError, match=match):
            search(counting_model_fn, data, {"width": [4, 8]}, validation_data=validation,
                   **QUICK)
    assert not TRACES

    # Every structure's model is checked before the first one trains: here the second has
    # too few classes for the labels.
    def model_fn(classes):
        return _counting(jdnn.serial(jdnn.Dense(4), jdnn.Dense(classes)), classes)

    with pytest.raises(ValueError, match=r"search \(structure \{'classes': 3\}\): train_data: "
                                         r"y has class labels up to 3 but the model outputs 3"):
        search(model_fn, (x, _with(y, 0, 3)), {"classes": [4, 3]}, **QUICK)
    assert not TRACES


def test_bad_search_arguments_name_search_before_anything_compiles():
    TRACES.clear()
    space = {"width": [4]}

    def run(**changes):
        options = {**QUICK, **changes}
        search(counting_model_fn, TRAIN, options.pop("space", space), **options)

    with pytest.raises(ValueError, match=r"search: strategy must be one of \('grid', 'random', "
                                         r"'bayes'\), got 'rnadom'; did you mean 'random'\?"):
        run(strategy="rnadom")
    with pytest.raises(ValueError, match=r"search: strategy='random' needs trials="):
        run(strategy="random")
    for trials in (0, -1, 2.5):
        with pytest.raises(ValueError, match=r"search: trials must be a positive int"):
            run(strategy="random", trials=trials)
    with pytest.raises(ValueError, match=r"search: space is empty"):
        run(space={})
    with pytest.raises(TypeError, match=r"search: space must be a dict"):
        run(space=[("width", 4)])
    for name, value, expected in (("epochs", 0, "a positive int"),
                                  ("batch_size", 0, "a positive int"),
                                  ("batch_size", True, "a positive int"),
                                  ("batch_size", 16.0, "a positive int"),
                                  ("epochs_per_call", 0, "a positive int"),
                                  ("patience", 0, "a positive int")):
        with pytest.raises(ValueError, match=f"search: {name} must be {expected}"):
            run(**{name: value})
    with pytest.raises(TypeError, match=r"search: key must be"):
        run(key="0")
    with pytest.raises(TypeError, match=r"search: loss must be a per-example loss function, got "
                                        r"the string 'mse'"):
        run(loss="mse")
    with pytest.raises(ValueError, match=r"search: unknown metric"):
        run(metrics=("acuracy",))
    with pytest.raises(ValueError, match=r"search: optimizer must be .* got a "
                                         r"GradientTransformation, already built: pass its "
                                         r"factory"):
        run(optimizer=optax.adam(1e-3))
    # the second structure's optimizer cannot take momentum: found before the first trains
    with pytest.raises(ValueError, match=r"search: optimizer 'adagrad' takes neither momentum "
                                         r"nor b1"):
        run(space={"width": [4], "optimizer": ["adam", "adagrad"], "momentum": [0.9]})
    with pytest.raises(ValueError, match=r"search: space\['learning_rate'\] = \('loguniform', "
                                         r"0.0001, 0.1\) looks like a distribution"):
        run(space={"width": [4], "learning_rate": ("loguniform", 1e-4, 1e-1)},
            strategy="random", trials=2)
    assert not TRACES


def test_a_result_names_a_bad_trial_and_writes_any_space_as_json(tmp_path):
    model = jdnn.serial(jdnn.Dense(3))
    states = jdnn.TrainState({"0_dense": {"w": np.zeros((2, 4, 3))}}, {}, (),
                             jax.random.split(jax.random.key(0), 2), np.zeros(2, np.int32))
    configs = [{"optimizer": optax.adam, "width": np.int64(4)}, {"optimizer": "sgd", "width": 8}]
    rows = [{"rank": 1, "trial": 1, **configs[1], "loss": 0.5},
            {"rank": 2, "trial": 0, **configs[0], "loss": float("nan")}]
    result = SearchResult(rows, "loss", "min", configs, [jdnn.History(), jdnn.History()],
                          {0: (model, states, 0), 1: (model, states, 1)})
    assert int(result.train_state(np.int64(1)).step) == 0 and result.model(0) is model
    for trial in (2, -1, True, "0"):
        with pytest.raises(ValueError, match=r"SearchResult.train_state: trial must be a trial's "
                                             r"index, an int in \[0, 2\)"):
            result.train_state(trial)
    with pytest.raises(ValueError, match=r"SearchResult.model: trial must be"):
        result.model(5)
    result.to_json(tmp_path / "r.json")  # a factory in the space is written by name
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["configs"][0]["optimizer"].endswith(".adam") and data["configs"][0]["width"] == 4
    assert data["best_config"] == {"optimizer": "sgd", "width": 8}
