"""summary(..., params=): zeros among each layer's weights, shown only where there are some."""

import jax
import pytest

import jdnn
from jdnn.compress import prune

KEY = jax.random.key(0, impl="rbg")


def _model_and_params():
    model = jdnn.serial(jdnn.Dense(8), jdnn.Relu(), jdnn.residual(jdnn.Dense(8)), jdnn.Dense(2))
    _, params, _ = jax.jit(model.init, static_argnums=1)(KEY, (1, 4))
    return model, params


def test_pruned_params_show_per_layer_zeros_and_a_total():
    model, params = _model_and_params()
    pruned, _ = prune(params, 0.75)
    table = jdnn.summary(model, (1, 4), params=pruned)
    rows = {row.path: row for row in table.rows}
    assert (rows["0_dense"].weights, rows["0_dense"].zero_weights) == (32, 24)
    assert rows["2_residual"].sparsity == rows["2_residual/0_dense"].sparsity == 0.75
    assert rows["1_relu"].sparsity is None   # no weights
    assert (table.weights, table.zero_weights) == (32 + 64 + 16, 84)
    text = str(table)
    assert text.splitlines()[0].rstrip().endswith("Zero weights") and "75.0%" in text
    assert "Zero weights:           84 of 112 (75.0%)" in text
    assert table.to_dict()["totals"]["sparsity"] == pytest.approx(0.75)


def test_dense_params_and_no_params_keep_the_table_as_it_was():
    model, params = _model_and_params()
    plain = str(jdnn.summary(model, (1, 4)))
    assert str(jdnn.summary(model, (1, 4), params=params)) == plain
    assert "Zero weights" not in plain and jdnn.summary(model, (1, 4)).rows[0].sparsity is None


def test_params_of_another_model_are_an_error():
    model, params = _model_and_params()
    with pytest.raises(ValueError, match=r"summary: params do not fit the model"):
        jdnn.summary(jdnn.serial(jdnn.Dense(3)), (1, 4), params=params)
