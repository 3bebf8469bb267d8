"""The paper-style comparison table, as CIFAR pruning papers lay it out.

Input: one row per (method or dense, seed) run, with columns method, seed, test_acc,
dense_test_acc, params, dense_params, macs, dense_macs (accuracies as fractions, MACs per image)
and optionally model, dataset, data_label, target, protocol (the digest), protocol.<setting>,
train_epochs, latency_median_ms. Output: one table per group (model and dataset by default) with
the dense baseline first and one row per protocol digest of each method (:mod:`reports.rows`:
labelled by the FLOPs target and the settings that differ; repeats and sweep trials set aside),
cells mean +- std over seeds (n shown; one seed: no std), the budget in epochs, the best of our
rows at the same target and settings in bold, published rows interleaved after ours and marked, and
footnotes. The columns are declared in :mod:`reports.columns`; :func:`render` (from
:mod:`reports.render`) writes Markdown, LaTeX (booktabs), CSV or an HTML fragment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.schema import DENSE
from reports.columns import BY_KEY, COLUMNS, Column, Record, Table, needed, shown
from reports.reference import FLOPS_TOLERANCE, matches
from reports.render import format_table, latex_escape, render
from reports.rows import Row, dense_for, partition, prepare, row_labels, select
from reports.source import group_column
from reports.stats import Summary, paired_difference

__all__ = [
    "Table",
    "build_tables",
    "comparison_table",
    "format_table",
    "group_title",
    "groups",
    "latex_escape",
    "render",
    "row_labels",
    "selected_runs",
]

PUBLISHED_NOTE = (
    "published rows are copied from the papers (results/reference/published.csv): original CIFAR "
    "images, checkpoint selected on the test set; ours select on a validation split"
)
MATCH_NOTE = (
    "a published row sits beside our runs of the same method at the same named plan, or at a requested "
    "FLOPs target within {tolerance:.0f} pp of the row's FLOPs reduction; published rows at other operating "
    "points are left out"
)
PUBLISHED_STD_NOTE = "a published +- is the std the paper reports over its own runs"
NOT_REPRODUCIBLE = "not reproducible here"
NOT_REPRODUCIBLE_NOTE = (
    f"rows marked '{NOT_REPRODUCIBLE}' cannot be rerun by this harness (the reason follows the mark); "
    "they are shown for reference and matched to none of our runs"
)
BUDGET_NOTE = (
    "epochs: every training epoch that produced the model: the dense baseline's when the method starts "
    "from it, sparsity training and fine-tuning over all rounds; scratch-* rows count their own training "
    "only (Scratch-E: the dense model's epochs, Scratch-B: that times dense/pruned MACs, Liu et al. ICLR 2019)"
)
CONVENTION_NOTE = "{mark} the source counts FLOPs as {convention}; ours are conv+linear MACs per image"


@dataclass(frozen=True)
class _Asked:
    """What a report asked for besides the runs: published rows, paired differences, sweep trials."""

    reference: pd.DataFrame | None
    compare_to: str | None
    trials: bool


def build_tables(
    runs: pd.DataFrame,
    group_by: Sequence[str] = ("model", "dataset"),
    *,
    reference: pd.DataFrame | None = None,
    compare_to: str | None = None,
    trials: bool = False,
) -> list[Table]:
    """One :class:`Table` per group of ``runs``; ``reference`` (published rows) is interleaved.

    ``group_by`` names run columns (model, dataset, target, study, ...) or protocol settings
    (``dense.epochs``); an unknown name is a BenchError listing the valid ones. Sweep trials are
    left out (a footnote counts them) unless ``trials``."""
    runs = prepare(runs)
    columns = [group_column(runs, key) for key in group_by]
    runs = runs.assign(**{c: "all" for c in columns if c not in runs})
    asked = _Asked(reference, compare_to, trials)
    return [_table(group, dict(zip(group_by, key, strict=True)), asked) for key, group in groups(runs, columns)]


def groups(runs: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(key values, rows) per group of ``runs`` by ``keys``, sorted, NaN keys kept; no keys: one group."""
    if not keys:
        yield (), runs
        return
    for key, group in runs.groupby(list(keys), sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), group


def selected_runs(runs: pd.DataFrame, trials: bool = False) -> pd.DataFrame:
    """The runs the tables count (each (digest, method, seed) once; trials only when asked), with
    the label of the row each falls in (``row``) and that label without its target (``series``)."""
    runs, _ = select(prepare(runs), trials)
    labelled = runs.assign(row="", series="")
    for row in partition(runs):
        labelled.loc[row.runs.index, ["row", "series"]] = [row.label, row.name]
    return labelled


def _table(group: pd.DataFrame, key: dict[str, Any], asked: _Asked) -> Table:
    group, notes = select(group, asked.trials)
    rows = partition(group)
    records = _records(rows)
    columns = shown(needed(records))
    table = Table(group_title(group, key), [c.header for c in columns], [], [], [])
    for record in _interleaved(records, _published(asked.reference, key)):
        _append(table, record, columns)
    _mark_best(table)
    table.footnotes.extend(notes)
    _add_notes(table)
    if any(r.epochs is not None for r in records):
        table.legend.append(BUDGET_NOTE)
    if asked.compare_to:
        table.comparisons = _comparisons(rows, asked.compare_to)
    return table


def _interleaved(records: list[Record], published: pd.DataFrame) -> Iterator[Record]:
    """Our records in order, each published row right after the last of our rows it matches (same
    method, same named plan or a FLOPs target within reference.FLOPS_TOLERANCE), then the rows this
    harness cannot reproduce, labelled. A row that matches none of ours is left out: it is never
    shown beside a run at another target."""
    rows = list(published.itertuples(index=False))
    after: dict[int, list[int]] = {}
    for position, i in _last_match(records, published).items():
        after.setdefault(i, []).append(position)
    for i, record in enumerate(records):
        yield record
        yield from (_published_record(rows[p]) for p in after.get(i, []))
    yield from (_published_record(row) for row in rows if not row.reproducible)


def _last_match(records: list[Record], published: pd.DataFrame) -> dict[int, int]:
    """Published row position -> index of the last of our records it matches."""
    last: dict[int, int] = {}
    if published.empty:
        return last
    for i, record in enumerate(records):
        if record.kind == "ours":
            hits = matches(published, record.method, record.plan, record.target)
            last.update({position: i for position in hits.to_numpy().nonzero()[0].tolist()})
    return last


def group_title(group: pd.DataFrame, key: dict[str, Any]) -> str:
    """ "resnet20 on CIFAR-10 (JPEG copy) (target 0.5)": the model, the dataset as the runs label it
    (their ``data_label``, else the dataset's name) and any other group key; tables and figures share it."""
    label = (
        group["data_label"].dropna().iloc[0] if "data_label" in group and group["data_label"].notna().any() else None
    )
    model = _known(_named(group, key, "model"), "unknown model")
    dataset = label or _known(_named(group, key, "dataset"), "unknown dataset")
    parts = [str(v) for v in (model, dataset) if v not in (None, "all")]
    extra = [f"{k} {_known(v, 'none')}" for k, v in key.items() if k not in ("model", "dataset")]
    return " on ".join(parts[:2]) + (f" ({', '.join(extra)})" if extra else "") if parts else ", ".join(extra)


def _named(group: pd.DataFrame, key: dict[str, Any], column: str) -> Any:
    """The group's ``column`` value: its key, else the one value its runs share ("all" when they have
    several or no such column, None when none is known)."""
    if column in key:
        return key[column]
    if column not in group:
        return "all"
    values = group[column].dropna().unique()
    return None if len(values) == 0 else values[0] if len(values) == 1 else "all"


def _known(value: Any, missing: str) -> Any:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _records(rows: list[Row]) -> list[Record]:
    """The numbers of each row: the dense baseline's rows, then ours (see :func:`rows.partition`);
    a row's speed-up is over the dense row it was pruned from."""
    dense = [r for r in rows if r.method == DENSE]
    records = []
    for row in rows:
        base = None if row.method == DENSE else dense_for(row, dense)
        records.append(_record(row, None if base is None else _summary(base.runs, "latency_median_ms")))
    return records


def _summary(runs: pd.DataFrame, column: str, scale: float = 1.0) -> Summary | None:
    return Summary.of(runs[column] * scale) if column in runs else None


def _mean(runs: pd.DataFrame, column: str) -> float | None:
    values = pd.to_numeric(runs[column], errors="coerce").dropna() if column in runs else pd.Series(dtype=float)
    return None if values.empty else float(values.mean())


def _first(runs: pd.DataFrame, column: str) -> str | None:
    values = runs[column].dropna() if column in runs else pd.Series(dtype=object)
    return None if values.empty else str(values.iloc[0])


def _record(row: Row, dense_latency: Summary | None) -> Record:
    """The numbers of one row from its runs (one per seed: n is their count, the std is over them);
    the dense row has no change or reduction."""
    runs, dense_kind = row.runs, row.method == DENSE
    latency = _summary(runs, "latency_median_ms")
    speedup = None
    if latency is not None and dense_latency is not None and not dense_kind:
        speedup = dense_latency.mean / latency.mean
    return Record(
        label=row.label,
        kind="dense" if dense_kind else "ours",
        method=row.method,
        target=row.target,
        n=len(runs),
        base_acc=Summary.of(runs["dense_test_acc"] if not dense_kind else runs["test_acc"]),
        test_acc=Summary.of(runs["test_acc"]),
        acc_change=None if dense_kind else Summary.of(runs["test_acc"] - runs["dense_test_acc"]),
        params=float(runs["params"].mean()),
        params_red=None if dense_kind else Summary.of((1 - runs["params"] / runs["dense_params"]) * 100),
        macs=float(runs["macs"].mean()),
        flops_red=None if dense_kind else Summary.of((1 - runs["macs"] / runs["dense_macs"]) * 100),
        latency=latency,
        speedup=speedup,
        plan=_first(runs, "plan"),
        epochs=_mean(runs, "train_epochs"),
        images=_mean(runs, "train_images"),
        channels_red=None if dense_kind else _summary(runs, "channels_removed", 100),
        prune_rule=_first(runs, "prune_rule"),
        settings=row.settings,
    )


def _append(table: Table, record: Record, columns: Sequence[Column]) -> None:
    table.rows.append({c.header: c.cell(record) for c in columns})
    table.kinds.append(record.kind)
    table.records.append(record)


def _mark_best(table: Table) -> None:
    """Bold the best of our rows per column (ties too), among rows at the same FLOPs target and the
    same protocol settings: a row that pruned less, or trained from another baseline, is not "more
    accurate" than one that pruned more."""
    comparable: dict[Any, list[int]] = {}
    for i, kind in enumerate(table.kinds):
        if kind == "ours":
            record = table.records[i]
            comparable.setdefault((record.target, record.settings), []).append(i)
    for ours in comparable.values():
        if len(ours) >= 2:
            _mark_best_of(table, ours)


def _mark_best_of(table: Table, ours: list[int]) -> None:
    for column in COLUMNS:
        if column.better is None or column.header not in table.columns:
            continue
        scores = {i: column.score(table.records[i]) for i in ours}
        scores = {i: s for i, s in scores.items() if s is not None}
        if not scores:
            continue
        best = (max if column.better == "higher" else min)(scores.values())
        table.bold |= {
            (i, column.header) for i, s in scores.items() if math.isclose(s, best, rel_tol=1e-9, abs_tol=1e-12)
        }


def _add_notes(table: Table) -> None:
    if "published" in table.kinds:
        table.footnotes.extend(_published_notes(table))
    conventions = {r.convention for r in table.records if r.kind == "published" and r.convention != "MACs"}
    flops_red = BY_KEY["flops_red"].header
    for mark, convention in zip("†‡§", sorted(conventions), strict=False):
        table.footnotes.append(CONVENTION_NOTE.format(mark=mark, convention=convention))
        for i, record in enumerate(table.records):
            if record.convention == convention:
                table.rows[i][flops_red] += f" {mark}"


def _published_notes(table: Table) -> list[str]:
    """What the published rows are, how they were matched to ours, and what their marks mean."""
    published = [r for r in table.records if r.kind == "published"]
    notes = [PUBLISHED_NOTE, MATCH_NOTE.format(tolerance=100 * FLOPS_TOLERANCE)]
    if any(r.test_acc is not None and r.test_acc.std is not None for r in published):
        notes.append(PUBLISHED_STD_NOTE)
    if any(NOT_REPRODUCIBLE in r.label for r in published):
        notes.append(NOT_REPRODUCIBLE_NOTE)
    return notes


def _published(reference: pd.DataFrame | None, key: dict[str, Any]) -> pd.DataFrame:
    """Published rows of this group's model and dataset (all of them when the group has neither)."""
    if reference is None or reference.empty:
        return pd.DataFrame()
    match = reference
    for column in ("model", "dataset"):
        if column in key and key[column] != "all":
            match = match[match[column] == key[column]]
    return match.reset_index(drop=True)


def _published_record(r: Any) -> Record:
    """One row of published.csv (accuracies and reductions in %) as a record; "-" seeds, and the
    paper's own std over its runs where it gives one."""
    base, acc = float(r.baseline_acc) / 100, float(r.pruned_acc) / 100
    std = None if pd.isna(r.pruned_acc_std) else float(r.pruned_acc_std) / 100
    return Record(
        label=_published_label(r),
        kind="published",
        method=r.method,
        target=None if pd.isna(r.target) else float(r.target),
        n="-",
        base_acc=Summary(base, None, 1),
        test_acc=Summary(acc, std, 1),
        acc_change=Summary(acc - base, None, 1),
        params_red=None if pd.isna(r.params_reduction) else Summary(float(r.params_reduction), None, 1),
        flops_red=None if pd.isna(r.flops_reduction) else Summary(float(r.flops_reduction), None, 1),
        convention=r.flops_convention,
        source=r.source,
        plan=r.plan,
    )


def _published_label(r: Any) -> str:
    """e.g. "scratch-B (l1-a) [published, Liu et al. 2019]"; a row this harness cannot reproduce says
    so and why: "... [published, Wen et al. 2016; not reproducible here: <note>]"."""
    config = r.config if not r.variant or r.variant.lower() == r.method.lower() else f"{r.config}, {r.variant}"
    mark = f"published, {r.paper}" if r.paper else "published"
    if not r.reproducible:
        mark += f"; {NOT_REPRODUCIBLE}: {r.note}"
    return f"{r.method} ({config}) [{mark}]"


def _comparisons(rows: list[Row], reference_method: str) -> list[str]:
    """Paired test-accuracy differences of each of our rows against the ``reference_method`` row at
    the same target and settings, over the seeds both ran."""
    ours = [r for r in rows if r.method != DENSE]
    references = [r for r in ours if r.method == reference_method and not r.trial]
    if not references:
        return [f"no '{reference_method}' runs in this group to compare against"]
    lines = []
    for row in ours:
        reference = next((r for r in references if (r.target, r.settings) == (row.target, row.settings)), None)
        if row.method == reference_method or reference is None:
            continue
        diff = paired_difference(_by_seed(row.runs), _by_seed(reference.runs))
        if diff is None:
            continue
        at = "" if row.target is None else f" at the {row.target:.0%} target"
        lines.append(f"{row.name} - {reference.name}{at}: {diff.text()} pp of test accuracy")
    return lines


def _by_seed(runs: pd.DataFrame) -> pd.Series:
    return runs.groupby("seed")["test_acc"].mean()


# --- what bench run prints ------------------------------------------------------------------------


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One run's per-seed rows as one table (display text), the dense baseline first."""
    return build_tables(results, group_by=())[0].frame()
