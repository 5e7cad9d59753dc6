"""Property-based fault injection over the bad-input space of `check_data` and `fit`.

Hypothesis draws datasets from a space of shapes, dtypes, label ranges and NaN/inf positions;
an independent oracle written here says whether each is valid for a 3-class softmax classifier.
`check_data` must raise a `ValueError` naming the data exactly when the oracle says invalid (and
nothing else, ever), and `fit` must refuse every invalid draw before training with the same kind
of error. The hand-picked cases of issue 11 live in `tests/test_faults.py`.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jdnn
from jdnn.data.validate import check_data

CLASSES = 3
MODEL = jdnn.serial(jdnn.Flatten(), jdnn.Dense(CLASSES))
LOSS = jdnn.losses.softmax_cross_entropy
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Draw:
    """One drawn dataset and the oracle's verdict on it."""

    x: np.ndarray
    y: np.ndarray
    problems: list[str]

    @property
    def valid(self) -> bool:
        return not self.problems


X_DTYPES = ("float32", "float64", "int32", "uint8", "bool", "complex64", "str")
Y_KINDS = ("int32", "int64", "uint8", "whole_float", "fraction_float", "one_hot", "bad_one_hot",
           "complex64")


@st.composite
def datasets(draw) -> Draw:
    """An `(x, y)` pair and the list of reasons it cannot train a 3-class softmax model."""
    problems = []
    n = draw(st.integers(0, 5))
    m = draw(st.sampled_from([n, n, n, n + 1, max(n - 1, 0)]))
    features = draw(st.sampled_from([(4,), (2, 2), (1, 3, 2)]))
    x_dtype = draw(st.sampled_from(X_DTYPES))
    if x_dtype == "str":
        x = np.full((n, *features), "a")
    else:
        x = np.asarray(draw(st.lists(st.floats(-3, 3), min_size=n * int(np.prod(features)),
                                     max_size=n * int(np.prod(features)))))
        x = x.reshape(n, *features).astype(x_dtype)
    if x_dtype in ("complex64", "str"):
        problems.append("x not real")
    if x_dtype.startswith("float") and n and draw(st.booleans()):
        flat = x.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf,
                                                                          -np.inf]))
        problems.append("x not finite")

    y_kind = draw(st.sampled_from(Y_KINDS))
    labels = np.asarray(draw(st.lists(st.integers(-2, CLASSES + 1), min_size=m, max_size=m)),
                        dtype=np.int64)
    if y_kind in ("int32", "int64"):
        y = labels.astype(y_kind)
        if ((labels < 0) | (labels >= CLASSES)).any():
            problems.append("label out of range")
    elif y_kind == "uint8":
        y = np.clip(labels, 0, None).astype(np.uint8)
        if (y >= CLASSES).any():
            problems.append("label out of range")
    elif y_kind == "whole_float":
        y = labels.astype(np.float32)
        if m:
            problems.append("float class indices")
    elif y_kind == "fraction_float":
        y = labels.astype(np.float32) + 0.5
        if m:
            problems.append("float class indices")
    elif y_kind == "one_hot":
        y = np.eye(CLASSES, dtype=np.float32)[np.clip(labels, 0, CLASSES - 1)]
    elif y_kind == "bad_one_hot":
        y = np.eye(CLASSES, dtype=np.float32)[np.clip(labels, 0, CLASSES - 1)] * 2.0
        if m:
            problems.append("one-hot outside [0, 1]")
    else:
        y = labels.astype(np.complex64)
        problems.append("y not real")
    if n != m:
        problems.append("x and y lengths differ")
    if n == 0 and m == 0:
        problems.append("no examples")
    return Draw(x, y, problems)


@SETTINGS
@given(datasets())
def test_check_data_raises_exactly_when_the_oracle_says_invalid(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            check_data(d.x, d.y, model=MODEL, loss=LOSS, name="train_data")
        except ValueError as error:
            assert not d.valid, f"valid data refused: {error}"
            assert str(error).startswith("train_data"), str(error)
            return
    assert d.valid, f"invalid data passed ({d.problems}): x {d.x.shape} {d.x.dtype}, " \
                    f"y {d.y.shape} {d.y.dtype}"


@SETTINGS
@given(datasets())
def test_fit_refuses_every_invalid_dataset_before_training(d):
    if d.valid:
        return  # valid data would compile and train; the oracle agreement is tested above
    with pytest.raises(ValueError, match="^train_data"):
        jdnn.fit(MODEL, (d.x, d.y), loss=LOSS, optimizer=optax.sgd(0.1), epochs=1,
                 batch_size=2, key=0, progress=False)


@SETTINGS
@given(datasets(), datasets())
def test_fit_names_the_validation_data_when_only_they_are_bad(train, validation):
    if not train.valid or validation.valid:
        return
    with pytest.raises(ValueError, match="^validation_data"):
        jdnn.fit(MODEL, (train.x, train.y), loss=LOSS, optimizer=optax.sgd(0.1), epochs=1,
                 batch_size=2, key=0, progress=False, validation_data=(validation.x,
                                                                       validation.y))
