"""Search spaces: grids in order, seeded random draws in range, clear errors."""

import json

import jax
import numpy as np
import pytest

from jdnn.multi.space import check, grid, sample


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


def test_arrays_ranges_and_numpy_scalars_are_choices_of_plain_python_values():
    configs = grid({"width": np.array([4, 8]), "depth": range(1, 3),
                    "lr": np.float32(0.5), "seed": [np.int64(3)]})
    assert configs == [{"width": 4, "depth": 1, "lr": 0.5, "seed": 3},
                       {"width": 4, "depth": 2, "lr": 0.5, "seed": 3},
                       {"width": 8, "depth": 1, "lr": 0.5, "seed": 3},
                       {"width": 8, "depth": 2, "lr": 0.5, "seed": 3}]
    assert all(type(v) in (int, float) for c in configs for v in c.values())
    json.dumps(configs)  # NumPy scalars would not serialize
    draws = sample({"width": np.array([4, 8]), "n": ("int_uniform", np.int64(1), np.int64(3)),
                    "u": ("uniform", np.float32(0), 1)}, np.int64(20), np.int64(0))
    assert len(draws) == 20 and {d["width"] for d in draws} == {4, 8}
    assert {d["n"] for d in draws} <= {1, 2, 3}
    assert draws == sample({"width": [4, 8], "n": ("int_uniform", 1, 3), "u": ("uniform", 0, 1)},
                           20, 0)
    with pytest.raises(ValueError, match=r"space\['w'\] is an array of shape \(2, 2\)"):
        grid({"w": np.zeros((2, 2))})


def test_bad_spaces_are_clear_errors():
    with pytest.raises(TypeError, match=r"jdnn.space.grid: space must be a dict mapping "
                                        r"hyper-parameter names to values, got list"):
        grid([("width", [4, 8])])
    with pytest.raises(ValueError, match="jdnn.space.sample: space is empty"):
        sample({}, 3, 0)
    with pytest.raises(TypeError, match=r"space names must be strings .* got \[1\]"):
        grid({1: [2, 3]})
    with pytest.raises(ValueError, match=r"space\['lr'\] = \('loguniform', 0.0001, 0.1\) looks "
                                         r"like a distribution .* did you mean 'log_uniform'\?"):
        sample({"lr": ("loguniform", 1e-4, 1e-1)}, 2, 0)
    with pytest.raises(ValueError, match=r"did you mean 'uniform'\?"):
        grid({"p": ("unifrom", 0.0, 0.5)})
    grid({"act": ("relu", "tanh", "gelu")})  # a tuple of choices is not a distribution
    with pytest.raises(ValueError, match=r"int_uniform draws whole numbers from \[low, high\], "
                                         r"and there is none in that range"):
        sample({"n": ("int_uniform", 0.2, 0.7)}, 1, 0)
    for bad in (("uniform", 0, float("inf")), ("uniform", float("nan"), 1), ("uniform", 0, "1"),
                ("uniform", 0), ("uniform", True, 2)):
        with pytest.raises(ValueError, match=r"a distribution is \(kind, low, high\) with finite "
                                             r"numbers low < high"):
            sample({"p": bad}, 1, 0)
    for trials in (0, -1, 2.0, None, True):
        with pytest.raises(ValueError, match=r"jdnn.space.sample: trials must be a positive int"):
            sample({"p": [1]}, trials, 0)
    with pytest.raises(TypeError, match=r"jdnn.space.sample: key must be"):
        sample({"p": [1]}, 1, "seed")
    with pytest.raises(ValueError, match=r"jdnn.space.check: learning_rate must be a float > 0, "
                                         r"got nan"):
        check({"learning_rate": float("nan")})
    with pytest.raises(ValueError, match=r"search: batch_size must be an int >= 1, got True"):
        check({"batch_size": True}, where="search")
    check({"learning_rate": np.float32(0.1), "seed": np.int64(0), "batch_size": np.int32(8)})
