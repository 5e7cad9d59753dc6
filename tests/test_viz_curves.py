"""Several runs compared on shared axes (`plot_histories`)."""

import pytest

import jdnn
from jdnn.viz import plot_histories


def _history(losses, accuracies):
    history = jdnn.History()
    for epoch, (loss, accuracy) in enumerate(zip(losses, accuracies), start=1):
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": accuracy})
    return history


def test_each_run_is_a_line_in_each_panel(tmp_path):
    sgd, adam = _history([2.0, 1.0, 0.5], [0.5, 0.7, 0.8]), _history([1.0, 0.1, 0.01],
                                                                     [0.8, 0.9, 0.95])
    fig = plot_histories({"sgd": sgd, "adam": adam.to_dict()}, path=tmp_path / "runs.png")
    series = fig.jdnn_data["series"]
    assert series["loss"]["sgd"] == ([1, 2, 3], [2.0, 1.0, 0.5])
    assert series["val_accuracy"]["adam"] == ([1, 2, 3], [0.8, 0.9, 0.95])
    loss_axes, accuracy_axes = fig.axes
    assert loss_axes.get_yscale() == "log" and accuracy_axes.get_yscale() == "linear"  # 200x
    assert [line.get_label() for line in accuracy_axes.get_lines()] == ["sgd", "adam"]
    assert (tmp_path / "runs.png").stat().st_size > 0


def test_bad_requests_are_clear():
    run = _history([1.0], [0.5])
    with pytest.raises(ValueError, match=r"no run recorded \['val_loss'\]; the runs record "
                                         r"\['loss', 'val_accuracy'\]"):
        plot_histories({"a": run}, ("val_loss",))
    with pytest.raises(ValueError, match="run 'b' has no records"):
        plot_histories({"a": run, "b": jdnn.History()})
    with pytest.raises(ValueError, match="give at least one run"):
        plot_histories({})
