"""Helpers live where they belong, old import paths keep working, and fit and parallel import
each other one way only (parallel -> train), at module level: one epoch with a sharding hook."""

import ast
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdnn
from jdnn import core, losses, metrics, parallel, regularizers
from jdnn.train import epoch as epoch_module
from jdnn.train import step as step_module

fit_module = importlib.import_module("jdnn.train.fit")   # jdnn.train.fit is the function

ROOT = Path(__file__).resolve().parents[1] / "jdnn"


@pytest.mark.parametrize("name, home, old_homes", [
    ("path_of", core, [regularizers]),
    ("is_under", core, [regularizers]),
    ("masked_mean", losses, [step_module]),
    ("Loss", losses, [step_module]),
    ("resolve_metrics", metrics, [step_module]),
    ("Metric", metrics, [step_module]),
    ("Metrics", metrics, [step_module]),
    ("check_batch_size", epoch_module, [parallel, fit_module]),
    ("DATA_AXIS", epoch_module, [parallel, fit_module]),
])
def test_helpers_live_in_their_home_and_keep_their_old_import_paths(name, home, old_homes):
    for old in old_homes:
        assert getattr(old, name) is getattr(home, name)
    if name[0].islower():   # a function, defined in its home
        assert getattr(home, name).__module__ == home.__name__


def test_the_loss_alias_is_defined_once_in_my_modules():
    for path in ("losses.py", "metrics.py", "train/step.py", "train/fit.py", "train/evaluate.py",
                 "train/arguments.py", "data/validate.py", "parallel.py", "regularizers.py"):
        tree = ast.parse((ROOT / path).read_text())
        defined = {t.id for node in tree.body if isinstance(node, ast.Assign)
                   for t in node.targets if isinstance(t, ast.Name)}
        assert ("Loss" in defined) == (path == "losses.py"), path


def _function_level_imports(path: Path) -> list[str]:
    """The modules imported inside functions of the file at `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    found.append(inner.module or "")
                elif isinstance(inner, ast.Import):
                    found += [alias.name for alias in inner.names]
    return found


@pytest.mark.parametrize("path", ["train/fit.py", "train/epoch.py", "train/stream.py",
                                  "train/stream_source.py", "train/stream_eval.py",
                                  "train/step.py", "train/arguments.py",
                                  "train/evaluate.py", "parallel.py", "data/validate.py",
                                  "metrics.py", "losses.py", "regularizers.py"])
def test_no_imports_hide_inside_functions(path):
    assert _function_level_imports(ROOT / path) == []


def test_fit_never_imports_parallel_and_parallel_imports_fit_at_module_level():
    fit_imports = [node for node in ast.walk(ast.parse((ROOT / "train/fit.py").read_text()))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not any("parallel" in (getattr(n, "module", "") or "") or
                   any("parallel" in a.name for a in n.names) for n in fit_imports)
    top = ast.parse((ROOT / "parallel.py").read_text()).body
    assert any(isinstance(n, ast.ImportFrom) and n.module == "jdnn.train.fit" for n in top)


def test_parallel_epoch_is_fits_epoch_with_the_sharding_hook():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30).astype(np.int32)
    model, optimizer = jdnn.serial(jdnn.Dense(6), jdnn.Relu(), jdnn.Dense(3)), optax.sgd(0.1)
    step = jdnn.train.step.train_step_fn(model, jdnn.losses.softmax_cross_entropy, optimizer)
    mesh = parallel.data_mesh(jax.devices()[:1])
    sharding = fit_module.epoch_sharding(mesh, 8)
    assert sharding == fit_module.EpochSharding(parallel.replicated(mesh),
                                                parallel.batch_sharding(mesh),
                                                sharding.plan)

    def create():
        return jdnn.TrainState.create(model, optimizer, jax.random.key(0), (8, 4))

    order = fit_module.epoch_orders(create(), 30)
    hooked, hooked_means = fit_module.make_epoch(step, 8, sharding=sharding)(
        jax.device_put(create(), sharding.replicated), *parallel.put_data((x, y), mesh), order)
    plain, plain_means = parallel.make_parallel_epoch(step, 8, mesh)(
        parallel.replicate(create(), mesh), *parallel.put_data((x, y), mesh), order)
    single, _ = fit_module.make_epoch(step, 8)(create(), jnp.asarray(x), jnp.asarray(y), order)
    for a, b, c in zip(jax.tree.leaves(hooked.params), jax.tree.leaves(plain.params),
                       jax.tree.leaves(single.params)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
    assert hooked_means["loss"].sharding == sharding.replicated
