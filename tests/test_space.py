"""Search spaces: grids in order, seeded random draws in range, clear errors."""

import jax
import numpy as np
import pytest

from jdnn.space import check, grid, sample


def test_grid_enumerates_every_combination_in_order():
    configs = grid({"a": [1, 2], "b": ["x", "y", "z"], "c": 0.5})
    assert len(configs) == 6
    assert configs[0] == {"a": 1, "b": "x", "c": 0.5} and configs[-1] == {"a": 2, "b": "z",
                                                                          "c": 0.5}
    assert len({tuple(c.values()) for c in configs}) == 6
    with pytest.raises(ValueError, match="grid search needs a list"):
        grid({"learning_rate": ("log_uniform", 1e-4, 1e-1)})
    with pytest.raises(ValueError, match="empty list"):
        grid({"a": []})


def test_random_sampling_is_seeded_in_range_and_log_uniform():
    space = {"lr": ("log_uniform", 1e-4, 1e-1), "u": ("uniform", -1.0, 1.0),
             "n": ("int_uniform", 2, 4), "c": ["relu", "tanh"], "fixed": 3}
    draws = sample(space, 2000, 0)
    assert draws == sample(space, 2000, jax.random.key(0)) and draws != sample(space, 2000, 1)
    lr = np.array([d["lr"] for d in draws])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    # uniform in log space: each decade holds about a third of the draws
    decades = np.histogram(np.log10(lr), bins=[-4, -3, -2, -1])[0] / len(lr)
    np.testing.assert_allclose(decades, 1 / 3, atol=0.05)
    u = np.array([d["u"] for d in draws])
    assert -1 <= u.min() and u.max() <= 1 and abs(u.mean()) < 0.05
    assert {d["n"] for d in draws} == {2, 3, 4} and {d["c"] for d in draws} == {"relu", "tanh"}
    assert all(d["fixed"] == 3 for d in draws)
    with pytest.raises(ValueError, match="log_uniform needs low > 0"):
        sample({"lr": ("log_uniform", 0.0, 1.0)}, 1, 0)
    with pytest.raises(ValueError, match="low < high"):
        sample({"lr": ("uniform", 1.0, 0.5)}, 1, 0)
    with pytest.raises(ValueError, match="trials must be a positive int, got 0"):
        sample(space, 0, 0)


def test_check_names_the_value_out_of_range():
    check({"learning_rate": 0.1, "momentum": 0.5, "seed": 2, "width": -1})   # width: not checked
    with pytest.raises(ValueError, match=r"momentum must be a float in \[0, 1\), got 1.0"):
        check({"momentum": 1.0})
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        check({"seed": 1.5})
