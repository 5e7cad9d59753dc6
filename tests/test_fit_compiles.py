"""What a small `fit` compiles, the programs it keeps across fits, and the persistent cache.

A digits-sized fit is compile-bound, so the count of XLA programs is part of its contract:
ONE initialization program, ONE epoch, ONE evaluator, no stray eager op on the way. Counted with
`jax.monitoring`, on shapes no other test uses (a cached program would hide a stray one).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

import jdnn
from tests.compiles import Compiles
from jdnn.train import compilation_cache
from jdnn.train.program_cache import fingerprint
from jdnn.train.state import _create_fn

MAX_PROGRAMS = 3   # create, epoch, evaluator


def _data(n: int = 301, n_val: int = 77):
    (x, y), (x_test, y_test) = jdnn.data.digits()
    return (x[:n], y[:n]), (x_test[:n_val], y_test[:n_val])


def _model(hidden: int):
    return jdnn.serial(jdnn.Dense(hidden), jdnn.Relu(), jdnn.Dense(10))


def _fit(hidden: int, lr: float = 1e-3, epochs: int = 2, **kw):
    train, test = _data(**kw)
    return jdnn.fit(_model(hidden), train, loss=jdnn.losses.softmax_cross_entropy,
                    optimizer=optax.adam(lr), epochs=epochs, batch_size=32, key=0,
                    validation_data=test, progress=False)


def test_a_digits_fit_compiles_one_init_one_epoch_one_evaluator():
    with Compiles() as compiles:
        _fit(hidden=37, n=301, n_val=77)
    assert len(compiles.names) <= MAX_PROGRAMS, compiles.names
    assert sorted(compiles.names) == ["jit(create)", "jit(epoch)", "jit(run)"]


def test_a_second_identical_fit_compiles_nothing_a_changed_one_recompiles():
    _fit(hidden=41, n=303, n_val=79)
    with Compiles() as compiles:   # the model and optax.adam built again, from the same code
        _, history = _fit(hidden=41, n=303, n_val=79)
    assert compiles.names == [] and len(history) == 2
    with Compiles() as compiles:   # another learning rate: another epoch program
        _fit(hidden=41, lr=1e-2, n=303, n_val=79)
    assert "jit(epoch)" in compiles.names


def test_clearing_every_program_cache_makes_the_next_fit_compile_again():
    from jdnn.train import program_cache

    _fit(hidden=45, n=307, n_val=83)
    program_cache.clear_all()
    with Compiles() as compiles:
        _fit(hidden=45, n=307, n_val=83)
    assert sorted(compiles.names) == ["jit(create)", "jit(epoch)", "jit(run)"]


def test_a_cached_fit_trains_exactly_as_a_fresh_one():
    first, h1 = _fit(hidden=43, n=305, n_val=81)
    again, h2 = _fit(hidden=43, n=305, n_val=81)
    assert h1.records[-1]["loss"] == h2.records[-1]["loss"]
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_compiled_initialization_matches_the_eager_one_bit_for_bit(name):
    from jdnn.cli import run

    config = run.Config(model=name, batch_norm=name == "cnn", dropout=0.1)
    model, shape = run.build(config, 10), ((8, 64) if name == "mlp" else (8, 8, 8, 1))
    optimizer = optax.adam(1e-3)
    compiled = jdnn.TrainState.create(model, optimizer, 3, shape)
    eager = _create_fn(model, optimizer, shape)(jax.random.key(3))
    assert jax.tree.structure(compiled) == jax.tree.structure(eager)
    np.testing.assert_array_equal(jax.random.key_data(compiled.key),
                                  jax.random.key_data(eager.key))
    for a, b in zip(jax.tree.leaves((compiled.params, compiled.state, compiled.opt_state)),
                    jax.tree.leaves((eager.params, eager.state, eager.opt_state))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_train_state_create_takes_seeds_keys_and_raw_keys_as_before():
    model, optimizer = _model(5), optax.sgd(0.1)
    for key in (0, -7, np.int64(11), 2**40, jax.random.key(2), jax.random.PRNGKey(4)):
        state = jdnn.TrainState.create(model, optimizer, key, (2, 3))
        made = jax.random.key(int(key)) if isinstance(key, (int, np.integer)) else key
        eager = _create_fn(model, optimizer, (2, 3))(made)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(eager.params)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="TrainState.create: key must be"):
        jdnn.TrainState.create(model, optimizer, 1.5, (2, 3))


def test_fingerprints_tell_equal_functions_from_different_ones():
    assert fingerprint(optax.adam(1e-3)) == fingerprint(optax.adam(1e-3))
    assert fingerprint(optax.adam(1e-3)) != fingerprint(optax.adam(1e-2))
    assert fingerprint(optax.adam(1e-3)) != fingerprint(optax.sgd(1e-3))
    assert fingerprint(_model(7)) == fingerprint(_model(7)) != fingerprint(_model(8))

    def scaled(factor):
        return lambda x: x * factor

    assert fingerprint(scaled([1, 2])) == fingerprint(scaled([1, 2]))
    assert fingerprint(scaled([1, 2])) != fingerprint(scaled([1, 3]))
    array = np.ones(3)
    assert fingerprint(scaled(array)) != fingerprint(scaled(np.ones(3)))   # arrays: identity
    assert fingerprint(scaled(array)) == fingerprint(scaled(array))


# --- the persistent compilation cache ---------------------------------------------------------


@pytest.fixture
def jax_cache_config():
    """JAX's cache settings, put back after the test."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {name: getattr(jax.config, name) for name in names}
    enabled = compilation_cache._enabled
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache._enabled = enabled


def test_the_cache_is_off_when_jdnn_cache_dir_says_so(monkeypatch, jax_cache_config):
    for off in ("off", "OFF", "0", "none", ""):
        monkeypatch.setenv("JDNN_CACHE_DIR", off)
        assert compilation_cache.enable_compilation_cache() is None
        assert compilation_cache.cache_folder() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_a_cache_the_user_configured_is_left_alone(tmp_path, monkeypatch, jax_cache_config):
    mine = str(tmp_path / "mine")
    jax.config.update("jax_compilation_cache_dir", mine)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
    monkeypatch.setenv("JDNN_CACHE_DIR", str(tmp_path / "jdnn"))
    assert compilation_cache.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == mine
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
    assert not (tmp_path / "jdnn").exists()


def test_the_cache_is_turned_on_where_unconfigured(tmp_path, monkeypatch, jax_cache_config):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("JDNN_CACHE_DIR", str(tmp_path / "jdnn"))
    assert compilation_cache.enable_compilation_cache() == str(tmp_path / "jdnn")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jdnn")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert compilation_cache.enable_compilation_cache() == str(tmp_path / "jdnn")   # again: free
    from jdnn.cli import enable_compilation_cache   # the CLI's name for it

    assert enable_compilation_cache is compilation_cache.enable_compilation_cache


def test_a_folder_that_cannot_be_made_turns_nothing_on(tmp_path, monkeypatch, jax_cache_config):
    jax.config.update("jax_compilation_cache_dir", None)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("JDNN_CACHE_DIR", str(blocker / "cache"))
    assert compilation_cache.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


_FIT_TWICE = textwrap.dedent("""
    import json, sys
    import jax, optax
    import jdnn
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(1) if event.endswith("cache_hits") else None)
    (x, y), _ = jdnn.data.digits()
    model = jdnn.serial(jdnn.Dense(19), jdnn.Relu(), jdnn.Dense(10))
    jdnn.fit(model, (x[:100], y[:100]), loss=jdnn.losses.softmax_cross_entropy,
             optimizer=optax.sgd(0.1), epochs=1, batch_size=32, key=0, progress=False)
    print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits)}))
""")


def _run_fit(env: dict) -> dict:
    import json

    done = subprocess.run([sys.executable, "-c", _FIT_TWICE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fit_fills_the_cache_and_a_new_process_reads_it(tmp_path):
    env = dict(os.environ, JDNN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    first = _run_fit(env)
    assert first == {"dir": str(tmp_path / "cache"), "hits": 0}
    assert any((tmp_path / "cache").iterdir())
    second = _run_fit(env)
    assert second["hits"] >= 2   # the init and the epoch come from disk
    off = _run_fit(dict(env, JDNN_CACHE_DIR="off"))
    assert off == {"dir": None, "hits": 0}
