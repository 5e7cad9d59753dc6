"""jdnn.data.adding_problem and copy_task: shapes, targets, lengths, reproducibility."""

import numpy as np
import pytest

import jdnn


def test_adding_problem_targets_are_the_marked_sums():
    (x, y), (x_test, y_test) = jdnn.data.adding_problem(50, 12, seed=3)
    assert x.shape == (40, 12, 2) and y.shape == (40, 1) and x_test.shape == (10, 12, 2)
    np.testing.assert_array_equal(x[..., 1].sum(1), 2)
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * x[..., 1]).sum(1), rtol=1e-6)
    again, _ = jdnn.data.adding_problem(50, 12, seed=3)
    np.testing.assert_array_equal(again[0], x)


def test_adding_problem_with_variable_lengths_marks_only_real_steps():
    (x, y), _ = jdnn.data.adding_problem(200, 20, variable=True)
    assert isinstance(x, jdnn.Padded) and x.values.shape == (160, 20, 2)
    assert x.lengths.min() >= 10 and x.lengths.max() <= 20
    real = jdnn.sequence_mask(x.lengths, 20)
    marks = x.values[..., 1]
    assert np.all(marks[~np.asarray(real)] == 0) and np.all(marks.sum(1) == 2)


def test_copy_task_layout():
    (x, y), _ = jdnn.data.copy_task(10, 3, delay=4, symbols=5)
    assert x.shape == y.shape == (8, 10)
    np.testing.assert_array_equal(y[:, -3:], x[:, :3])
    assert np.all(x[:, 7] == 6) and np.all(y[:, :7] == 0) and x[:, :3].min() >= 1


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="length"):
        jdnn.data.adding_problem(10, 1)
    with pytest.raises(ValueError, match="delay"):
        jdnn.data.copy_task(10, 3, delay=-1)
