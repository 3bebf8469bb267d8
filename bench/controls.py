"""The scratch control of Liu, Sun, Zhou, Huang and Darrell ("Rethinking the Value of Network
Pruning", ICLR 2019, arXiv 1810.05270; code: Eric-mingjie/rethinking-network-pruning): a method's pruned
architecture trained from a fresh initialisation. If it matches the pruned-and-fine-tuned network, the
method's value lies in the architecture it found, not in the weights it kept.

It is a control of the harness, not a :class:`bench.api.Method`: it scores no channel. It runs through
the same pipeline as a method (``bench.method_run``), whose prune step replays the source's plans and
re-draws every weight, and whose training phase uses the run's dense recipe (``RunConfig.dense``) for
the control's budget:

- ``scratch-E``: the dense model's epochs (Liu et al.'s Scratch-E; ``main_E.py --epochs 160`` on the
  paper schedule). In matched-budget mode (``--budget N``) the budget N takes the place of the dense
  epochs: every row then trains N epochs, the control included.
- ``scratch-B``: E times dense MACs / pruned MACs, rounded, so that it sees the same compute as the
  dense training (``main_B.py``: ``int(160 * flops_std / flops_small)``; we round, they truncate).
- ``scratch-pipeline``: the source method's whole training budget (dense + sparsity + fine-tune epochs
  over all rounds), our addition, named so that no one mistakes it for Liu et al.'s.

``--methods l1,scratch`` adds the rows of ``scratch.budgets`` (default E and B); a row can also be named
directly (``--methods l1,scratch-B``). The source is ``scratch.source``: a method of the same run, or
``run:<MLflow run id>`` of a finished method run; empty means the first other method of ``--methods``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import RUN_SOURCE, SCRATCH_BUDGETS, RunConfig
from bench.errors import BenchError
from bench.plan import PruningPlan

SCRATCH = "scratch"
DESCRIPTION = (
    "(control, not a method) another method's pruned architecture from a fresh init: rows scratch-E, "
    "scratch-B (Liu et al. 2019) and scratch-pipeline; see scratch.source and scratch.budgets"
)
ROWS = {f"{SCRATCH}-{budget}": budget for budget in SCRATCH_BUDGETS}  # row name -> budget


@dataclass(frozen=True)
class Inherited:
    """A pruned architecture another run produced. ``plans`` replay onto a fresh model of the same
    name; ``train_epochs`` is the source's whole training budget; ``macs`` and ``dense_macs`` are its
    pruned and unpruned conv+linear MACs per image; ``protocol`` its protocol digest when known."""

    source: str  # what was asked for: a method name in this run, or "run:<MLflow run id>"
    run_id: str | None  # the source's MLflow run, when known
    plans: tuple[PruningPlan, ...]
    train_epochs: int
    macs: int
    dense_macs: int
    protocol: str = ""

    @property
    def macs_ratio(self) -> float:
        """Dense over pruned MACs: Scratch-B's epoch multiplier."""
        return self.dense_macs / self.macs


@dataclass(frozen=True)
class ScratchControl:
    """One scratch row: its budget ("E", "B" or "pipeline") and its architecture's source."""

    name: str  # "scratch-E", "scratch-B" or "scratch-pipeline"
    budget: str
    source: str  # a method of this run or "run:<MLflow run id>"

    def epochs(self, cfg: RunConfig, source_epochs: int, macs_ratio: float) -> int:
        """Training epochs: E is the dense epochs (or the matched budget), B scales E by dense/pruned
        MACs, pipeline is the source's own total; at least 1."""
        e_epochs = cfg.budget if cfg.budget is not None else cfg.dense.epochs
        epochs = {"E": e_epochs, "B": round(e_epochs * macs_ratio), "pipeline": source_epochs}[self.budget]
        return max(1, epochs)


def is_control(name: str) -> bool:
    return name == SCRATCH or name in ROWS


def expand(cfg: RunConfig) -> tuple[str, ...]:
    """``--methods`` with ``scratch`` replaced by one row per configured budget, in place."""
    names: list[str] = []
    for name in cfg.methods:
        rows = [f"{SCRATCH}-{b}" for b in cfg.scratch.budgets] if name == SCRATCH else [name]
        names += [row for row in rows if row not in names]
    return tuple(names)


def controls(cfg: RunConfig) -> dict[str, ScratchControl]:
    """Every scratch row of the run, with its source checked: a method of this run that prunes, or
    ``run:<id>`` (read from the store before training, ``bench.inherit.external_sources``)."""
    rows = [name for name in expand(cfg) if name in ROWS]
    if not rows:
        return {}
    source = cfg.scratch.source or _first_method(cfg)
    if not source.startswith(RUN_SOURCE) and (source not in cfg.methods or is_control(source)):
        methods = ", ".join(m for m in cfg.methods if not is_control(m)) or "none"
        raise BenchError(
            f"scratch.source '{source}' is not a pruning method of this run (--methods: {methods}); "
            "add it to --methods or set scratch.source=run:<MLflow run id>"
        )
    return {name: ScratchControl(name, ROWS[name], source) for name in rows}


def _first_method(cfg: RunConfig) -> str:
    methods = [m for m in cfg.methods if not is_control(m)]
    if not methods:
        raise BenchError(
            "the scratch control needs an architecture to train: list a pruning method in --methods "
            "(e.g. --methods l1,scratch) or set scratch.source=run:<MLflow run id>"
        )
    return methods[0]
