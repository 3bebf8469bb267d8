"""How the CLI shows a finished run: the comparison table (with the published rows when asked)
and its footnotes, printed; the table is also returned for the parent run's artifacts.

This is the presentation layer: the only place besides the ``report`` command where ``bench``
reaches into ``reports``. The runner calls it through its ``present`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from bench.runner import Outcome
from bench.schema import DENSE, Artifact


def table_printer(say: Callable[[str], None] = print) -> Callable[[Outcome], Mapping[str, pd.DataFrame]]:
    """A ``present`` callback for ``runner.run`` that prints through ``say``."""

    def present(outcome: Outcome) -> Mapping[str, pd.DataFrame]:
        from reports.reference import published_for
        from reports.tables import build_tables, comparison_table, format_table

        cfg = outcome.cfg
        reference = published_for(cfg.model, outcome.data_name) if cfg.published else None
        runs = with_rule(outcome)
        shown = build_tables(runs, group_by=(), reference=reference)[0]
        say("\n" + format_table(shown.frame(), title=outcome.title))
        for note in shown.footnotes:
            say(f"- {note}")
        return {Artifact.COMPARISON_TABLE: comparison_table(runs)}

    return present


def with_rule(outcome: Outcome) -> pd.DataFrame:
    """The results with the run's pruning rule on every method row (what ``bench report`` reads from
    the tags): the target and named plan match published rows, the rule shows the channels column."""
    prune, results = outcome.cfg.prune, outcome.results
    pruned = results["method"] != DENSE
    return results.assign(
        prune_rule=pd.Series(prune.rule, index=results.index).where(pruned),
        target=pd.Series(prune.target_flops_reduction, index=results.index, dtype=float).where(pruned),
        plan=pd.Series(prune.plan, index=results.index, dtype=object).where(pruned),
    )
