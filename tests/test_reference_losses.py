"""The NumPy reference losses against optax (values) and jax.grad (gradients), in float64.

Every gradient is checked as `d(sum_b weights_b * loss_b)/d outputs` against jax.grad of the
same weighted sum built on optax.losses, and on a few coordinates against central finite
differences of the reference's own values. The last section checks that no reference module
imports JAX.
"""

import ast
import functools
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdnn.reference import losses as ref

REFERENCE = Path(__file__).resolve().parents[1] / "jdnn" / "reference"
MINE = ("tree.py", "losses.py", "regularizers.py", "optimizers.py")


def _rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


# --- the JAX side, built directly on optax ---------------------------------------------------


def _mean_rest(x):
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def optax_mse(outputs, targets):
    targets = jnp.asarray(targets)
    if targets.shape != outputs.shape:
        targets = targets[..., None]
    return _mean_rest(optax.losses.squared_error(outputs, targets))


def optax_bce(logits, labels):
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:
        labels = labels[..., None]
    return _mean_rest(optax.losses.sigmoid_binary_cross_entropy(logits, labels))


def optax_ce(logits, labels, label_smoothing=0.0):
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape:  # integer indices
        if label_smoothing == 0.0:
            ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
            return _mean_rest(ce) if ce.ndim > 1 else ce
        labels = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if label_smoothing:
        labels = optax.smooth_labels(labels, label_smoothing)
    ce = optax.losses.softmax_cross_entropy(logits, labels)
    return _mean_rest(ce) if ce.ndim > 1 else ce


# --- cases: (name, reference loss, reference grad, optax loss, outputs, targets, kwargs) ------


def _cases():
    rng = np.random.default_rng(0)
    B = 6
    probs = rng.dirichlet(np.ones(4), size=B)
    onehot = np.eye(4)[rng.integers(0, 4, B)]
    mse = (ref.mse, ref.mse_grad, optax_mse)
    bce = (ref.binary_cross_entropy, ref.binary_cross_entropy_grad, optax_bce)
    ce = (ref.softmax_cross_entropy, ref.softmax_cross_entropy_grad, optax_ce)
    return [
        ("mse_vector", *mse, rng.normal(size=(B,)), rng.normal(size=(B,)), {}),
        ("mse_b1_vs_b", *mse, rng.normal(size=(B, 1)), rng.normal(size=(B,)), {}),
        ("mse_b3", *mse, rng.normal(size=(B, 3)), rng.normal(size=(B, 3)), {}),
        ("mse_rank3", *mse, rng.normal(size=(B, 2, 3)), rng.normal(size=(B, 2, 3)), {}),
        ("bce_b1_vs_b", *bce, 3 * rng.normal(size=(B, 1)), rng.integers(0, 2, B), {}),
        ("bce_b1", *bce, 3 * rng.normal(size=(B, 1)), rng.integers(0, 2, (B, 1)), {}),
        ("bce_soft", *bce, 3 * rng.normal(size=(B, 5)), rng.uniform(size=(B, 5)), {}),
        ("ce_int", *ce, 2 * rng.normal(size=(B, 4)), rng.integers(0, 4, B), {}),
        ("ce_onehot", *ce, 2 * rng.normal(size=(B, 4)), onehot, {}),
        ("ce_probs", *ce, 2 * rng.normal(size=(B, 4)), probs, {}),
        ("ce_unnormalized", *ce, 2 * rng.normal(size=(B, 4)), rng.uniform(size=(B, 4)), {}),
        ("ce_int_smooth", *ce, 2 * rng.normal(size=(B, 4)), rng.integers(0, 4, B),
         {"label_smoothing": 0.1}),
        ("ce_onehot_smooth", *ce, 2 * rng.normal(size=(B, 4)), onehot,
         {"label_smoothing": 0.3}),
        ("ce_seq_int", *ce, 2 * rng.normal(size=(B, 3, 4)), rng.integers(0, 4, (B, 3)), {}),
        ("ce_seq_int_smooth", *ce, 2 * rng.normal(size=(B, 3, 4)),
         rng.integers(0, 4, (B, 3)), {"label_smoothing": 0.2}),
    ]


CASES = _cases()
cases = pytest.mark.parametrize("name, loss, grad, twin, outputs, targets, kw", CASES,
                                ids=[c[0] for c in CASES])
MASKS = {
    "none": None,
    "some": np.array([1, 0, 1, 1, 0, 1]),
    "one": np.array([0, 0, 0, 1, 0, 0]),
    "zeros": np.zeros(6),
}
masks = pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())


@cases
def test_values_match_optax(name, loss, grad, twin, outputs, targets, kw):
    expected, _ = _jax_value_and_grad(twin, outputs, targets, np.ones(len(outputs)), kw)
    values = loss(outputs, targets, **kw)
    assert values.shape == (outputs.shape[0],)
    assert values.dtype == np.float64
    np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-14)


@functools.cache
def _jitted(loss_fn, label_smoothing):
    """jit of `loss_fn` and of grad(z -> sum_b weights_b * loss_fn(z, targets)_b), compiled once
    per loss and shapes (eager JAX would trace the optax code again on every call)."""
    kw = {} if label_smoothing is None else {"label_smoothing": label_smoothing}

    def value(z, targets):
        return loss_fn(z, targets, **kw)

    def objective(z, targets, weights):
        return jnp.sum(weights * loss_fn(z, targets, **kw))

    return jax.jit(value), jax.jit(jax.grad(objective))


def _jax_value_and_grad(loss_fn, outputs, targets, weights, kw):
    """The values and weighted-sum gradient of a JAX loss, in float64, as NumPy arrays."""
    value, grad = _jitted(loss_fn, kw.get("label_smoothing"))
    with jax.enable_x64(True):
        z, t = jnp.asarray(outputs), jnp.asarray(targets)
        return np.asarray(value(z, t)), np.asarray(grad(z, t, jnp.asarray(weights)))


@cases
@masks
def test_grads_match_jax_grad(name, loss, grad, twin, outputs, targets, kw, mask):
    weights = ref.mean_weights(mask, outputs.shape[0])
    _, expected = _jax_value_and_grad(twin, outputs, targets, weights, kw)
    got = grad(outputs, targets, weights, **kw)
    assert got.shape == outputs.shape
    if mask is not None and not mask.any():
        assert not got.any()  # an all-zero mask: zero gradient
    else:
        assert _rel_err(got, expected) <= 1e-10
    if mask is not None:  # masked-out examples get no gradient at all
        assert not got[np.asarray(mask) == 0].any()


@cases
def test_grads_match_finite_differences(name, loss, grad, twin, outputs, targets, kw):
    weights = ref.mean_weights(np.array([1, 1, 0, 1, 1, 1]), outputs.shape[0])

    def objective(z):
        return np.sum(weights * loss(z, targets, **kw))

    got = grad(outputs, targets, weights, **kw)
    h = 1e-6
    for flat in np.random.default_rng(1).choice(outputs.size, size=4, replace=False):
        index = np.unravel_index(flat, outputs.shape)
        step = np.zeros_like(outputs)
        step[index] = h
        numeric = (objective(outputs + step) - objective(outputs - step)) / (2 * h)
        assert abs(got[index] - numeric) <= 1e-7 * max(1.0, abs(numeric)), (index, numeric)


@cases
def test_matches_the_jax_twin(name, loss, grad, twin, outputs, targets, kw):
    """jdnn.losses (the JAX side) and the reference agree on values and weighted gradients."""
    import jdnn.losses

    jax_loss = getattr(jdnn.losses, loss.__name__)
    weights = ref.mean_weights(np.array([1, 0, 1, 1, 1, 1]), outputs.shape[0])
    values, grads = _jax_value_and_grad(jax_loss, outputs, targets, weights, kw)
    np.testing.assert_allclose(loss(outputs, targets, **kw), values, rtol=1e-12, atol=1e-14)
    assert _rel_err(grad(outputs, targets, weights, **kw), grads) <= 1e-10


# --- huge logits -----------------------------------------------------------------------------


def test_binary_cross_entropy_is_finite_and_exact_for_huge_logits():
    z = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    w = ref.mean_weights(None, 4)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        values = ref.binary_cross_entropy(z, y)
        grads = ref.binary_cross_entropy_grad(z, y, w)
    np.testing.assert_array_equal(values, [1e4, 1e4, 0.0, 0.0])
    np.testing.assert_array_equal(grads[:, 0], [0.25, -0.25, 0.0, 0.0])


@pytest.mark.parametrize("labels", [np.array([0, 2]), np.eye(3)[[0, 2]]], ids=["int", "onehot"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_is_finite_for_huge_logits(labels, smoothing):
    z = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]])
    w = ref.mean_weights(None, 2)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        values = ref.softmax_cross_entropy(z, labels, label_smoothing=smoothing)
        grads = ref.softmax_cross_entropy_grad(z, labels, w, label_smoothing=smoothing)
    with jax.enable_x64(True):
        expected = np.asarray(optax_ce(jnp.asarray(z), labels, smoothing))
    assert np.isfinite(values).all() and np.isfinite(grads).all()
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    if smoothing == 0.0:
        np.testing.assert_allclose(values, [0.0, 1e4], rtol=1e-12)
        np.testing.assert_allclose(grads[1], [0.5, 0.0, -0.5], atol=1e-12)


# --- reductions ------------------------------------------------------------------------------


def test_mean_weights_and_masked_mean():
    values = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(ref.mean_weights(None, 4), [0.25] * 4)
    np.testing.assert_allclose(ref.mean_weights(np.array([1, 0, 1, 0]), 4), [0.5, 0, 0.5, 0])
    np.testing.assert_allclose(ref.mean_weights(np.array([True, False, True, True]), 4),
                               [1 / 3, 0, 1 / 3, 1 / 3])
    assert ref.masked_mean(values, None) == pytest.approx(3.0)
    assert ref.masked_mean(values, np.array([0, 1, 0, 1])) == pytest.approx(4.0)
    assert ref.masked_mean(values, np.zeros(4)) == 0.0
    np.testing.assert_array_equal(ref.mean_weights(np.zeros(4), 4), np.zeros(4))


def test_all_zero_mask_gives_zero_loss_and_gradient():
    logits = np.random.default_rng(2).normal(size=(3, 4))
    labels = np.array([0, 1, 3])
    weights = ref.mean_weights(np.zeros(3), 3)
    assert ref.masked_mean(ref.softmax_cross_entropy(logits, labels), np.zeros(3)) == 0.0
    grads = ref.softmax_cross_entropy_grad(logits, labels, weights)
    assert grads.shape == logits.shape and not grads.any()


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: ref.mse(np.zeros((4, 2)), np.zeros(4)), r"outputs have shape \(4, 2\) but targets"),
    (lambda: ref.mse(np.zeros(4), np.zeros((4, 1))), r"targets have shape \(4, 1\)"),
    (lambda: ref.mse(np.float64(1.0), np.float64(1.0)), "need a batch axis"),
    (lambda: ref.binary_cross_entropy(np.zeros((4, 1)), np.zeros(5)), r"shape \(5,\)"),
    (lambda: ref.mse_grad(np.zeros((4, 1)), np.zeros(4), np.ones(3)),
     r"weights must have shape \(batch,\) = \(4,\)"),
    (lambda: ref.softmax_cross_entropy(np.zeros(4), np.zeros(4, int)), "at least 2 classes"),
    (lambda: ref.softmax_cross_entropy(np.zeros((4, 1)), np.zeros(4, int)), "at least 2"),
    (lambda: ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0])),
     "integer class indices"),
    (lambda: ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
     r"must lie in \[0, 3\)"),
    (lambda: ref.softmax_cross_entropy_grad(np.zeros((2, 3)), np.array([-1, 0]), np.ones(2)),
     r"must lie in \[0, 3\)"),
    (lambda: ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=1.0),
     r"label_smoothing must be a float in \[0, 1\)"),
    (lambda: ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothing=-0.1),
     "label_smoothing"),
    (lambda: ref.mean_weights(np.ones(3), 4), r"mask must have shape \(batch,\) = \(4,\)"),
    (lambda: ref.masked_mean(np.ones((3, 2))), "values must be per-example"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the reference stays NumPy-only ----------------------------------------------------------


def _imported_modules(path: Path, package: list[str] | None = None) -> list[str]:
    """Every module a source file imports, anywhere in it, with relative imports resolved
    against `package` (by default the file's own package under jdnn/)."""
    if package is None:
        package = ["jdnn", *path.parent.relative_to(REFERENCE.parent).parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
    return names


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    if module == "jdnn.reference" or module.startswith("jdnn.reference."):
        return True
    return top == "numpy" or (top in sys.stdlib_module_names and top != "jdnn")


@pytest.mark.parametrize("path", sorted(REFERENCE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(REFERENCE)))
def test_reference_sources_import_only_numpy_stdlib_and_the_reference(path):
    bad = [m for m in _imported_modules(path) if not _allowed(m)]
    assert not bad, f"{path.name} imports {bad}: the reference must not depend on JAX/jdnn"


def test_import_checker_catches_jax(tmp_path):
    fake = REFERENCE / "losses.py"
    assert "numpy" in _imported_modules(fake) and all(map(_allowed, _imported_modules(fake)))
    assert not _allowed("jax.numpy") and not _allowed("jdnn.core") and not _allowed("optax")
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from jax import numpy\n    import jdnn.losses\n"
                      "from . import tree\nfrom ..core import Layer\n")
    found = _imported_modules(source, package=["jdnn", "reference"])
    assert sorted(found) == ["jax", "jdnn.core", "jdnn.losses", "jdnn.reference.tree"]
    assert [m for m in found if _allowed(m)] == ["jdnn.reference.tree"]


def test_reference_modules_load_without_jax():
    """Loads this file set as a stand-alone package with `jax` and `jdnn` made unimportable."""
    script = f"""
import importlib, sys, types
sys.modules["jax"] = sys.modules["jdnn"] = sys.modules["optax"] = None  # importing them fails
package = types.ModuleType("isolated_reference")
package.__path__ = [{str(REFERENCE)!r}]
sys.modules["isolated_reference"] = package
for name in {[m[:-3] for m in MINE]!r}:
    importlib.import_module("isolated_reference." + name)
loaded = [m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "jdnn", "optax")]
assert all(sys.modules[m] is None for m in loaded), loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
