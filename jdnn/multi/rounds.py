"""Bayesian search's training: K trials of one structure as the members of one stacked program,
each member's slot refilled with the next asked configuration as soon as its trial ends.

The program is `jdnn.multi.members`' (K members' epochs vmapped, validation included, several
epochs per compiled call). Between calls the host reports each member's per-epoch metric to
Optuna's pruner, ends the trials that ran all their epochs, stopped early or were pruned, tells
Optuna their results, and puts the next configurations in the freed slots: a fresh state, its
own learning rate, momentum, dropout rate and penalty, all data, so nothing recompiles. A
stopped member still costs its share of every vmapped step (it is frozen by masking), so a slot
left empty until its round ends is compute spent on nothing; refilled, it trains the next trial.
Measured (`refill=False` is the other side; benchmarks/README.md, "Bayesian search"): refilling
ties stopping where pruners stop whole rounds early, and wins (1.13x) where pruned and
surviving trials share a round and training dominates.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jdnn.losses import Loss
from jdnn.metrics import Metrics
from jdnn.multi.members import (_ordered, _program, chunk_length, chunk_orders, fresh_tracker,
                                member_evaluator, stack)
from jdnn.multi.structure import Group, member_epoch_fn, member_hparams, member_state
from jdnn.train.history import History
from jdnn.train.state import TrainState

Asked = tuple[Any, dict[str, Any]]  # (an Optuna trial, its configuration)


@dataclasses.dataclass
class Slot:
    """The trial training in one member slot: its Optuna trial, configuration, history, and
    the epoch count of the program when it entered the slot."""

    trial: Any
    config: dict[str, Any]
    start: int
    history: History = dataclasses.field(default_factory=History)
    reported: int = 0


@dataclasses.dataclass
class Ended:
    """A finished trial: its number, configuration, history, the epoch its row reports
    (1-based, 0 if none) and its trained state (un-stacked)."""

    number: int
    config: dict[str, Any]
    history: History
    chosen: int
    train_state: TrainState


class Rounds:
    """Trains one structure's trials in slots; `run(first, refill)` returns the ended trials.

    The compiled program is kept, so the structure's next round of the same size reuses it.
    """

    def __init__(self, group: Group, config: dict[str, Any], asker: Any, x: jax.Array,
                 y: jax.Array, validation: tuple, *, key: jax.Array, loss: Loss,
                 metrics: Metrics, epochs: int, monitor: str, mode: str,
                 patience: int | None, keep_best: bool, epochs_per_call: int, prune: bool,
                 steps_per_epoch: int):
        self.group, self.asker, self.x, self.y, self.validation = group, asker, x, y, validation
        self.key, self.epochs, self.monitor, self.patience = key, epochs, monitor, patience
        self.keep_best, self.prune, self.steps_per_epoch = keep_best, prune, steps_per_epoch
        self.sign = 1.0 if mode == "max" else -1.0
        self.length = chunk_length(epochs, epochs_per_call)
        self.shape = (group.batch_size, *x.shape[1:])
        self.program = _program(member_epoch_fn(group, config, loss, metrics),
                                member_evaluator(group.model, loss, metrics), monitor,
                                self.sign, patience, keep_best)

    def _fresh(self, config: dict[str, Any]) -> TrainState:
        return member_state(self.group, config, self.key, self.shape)

    def _end(self, slot: Slot, j: int, carry: tuple, tracker: Any, pruned: bool) -> Ended:
        """Closes slot `j`: its history's stop reason, the chosen epoch, the state; tells
        Optuna."""
        history = slot.history
        best_epoch = int(tracker.best_epoch[j]) - slot.start
        chosen = best_epoch if self.keep_best and best_epoch > 0 else len(history)
        last = history.records[-1] if history.records else {}
        if pruned:
            history.stopped_by = "pruned"
            history.stop_reason = (f"pruned by {type(self.asker.study.pruner).__name__} at "
                                   f"epoch {last.get('epoch')} ({self.monitor} "
                                   f"{last.get(self.monitor, float('nan')):.4g})")
        elif bool(tracker.stopped[j]) and last:
            finite = np.isfinite(last["loss"])
            history.stopped_by = "early_stopping" if finite else "non_finite"
            history.stop_reason = (
                f"non-finite loss at epoch {last['epoch']}" if not finite
                else f"early stopping: {self.monitor} did not improve for {self.patience} "
                     f"epochs (best {self.sign * float(tracker.best[j]):.4g} at epoch "
                     f"{best_epoch})")
        value = history.records[chosen - 1].get(self.monitor) if chosen else None
        self.asker.tell(slot.trial, value, pruned=pruned)
        source = carry[1] if self.keep_best else carry[0]
        state = jax.tree.map(lambda leaf: leaf[j], source)
        return Ended(slot.trial.number, slot.config, history, chosen, state)

    def _report(self, slot: Slot) -> bool:
        """Reports the slot's new epochs to the pruner; whether Optuna prunes the trial."""
        prune = False
        for record in slot.history.records[slot.reported:]:
            prune = self.asker.report(slot.trial, record["epoch"], record[self.monitor])
        slot.reported = len(slot.history.records)
        return prune

    def run(self, first: list[Asked], refill: Callable[[], Asked | None], *,
            progress: Any = None) -> list[Ended]:
        """Trains `first` (one member each) and, in each slot that frees up, `refill()`'s next
        trial, until no slot has a trial; returns every ended trial."""
        slots: list[Slot | None] = [Slot(t, c, 0) for t, c in first]
        k = len(slots)
        states = stack([self._fresh(c) for _, c in first])
        hparams = member_hparams([c for _, c in first])
        best = jax.tree.map(jnp.copy, states) if self.keep_best else None
        carry, done, ended = (states, best, fresh_tracker(k)), 0, []
        while any(slots):
            began = time.perf_counter()
            orders = chunk_orders(carry[0], self.x.shape[0], self.length, self.steps_per_epoch)
            carry, (records, _, active) = self.program(carry, hparams, self.x, self.y,
                                                       self.validation, orders)
            records, active, tracker = jax.device_get((records, active, carry[2]))
            seconds = (time.perf_counter() - began) / self.length
            for e in range(self.length):
                record = {name: v[e] for name, v in records.items()}
                for j in np.flatnonzero(active[e]):
                    if slots[j] is not None:
                        slots[j].history.append({"epoch": done + e + 1 - slots[j].start,
                                                 **_ordered(record, j), "seconds": seconds})
            done += self.length
            freed = []
            for j, slot in enumerate(slots):
                if slot is None:
                    continue
                finished = done - slot.start >= self.epochs
                # Every epoch is reported (others' pruning compares against it); a trial that
                # has run all its epochs completes.
                pruned = self.prune and self._report(slot) and not finished \
                    and not tracker.stopped[j]
                if pruned or finished or tracker.stopped[j]:
                    ended.append(self._end(slot, j, carry, tracker, pruned))
                    slots[j] = None
                    freed.append(j)
                    if progress is not None:
                        progress.update(1)
            carry, hparams = self._refill(slots, freed, refill, carry, hparams, done)
        return ended

    def _refill(self, slots: list[Slot | None], freed: list[int], refill: Callable,
                carry: tuple, hparams: dict, done: int) -> tuple[tuple, dict]:
        """Puts the next trials into the freed slots (a fresh member each, its early-stopping
        bookkeeping reset) in one compiled update; a slot with no next trial stays frozen."""
        k = len(slots)
        stopped = np.array(jax.device_get(carry[2].stopped))
        placed = []
        for j in freed:
            nxt = refill()
            stopped[j] = nxt is None
            if nxt is not None:
                slots[j] = Slot(*nxt, done)
                placed.append((j, nxt[1]))
        if not placed:
            return carry[:2] + (carry[2]._replace(stopped=jnp.asarray(stopped)),), hparams
        # Always K entries, so the update compiles once: the padding's index is K, out of
        # range, and `mode="drop"` drops it.
        index = np.full(k, k, np.int32)
        index[:len(placed)] = [j for j, _ in placed]
        configs = [c for _, c in placed] + [placed[0][1]] * (k - len(placed))
        fresh = [self._fresh(c) for _, c in placed]
        fresh = stack(fresh + [fresh[0]] * (k - len(placed)))
        return _place(carry, hparams, jnp.asarray(index), fresh, member_hparams(configs),
                      jnp.asarray(stopped))


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _place(carry: tuple, hparams: dict, index: jax.Array, fresh: TrainState,
           fresh_hparams: dict, stopped: jax.Array) -> tuple[tuple, dict]:
    """Members `index` `(K,)` of the stacked states (and best states, and hyper-parameters)
    replaced by `fresh`'s, their early-stopping bookkeeping reset; indices equal to K are
    padding and dropped."""
    states, best, tracker = carry

    def put(old, new):
        return old.at[index].set(new, mode="drop")

    states = jax.tree.map(put, states, fresh)
    best = None if best is None else jax.tree.map(put, best, fresh)
    hparams = jax.tree.map(put, hparams, fresh_hparams)
    tracker = tracker._replace(best=tracker.best.at[index].set(-jnp.inf, mode="drop"),
                               best_epoch=tracker.best_epoch.at[index].set(0, mode="drop"),
                               wait=tracker.wait.at[index].set(0, mode="drop"),
                               stopped=stopped)
    return (states, best, tracker), hparams


def progress_bar(total: int, desc: str, show: bool):
    """A tqdm bar of trials ended, shown only when stderr is a terminal."""
    return tqdm(total=total, desc=desc, unit="trial", file=sys.stderr,
                disable=not show or not sys.stderr.isatty())
