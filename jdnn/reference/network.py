"""The NumPy twin of a jdnn model, built from its spec alone.

`build(spec)` reads what a model is (its kinds, hyper-parameters and children) and wires the
hand-written layers of `jdnn.reference.layers` into a network with a forward pass that keeps
every layer's cache and a backward pass that walks the caches in reverse: backprop, written out.
Parameters, state and gradients are nested dicts with jdnn's own keys (`"2_dense"`), so the
gradients have exactly the tree structure of the params `jax.grad` returns.

The spec may be a `jdnn.Spec` or its `to_dict()` form; nothing here imports jdnn's JAX code.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from jdnn.reference import losses, regularizers
from jdnn.reference.layers import KINDS
from jdnn.reference.padded import Padded, rewrap, sequence_mask, unpad
from jdnn.reference.registry import COMBINATORS, EXTRAS, register_combinator

# `masks(path, shape, rate) -> bool array` gives each Dropout its keep mask (True = kept), or a
# dict from layer path to mask; `numpy_masks(rng)` draws them with NumPy for reference-only runs.
# `rate` is the spec's rate, or, for a `Dropout(..., rate_in_state=True)`, the one in its state.
Masks = Callable[[str, tuple, float], np.ndarray] | Mapping[str, np.ndarray] | None


class UnknownLayerError(ValueError):
    """The model holds a layer kind the NumPy reference has no twin for."""


class Node(NamedTuple):
    """One layer of the twin: `forward(params, state, x, train, masks) -> (y, cache, state)` and
    `backward(params, cache, dy) -> (dx, dparams)`."""

    forward: Callable
    backward: Callable


def _normalize(spec: Any) -> tuple[str, dict, list]:
    """`(kind, hparams, children)` from a `Spec` or its `to_dict()`."""
    if isinstance(spec, Mapping):
        return spec["kind"], dict(spec.get("hparams", {})), list(spec.get("children", []))
    return spec.kind, dict(spec.hparams), list(spec.children)


def child_name(index: int, kind: str) -> str:
    """The key a combinator files its child under: jdnn's convention, `"2_dense"`."""
    return f"{index}_{kind.lower()}"


def _hparam(value: Any) -> Any:
    """A spec's hyper-parameter as a twin takes it: lists as tuples, NumPy scalars as Python
    ones (a `np.float64` rate or slope would otherwise turn float32 arithmetic into float64)."""
    if isinstance(value, np.generic):
        return value.item()
    return tuple(value) if isinstance(value, list) else value


def _leaf(kind: str, hparams: dict, path: str) -> Node:
    """A layer's twin wired into the network: the spec's hyper-parameters its `forward` names,
    and the extras it asks for (`state`, `train`, `keep_mask`; see `jdnn.reference.registry`)."""
    if kind not in KINDS:
        raise UnknownLayerError(
            f"the NumPy reference has no twin for layer kind {kind!r} at {path or '<root>'}; it "
            f"knows {sorted(KINDS)} and the combinators {sorted(COMBINATORS)}. Register one with "
            f"jdnn.reference.register_layer({kind!r}, forward, backward)")
    impl = KINDS[kind]
    takes = inspect.signature(impl.forward).parameters
    kwargs = {name: _hparam(value) for name, value in hparams.items()
              if name in takes and name not in EXTRAS}

    def forward(params, state, x, train, masks):
        x, lengths = unpad(x)
        extras = {}
        if "lengths" in takes:  # a twin that mixes time steps sees the lengths (jdnn.padded)
            extras["lengths"] = lengths
        if "state" in takes:
            extras["state"] = state
        if "train" in takes:
            extras["train"] = train
        if "keep_mask" in takes:  # a stochastic layer: the caller's mask, drawn at its rate
            rate = _state_rate(state, path) if hparams.get("rate_in_state") \
                else float(hparams["rate"])
            extras["keep_mask"] = _mask_for(masks, path, x.shape, rate) if train and rate > 0 \
                else None
            if "rate" in takes:
                extras["rate"] = rate
        out = impl.forward(params, x, **{**kwargs, **extras})
        y, cache, new_state = out if "state" in takes else (*out, state)
        if "lengths" not in takes:
            y = rewrap(x, lengths, y, path)
        return y, cache, new_state

    return Node(forward, impl.backward)


def _state_rate(state: Mapping, path: str) -> float:
    """The drop rate a `Dropout(rate, rate_in_state=True)` holds in its state, `{"rate": r}`."""
    if "rate" not in state:
        raise ValueError(f"Dropout at {path or '<root>'} has rate_in_state=True and reads its rate "
                         f"from state['rate'], but the state has the keys {sorted(state)}; pass "
                         f"the state the model's init returned")
    return float(np.asarray(state["rate"]))


def _mask_for(masks: Masks, path: str, shape: tuple, rate: float) -> np.ndarray:
    if masks is None:
        raise ValueError(f"Dropout at {path or '<root>'} in training mode needs keep masks: pass "
                         f"masks=numpy_masks(rng), a dict path -> mask, or train=False")
    mask = masks[path] if isinstance(masks, Mapping) else masks(path, tuple(shape), rate)
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"Dropout at {path}: the keep mask has shape {mask.shape}, the input "
                         f"{tuple(shape)}")
    return mask


def _serial(children: list[tuple[str, Node]], hparams: dict) -> Node:
    del hparams

    def forward(params, state, x, train, masks):
        caches, new_state = [], {}
        for name, node in children:
            x, cache, new_state[name] = node.forward(params[name], state[name], x, train, masks)
            caches.append(cache)
        return x, caches, new_state

    def backward(params, caches, dy):
        """Chain rule through the sequence: each layer turns dL/d(its output) into dL/d(its
        input), last layer first; each layer's dparams are filed under its key."""
        grads = {}
        for (name, node), cache in zip(reversed(children), reversed(caches)):
            dy, grads[name] = node.backward(params[name], cache, dy)
        return dy, dict(reversed(list(grads.items())))

    return Node(forward, backward)


def _residual(children: list[tuple[str, Node]], hparams: dict) -> Node:
    del hparams
    [(name, inner)] = children

    def forward(params, state, x, train, masks):
        y, cache, inner_state = inner.forward(params[name], state[name], x, train, masks)
        (xv, lengths), (yv, _) = unpad(x), unpad(y)
        return (xv + yv if lengths is None else Padded(xv + yv, lengths)), cache, \
            {name: inner_state}

    def backward(params, cache, dy):
        """y = x + f(x), so dL/dx = dy + f'(x)^T dy: the skip path passes dy through unchanged."""
        dx, dparams = inner.backward(params[name], cache, dy)
        return dy + dx, {name: dparams}

    return Node(forward, backward)


def _branches(children: list[tuple[str, Node]], hparams: dict) -> Node:
    merge = hparams.get("merge", "concat")

    def forward(params, state, x, train, masks):
        outputs, caches, new_state = [], [], {}
        for name, node in children:
            y, cache, new_state[name] = node.forward(params[name], state[name], x, train, masks)
            outputs.append(y)
            caches.append(cache)
        kept = all(isinstance(y, Padded) for y in outputs)  # lengths survive if every branch
        lengths = outputs[0].lengths if kept else None     # kept a time axis
        outputs = [unpad(y)[0] for y in outputs]
        sizes = [y.shape[-1] for y in outputs]
        y = np.concatenate(outputs, axis=-1) if merge == "concat" else sum(outputs)
        return (y if lengths is None else Padded(y, lengths)), (caches, sizes), new_state

    def backward(params, cache, dy):
        """y = merge(f_1(x), ..., f_k(x)). Concat: branch i gets its own slice of dy (the last
        axis split at the branches' widths); sum: every branch gets all of dy. Each branch
        depends on the same x, so dL/dx = sum_i f_i'(x)^T dy_i."""
        caches, sizes = cache
        pieces = np.split(dy, np.cumsum(sizes)[:-1], axis=-1) if merge == "concat" \
            else [dy] * len(children)
        dx, grads = 0.0, {}
        for (name, node), branch_cache, piece in zip(children, caches, pieces):
            branch_dx, grads[name] = node.backward(params[name], branch_cache, piece)
            dx = dx + branch_dx
        return dx, grads

    return Node(forward, backward)


register_combinator("serial", _serial)
register_combinator("residual", _residual)
register_combinator("branches", _branches)
# bidirectional(layer): the layer and its reversed copy (both in the spec) on the same input,
# merged by concat or sum: exactly branches' forward and backward
register_combinator("bidirectional", _branches)


def _build(spec: Any, path: str) -> Node:
    kind, hparams, children = _normalize(spec)
    if not children and kind not in COMBINATORS:
        return _leaf(kind, hparams, path)
    if kind not in COMBINATORS:
        raise UnknownLayerError(
            f"the NumPy reference has no twin for the combinator {kind!r} at {path or '<root>'}; "
            f"it knows {sorted(COMBINATORS)}. Register one with "
            f"jdnn.reference.register_combinator({kind!r}, build)")
    named = []
    for i, child in enumerate(children):
        name = child_name(i, _normalize(child)[0])
        named.append((name, _build(child, f"{path}/{name}" if path else name)))
    return COMBINATORS[kind](named, hparams)


def _as_numpy(tree: Any, dtype: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _as_numpy(v, dtype) for k, v in tree.items()}
    return np.asarray(tree, dtype)


class Network:
    """The NumPy twin of a jdnn model: forward, backward, and the loss with its gradients.

    Args:
        spec: the model's `spec` (or `spec.to_dict()`).

    Examples:
        >>> net = jdnn.reference.build(model.spec)
        >>> loss, grads, new_state = net.loss_and_grads(params, state, x, y, loss="mse")
    """

    def __init__(self, spec: Any):
        self.spec = spec
        self.root = _build(spec, "")

    def forward(self, params, state, x, *, train: bool = False, masks: Masks = None):
        """Runs the network, keeping every layer's cache.

        Args:
            params: the model's params (nested dicts of arrays, as jdnn's `init` returns).
            state: the model's state (batch-norm running statistics, the rates of
                `Dropout(..., rate_in_state=True)` layers).
            x: the input batch, `(B, ...)`.
            train: batch statistics and dropout (True) or running statistics (False).
            masks: the dropout keep masks (see `Masks`), needed when training with dropout.

        Returns:
            `(y, cache, new_state)`.
        """
        return self.root.forward(params, state, x, train, masks)

    def backward(self, params, cache, dy):
        """Backprop from `dy = dL/dy` to `(dL/dx, dL/dparams)`."""
        return self.root.backward(params, cache, dy)

    def loss_and_grads(self, params, state, x, y, *,
                       loss: str | Callable = "softmax_cross_entropy",
                       label_smoothing: float = 0.0, loss_kwargs: Mapping[str, Any] | None = None,
                       mask=None, l1: float = 0.0, l2: float = 0.0,
                       where: Any = regularizers.is_weight, train: bool = True,
                       masks: Masks = None, dtype: Any = np.float64):
        """The objective jdnn's train step minimizes, and its gradient w.r.t. every parameter.

        objective = masked mean over examples of `loss(outputs, y)` + l1 * sum|w| + l2 * sum w^2,
        the penalties over the leaves `where` selects (weights only, by default).

        Args:
            params: as `jdnn`'s `init` returns them (any array type; cast to `dtype`).
            state: as `jdnn`'s `init` returns it (any array type; cast to `dtype`).
            x: inputs `(B, ...)`; y: targets (integer labels stay integers).
            loss: `"mse"`, `"binary_cross_entropy"` or `"softmax_cross_entropy"`, or a loss twin
                `numpy_fn(outputs, y, **loss_kwargs) -> (loss (B,), dloss like outputs)` (see
                `jdnn.reference.registry`).
            label_smoothing: for the softmax cross-entropy.
            loss_kwargs: keyword arguments for a loss twin.
            mask: `(B,)`, which examples count (all by default).
            l1: the L1 penalty's strength.
            l2: the L2 penalty's strength.
            where: which leaves the penalties cover (path predicate or regex).
            train: training mode (batch statistics, dropout).
            masks: dropout keep masks, when training with dropout.
            dtype: the float type of the computation (float64 by default).

        Returns:
            `(objective, grads, new_state)`: `objective` a NumPy scalar of `dtype`; `grads` has
            the params' tree structure. Every array in them, and every intermediate, is of
            `dtype` (integer labels and boolean masks aside).
        """
        params, state = _as_numpy(params, dtype), _as_numpy(state, dtype)
        x = as_input(x, dtype)
        batch = unpad(x)[0].shape[0]
        y = np.asarray(y)
        if y.dtype.kind == "f":
            y = y.astype(dtype)
        if batch != y.shape[0]:
            raise ValueError(f"x has {batch} examples but y has {y.shape[0]}; they must "
                             f"have the same length along the batch axis")
        outputs, cache, new_state = self.forward(params, state, x, train=train, masks=masks)
        if isinstance(loss, str):
            twin, loss_kwargs = BUILTIN_LOSSES[loss], (
                {"label_smoothing": label_smoothing} if loss == "softmax_cross_entropy" else {})
        else:
            twin = loss
        twin = functools.partial(twin, **dict(loss_kwargs or {}))
        values, dvalues = (_per_sequence(twin, outputs, y) if isinstance(outputs, Padded)
                           else twin(outputs, y))
        outputs = unpad(outputs)[0]
        values, dvalues = np.asarray(values, dtype), np.asarray(dvalues, dtype)
        if values.shape != (batch,) or dvalues.shape != outputs.shape:
            raise ValueError(f"the loss twin {getattr(twin, '__name__', twin)!r} must return "
                             f"(loss of shape ({batch},), dloss of the outputs' shape "
                             f"{outputs.shape}), got shapes {values.shape} and {dvalues.shape}")
        weights = losses.mean_weights(mask, batch, dtype)
        objective = np.sum(weights * values)
        dy = dvalues * weights.reshape((-1,) + (1,) * (outputs.ndim - 1))
        _, grads = self.backward(params, cache, dy)
        if l1:
            objective += l1 * regularizers.l1(params, where=where)
            grads = _add(grads, regularizers.l1_grad(params, where=where), l1)
        if l2:
            objective += l2 * regularizers.l2(params, where=where)
            grads = _add(grads, regularizers.l2_grad(params, where=where), l2)
        return objective, grads, new_state


def as_input(x: Any, dtype: Any) -> Any:
    """The input batch as the twin takes it: floating inputs in `dtype`, integer ones (token ids)
    kept, a padded batch as `Padded(values, integer lengths)`."""
    values, lengths = unpad(x)
    values = np.asarray(values)
    if values.dtype.kind not in "iub":
        values = values.astype(dtype)
    return values if lengths is None else Padded(values, np.asarray(lengths))


def _per_sequence(twin: Callable, outputs: Padded, y: np.ndarray):
    """A loss twin over padded per-step outputs `(B, T, ...)` with targets `(B, T, ...)`: each
    step is scored as if it were an example, and example b's loss is the mean over its real
    steps, `loss_b = sum_{t < len_b} loss_bt / max(len_b, 1)`; hence
    `dloss_b / d outputs_bt = dloss_bt * [t < len_b] / max(len_b, 1)`."""
    values, lengths = outputs
    batch, steps = values.shape[:2]
    step_values, step_grads = twin(values.reshape(batch * steps, *values.shape[2:]),
                                   y.reshape(batch * steps, *y.shape[2:]))
    real = sequence_mask(lengths, steps)
    share = real / np.maximum(np.asarray(lengths), 1)[:, None].astype(values.dtype)
    per_example = np.where(real, np.asarray(step_values).reshape(batch, steps), 0).sum(axis=1)
    per_example = per_example / np.maximum(np.asarray(lengths), 1).astype(values.dtype)
    grads = np.asarray(step_grads).reshape(values.shape) * share.reshape(
        share.shape + (1,) * (values.ndim - 2)).astype(values.dtype)
    return per_example, grads


def _twin(value_fn: Callable, grad_fn: Callable) -> Callable:
    """A loss twin from a per-example loss and its weighted gradient: unit weights give each
    example's own gradient."""
    @functools.wraps(value_fn)  # its signature: the keyword arguments the twin takes
    def twin(outputs, y, **kwargs):
        ones = np.ones(outputs.shape[0], outputs.dtype)
        return value_fn(outputs, y, **kwargs), grad_fn(outputs, y, ones, **kwargs)

    return twin


BUILTIN_LOSSES = {
    "mse": _twin(losses.mse, losses.mse_grad),
    "binary_cross_entropy": _twin(losses.binary_cross_entropy,
                                  losses.binary_cross_entropy_grad),
    "softmax_cross_entropy": _twin(losses.softmax_cross_entropy,
                                   losses.softmax_cross_entropy_grad),
}


def _add(tree, other, scale):
    if isinstance(tree, Mapping):
        return {k: _add(v, other[k], scale) for k, v in tree.items()}
    return tree + scale * other


def build(spec: Any) -> Network:
    """The NumPy twin of the model described by `spec`; raises `UnknownLayerError` for a kind
    the reference does not know, naming it and its path and how to register a twin."""
    return Network(spec)


def numpy_masks(rng: np.random.Generator) -> Callable[[str, tuple, float], np.ndarray]:
    """Dropout keep masks drawn with NumPy, for training on the reference alone."""
    return lambda path, shape, rate: rng.random(shape) >= rate
