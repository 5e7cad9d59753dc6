"""What the NumPy reference needs to know about the jax side of a check: the twins of the loss
(`jdnn.losses`' own are registered here) and of the penalty, the model's reference network, and
the very dropout masks the jax side draws. A missing twin is a clear error naming both ways out:
register one, or check against finite differences alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from jdnn import losses as losses_lib
from jdnn import reference
from jdnn.core import Layer, trait, walk
from jdnn.regularizers import Penalty


# jdnn.losses' own losses and their twins; a user's are registered the same way.
reference.register_loss(losses_lib.mse, reference.network.BUILTIN_LOSSES["mse"])
reference.register_loss(losses_lib.binary_cross_entropy,
                        reference.network.BUILTIN_LOSSES["binary_cross_entropy"])
reference.register_loss(losses_lib.softmax_cross_entropy,
                        reference.network.BUILTIN_LOSSES["softmax_cross_entropy"])

_WAYS_OUT = ("check it against finite differences alone with "
             "check_gradients(..., oracles=('finite_differences',))")


def _reference_loss(loss: Callable) -> tuple[Callable, dict[str, Any]]:
    """`(numpy twin, its keyword arguments)` for the loss, or a clear error with both ways out."""
    found = reference.loss_twin(loss)
    if found is None:
        raise ValueError(f"check_gradients: the NumPy reference has no twin for the loss "
                         f"{getattr(loss, '__name__', loss)!r}; register one with "
                         f"jdnn.reference.register_loss(loss, numpy_fn), numpy_fn(outputs, y) -> "
                         f"(per-example loss, its gradient), or {_WAYS_OUT}")
    twin, kwargs = found
    try:
        inspect.signature(twin).bind(None, None, **kwargs)
    except TypeError as error:
        raise ValueError(f"check_gradients: the loss's reference twin "
                         f"{getattr(twin, '__name__', twin)!r} cannot take the keyword arguments "
                         f"{kwargs} of the functools.partial ({error}); register a twin for this "
                         f"loss, or {_WAYS_OUT}") from None
    return found


def _reference_net(model: Layer) -> Any:
    """The model's NumPy twin, or a clear error naming the missing kind and both ways out."""
    try:
        return reference.build(model.spec)
    except reference.UnknownLayerError as error:
        raise reference.UnknownLayerError(f"check_gradients: {error}; or {_WAYS_OUT}") from None


def _reference_penalty(penalty: Any) -> dict[str, Any]:
    if penalty is None:
        return {"l1": 0.0, "l2": 0.0}
    if isinstance(penalty, Penalty):
        return {"l1": penalty.l1, "l2": penalty.l2, "where": penalty.where}
    raise ValueError(f"check_gradients needs penalty=jdnn.regularizers.penalty(l1=..., l2=...) "
                     f"so the reference can twin it, got {penalty!r}; or {_WAYS_OUT}")


def _mask_replay(spec, key) -> Callable[[str, tuple, float], np.ndarray]:
    """`masks(path, shape, rate)` for the reference: the very keep mask each stochastic layer
    (a kind declaring `stochastic`, e.g. Dropout) draws, from the key the combinators hand it."""
    draws = {node.path: (trait(node.spec, "stochastic"), node.key) for node in walk(spec, key)
             if trait(node.spec, "stochastic") is not None}

    def masks(path, shape, rate):
        draw, layer_key = draws[path]
        return np.asarray(draw(layer_key, rate, shape))

    return masks
