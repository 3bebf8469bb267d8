"""Slot accounting: which slot a trial fills, whether it is surplus, and whether work is left.

Every trial fills a *slot*: search trials take slots ``n0..n<N-1>`` in creation order, grid trials
take their cell (``cell:<json>``). A slot counts once: a trial whose slot a lower-numbered live
trial (waiting, running, complete or pruned) already holds, or a search trial past slot N-1, is
*surplus*. It ends at once as FAIL with ``bench.surplus`` and counts nowhere, so two workers that
race for the last slot never both run it. A retry (Optuna's heartbeat callback enqueues a copy of a
trial whose worker died) inherits its original's user attributes, and with them its slot.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.schema import TrialAttr
from bench.sweeps.spec import SweepSpec

SURPLUS = TrialAttr.SURPLUS  # True on a trial that ended because its slot was taken
SLOT = TrialAttr.SLOT  # the slot a trial fills
CELL = TrialAttr.CELL  # a grid trial's cell (sorted-key JSON)
RETRY_OF = "failed_trial"  # Optuna's system attribute on a heartbeat retry: the failed trial's number
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def slot_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """The slot a trial fills: its grid cell, the slot its failed original filled (a retry), or for a
    fresh search trial ``n<k>`` with k = the fresh, non-surplus trials numbered below it."""
    if CELL in trial.user_attrs:
        return "cell:" + trial.user_attrs[CELL]
    if SLOT in trial.user_attrs:  # a retry inherits its original's user attributes
        return trial.user_attrs[SLOT]
    fresh = [
        t for t in trials if t.number < trial.number and CELL not in t.user_attrs and RETRY_OF not in t.system_attrs
    ]
    return f"n{sum(not t.user_attrs.get(SURPLUS) for t in fresh)}"


def is_surplus(trial: FrozenTrial, slot: str, trials: list[FrozenTrial], spec: SweepSpec) -> bool:
    """Whether ``trial`` must end at once: its slot is past the search's N, not a grid cell, or taken."""
    if spec.kind == "grid" and not slot.startswith("cell:"):
        return True  # a grid has nothing to sample: only enqueued cells run
    if spec.kind == "search" and slot.startswith("n") and int(slot[1:]) >= spec.trials:
        return True
    return any(
        t.number < trial.number and t.state in LIVE and not t.user_attrs.get(SURPLUS) and stored_slot(t) == slot
        for t in trials
    )


def stored_slot(trial: FrozenTrial) -> str | None:
    """The slot a trial recorded (None for one that never started)."""
    if CELL in trial.user_attrs:
        return "cell:" + trial.user_attrs[CELL]
    return trial.user_attrs.get(SLOT)


def work_left(study: optuna.Study, spec: SweepSpec) -> str:
    """``"run"`` when a trial can start, ``"wait"`` while only others' running trials remain (one may
    fail and come back as a retry), ``"done"`` otherwise."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    if spec.kind == "search":  # a failed trial keeps its slot: it counts as a trial, and is not re-run
        filled = {stored_slot(t) for t in trials if not t.user_attrs.get(SURPLUS)}
        if sum(s is not None and s.startswith("n") for s in filled) < spec.trials:
            return "run"
    if any(t.state == TrialState.RUNNING for t in trials):
        return "wait"
    return "done"
