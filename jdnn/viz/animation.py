"""XOR training as a GIF: the 2-3-2-1 sigmoid net's neurons, weights and decision regions,
frame by frame as momentum SGD bends the plane.

`xor_frames` trains and keeps snapshots of the parameters; `render_gif` draws any snapshots of
a small 2-D dense classifier with matplotlib's `FuncAnimation` and writes them with pillow;
`animate_training` does both for XOR.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from jdnn import data, losses
from jdnn.core import Layer
from jdnn.layers import Dense, Sigmoid, serial
from jdnn.train.state import TrainState
from jdnn.train.step import make_train_step
from jdnn.viz.boundary import default_threshold, plot_decision_boundary
from jdnn.viz.common import mappable
from jdnn.viz.trace import full_state
from jdnn.viz.network import CMAP, draw_network, node_activations

# Momentum SGD: Adam often stalls on this tiny sigmoid net in the minimum where three of the
# four points are right; momentum carries SGD through it.
LEARNING_RATE, MOMENTUM = 0.5, 0.9


class Frame(NamedTuple):
    """One snapshot: the step count, the loss and accuracy on the data, and the params (NumPy)."""

    step: int
    loss: float
    accuracy: float
    params: Any


class Training(NamedTuple):
    """What `animate_training` returns: the model, its final `TrainState`, the frames drawn and
    the GIF's path (None if none was written)."""

    model: Layer
    train_state: TrainState
    frames: list[Frame]
    path: pathlib.Path | None


def xor_model() -> Layer:
    """The 2-3-2-1 sigmoid net of the DNN tutorials; it outputs a logit."""
    return serial(Dense(3), Sigmoid(), Dense(2), Sigmoid(), Dense(1))


def _evaluator(model: Layer, x: np.ndarray, y: np.ndarray):
    """A compiled `params -> (loss, accuracy)` on the whole (tiny) dataset."""
    threshold = default_threshold(model)
    state = full_state(model, None)

    @jax.jit
    def evaluate(params):
        logits = model.apply(params, state, x)[0]
        correct = (logits[:, 0] > threshold) == (y > 0.5)
        return jnp.mean(losses.binary_cross_entropy(logits, y)), jnp.mean(correct)

    def frame(step: int, params: Any) -> Frame:
        loss, accuracy = evaluate(params)
        return Frame(step, float(loss), float(accuracy), jax.tree.map(np.asarray, params))

    return frame


def xor_frames(*, steps: int = 600, every: int = 20, seed: int = 0,
               learning_rate: float = LEARNING_RATE, momentum: float = MOMENTUM
               ) -> tuple[Layer, TrainState, list[Frame]]:
    """Trains the XOR net full-batch with `jdnn.make_train_step` and momentum SGD, keeping a
    snapshot before the first step and after every `every` steps.

    Returns:
        `(model, train_state, frames)`.
    """
    if every < 1 or steps < 0:
        raise ValueError(f"need steps >= 0 and every >= 1, got steps={steps}, every={every}")
    (x, y), _ = data.xor()
    model = xor_model()
    optimizer = optax.sgd(learning_rate, momentum=momentum)
    train_state = TrainState.create(model, optimizer, jax.random.key(seed), x.shape)
    step = make_train_step(model, losses.binary_cross_entropy, optimizer)
    frame = _evaluator(model, x, y)
    frames = [frame(0, train_state.params)]
    for i in range(1, steps + 1):
        train_state, _ = step(train_state, x, y)
        if i % every == 0 or i == steps:
            frames.append(frame(i, train_state.params))
    return model, train_state, frames


def render_gif(model: Layer, frames: Sequence[Frame], x: Any, y: Any, path, *,
               example: Any = None, resolution: int = 60, fps: int = 8, dpi: int = 60,
               hold: int = 6) -> pathlib.Path:
    """Writes a GIF of `frames`: the neuron diagram (nodes colored by the activations for
    `example`) next to the decision regions on `(x, y)`, one frame per snapshot.

    Args:
        model: a small dense classifier on 2 features.
        frames: the snapshots (`Frame`s) to draw, in order.
        x: the inputs drawn under the decision regions.
        y: their labels.
        path: the `.gif` to write (its folder is created).
        example: the input whose activations color the nodes (default: `x[2]`, or `x[0]`).
        resolution: grid points per axis of the decision regions.
        fps: frames per second; dpi: pixels per inch of each frame.
        hold: extra copies of the last frame, so the loop pauses on the result.

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"render_gif writes a GIF; give a path ending in .gif, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = np.asarray(x), np.asarray(y)
    example = x[min(2, len(x) - 1)] if example is None else np.asarray(example, x.dtype)
    values = np.concatenate([np.concatenate(node_activations(model, f.params, None, example)[:-1])
                             for f in frames])  # input and hidden values: outputs saturate
    value_range = (min(0.0, float(values.min())), max(1.0, float(values.max())))

    fig = Figure(figsize=(8.6, 3.8), dpi=dpi)
    net_ax, region_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1.0]})
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.12, top=0.84, wspace=0.12)
    bar = fig.colorbar(mappable(Normalize(*value_range), CMAP), ax=net_ax, shrink=0.55,
                       pad=0.0, extend="both")
    bar.set_label("activation", fontsize=8)
    order = [*range(len(frames)), *([len(frames) - 1] * hold)]

    def draw(index: int):
        frame = frames[order[index]]
        net_ax.clear()
        region_ax.clear()
        draw_network(model, frame.params, None, example, ax=net_ax, colorbar=False,
                     value_range=value_range)
        plot_decision_boundary(model, frame.params, None, x, y, ax=region_ax,
                               resolution=resolution, title="decision regions")
        region_ax.set_xticks([0, 1])
        region_ax.set_yticks([0, 1])
        fig.suptitle(f"step {frame.step}: loss {frame.loss:.3f}, accuracy {frame.accuracy:.0%}",
                     fontsize=11)
        return []

    animation = FuncAnimation(fig, draw, frames=len(order), interval=1000 / fps, blit=False,
                              repeat=False)
    animation.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi)
    return path


def animate_training(path="xor_training.gif", *, steps: int = 600, every: int = 20,
                     seed: int = 0, learning_rate: float = LEARNING_RATE,
                     momentum: float = MOMENTUM, example: Any = (1.0, 0.0), resolution: int = 60,
                     fps: int = 8, dpi: int = 60) -> Training:
    """Trains the 2-3-2-1 sigmoid net on XOR and writes the training as a GIF.

    Each frame shows the network (nodes colored by their activations for `example`, edges by
    the weights) and the decision regions on the four points, with the step, loss and
    accuracy. The defaults (31 frames at 60 dpi) give a GIF of a few hundred KB.

    Args:
        path: the `.gif` to write, or None to train and collect the frames only.
        steps: full-batch training steps; every: steps between frames.
        seed: initializes the net.
        learning_rate: of the SGD optimizer.
        momentum: of the SGD optimizer.
        example: the input whose activations color the nodes.
        resolution: grid points per axis of the decision regions.
        fps: frames per second; dpi: pixels per inch.

    Returns:
        A `Training`: the model, the final train state, the frames and the path.

    Examples:
        >>> result = animate_training("figures/xor/training.gif")
        >>> result.frames[-1].accuracy
        1.0
    """
    model, train_state, frames = xor_frames(steps=steps, every=every, seed=seed,
                                            learning_rate=learning_rate, momentum=momentum)
    written = None
    if path is not None:
        (x, y), _ = data.xor()
        written = render_gif(model, frames, x, y, path, example=example, resolution=resolution,
                             fps=fps, dpi=dpi)
    return Training(model, train_state, frames, written)
