"""The paper-style comparison table, as CIFAR pruning papers lay it out.

Input: one row per (method or dense, seed) run, with columns method, seed, test_acc,
dense_test_acc, params, dense_params, macs, dense_macs (accuracies as fractions, MACs per image)
and optionally model, dataset, data_label, target, latency_median_ms. Output: one table per group
(model and dataset by default) with the dense baseline first and one row per method (and per
FLOPs target when a method ran at several), cells mean +- std over seeds (n shown; one seed: no
std), the best of our rows in bold, published rows interleaved after ours and marked, and
footnotes. The columns are declared in :mod:`reports.columns`; :func:`render` (from
:mod:`reports.render`) writes Markdown, LaTeX (booktabs), CSV or an HTML fragment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from reports.columns import BY_KEY, COLUMNS, Column, Record, Table, shown
from reports.render import format_table, latex_escape, render
from reports.stats import Summary, paired_difference

__all__ = [
    "Table",
    "build_tables",
    "comparison_table",
    "format_table",
    "groups",
    "latex_escape",
    "render",
    "row_labels",
]

PUBLISHED_NOTE = (
    "published rows are copied from the papers (results/reference/published.csv): original CIFAR "
    "images, checkpoint selected on the test set; ours select on a validation split"
)
CONVENTION_NOTE = "{mark} the source counts FLOPs as {convention}; ours are conv+linear MACs per image"


def build_tables(
    runs: pd.DataFrame,
    group_by: Sequence[str] = ("model", "dataset"),
    *,
    reference: pd.DataFrame | None = None,
    compare_to: str | None = None,
) -> list[Table]:
    """One :class:`Table` per group of ``runs``; ``reference`` (published rows) is interleaved."""
    runs = runs.copy()
    for column in group_by:
        if column not in runs:
            runs[column] = "all"
    keys = list(group_by)
    return [
        _table(group, dict(zip(keys, key, strict=True)), reference, compare_to) for key, group in groups(runs, keys)
    ]


def groups(runs: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], pd.DataFrame]]:
    """(key values, rows) per group of ``runs`` by ``keys``, sorted, NaN keys kept; no keys: one group."""
    if not keys:
        yield (), runs
        return
    for key, group in runs.groupby(list(keys), sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), group


def _table(group: pd.DataFrame, key: dict[str, Any], reference: pd.DataFrame | None, compare_to: str | None) -> Table:
    records = _records(group)
    columns = shown(with_latency=any(r.latency is not None for r in records))
    table = Table(_title(group, key), [c.header for c in columns], [], [], [])
    for record in _interleaved(records, _published(reference, key)):
        _append(table, record, columns)
    _mark_best(table)
    _add_notes(table)
    if compare_to:
        table.comparisons = _comparisons(group, compare_to)
    return table


def _interleaved(records: list[Record], published: dict[str, list[Record]]) -> Iterator[Record]:
    """Our records in order, each method's published rows right after all of its rows, then the rest."""
    for i, record in enumerate(records):
        yield record
        last_of_method = i + 1 == len(records) or records[i + 1].method != record.method
        if record.kind == "ours" and last_of_method:
            yield from published.pop(record.method, [])
    for rest in published.values():
        yield from rest


def _title(group: pd.DataFrame, key: dict[str, Any]) -> str:
    label = (
        group["data_label"].dropna().iloc[0] if "data_label" in group and group["data_label"].notna().any() else None
    )
    model = _known(key.get("model"), "unknown model")
    dataset = label or _known(key.get("dataset"), "unknown dataset")
    parts = [str(v) for v in (model, dataset) if v not in (None, "all")]
    extra = [f"{k} {v}" for k, v in key.items() if k not in ("model", "dataset")]
    return " on ".join(parts[:2]) + (f" ({', '.join(extra)})" if extra else "") if parts else ", ".join(extra)


def _known(value: Any, missing: str) -> Any:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _records(group: pd.DataFrame) -> list[Record]:
    """The dense row, then one per (method, target) in first-seen order, as numbers."""
    dense = group[group["method"] == "dense"]
    if "baseline_key" in dense and dense["baseline_key"].notna().any():  # one baseline, logged by several runs
        dense = dense.drop_duplicates(subset=["baseline_key"])
    else:
        dense = dense.drop_duplicates(subset=["seed"])
    dense_latency = Summary.of(dense["latency_median_ms"]) if "latency_median_ms" in dense else None
    records = []
    if not dense.empty:
        records.append(_record("dense", "dense", dense, dense_latency))
    ours = group[group["method"] != "dense"]
    ours = ours.assign(_base=_labels(ours), _label=row_labels(ours))
    for base in dict.fromkeys(ours["_base"]):  # methods in first-seen order, then their targets ascending
        rows = ours[ours["_base"] == base]
        for label in sorted(dict.fromkeys(rows["_label"]), key=lambda lb: _target_of(rows, lb)):
            part = rows[rows["_label"] == label]
            target = _target_of(part, label)
            target = None if math.isnan(target) else target
            records.append(_record(label, "ours", part, dense_latency, method=part["method"].iloc[0], target=target))
    return records


def _target_of(rows: pd.DataFrame, label: str) -> float:
    values = rows.loc[rows["_label"] == label, "target"].dropna() if "target" in rows else pd.Series(dtype=float)
    return float(values.iloc[0]) if not values.empty else float("nan")


def row_labels(runs: pd.DataFrame) -> pd.Series:
    """The table row each run belongs to: "dense", the method, "<method> (trial N)" for a sweep
    trial, and " (50% target)" appended when that method ran at several FLOPs targets."""
    base = _labels(runs).where(runs["method"] != "dense", "dense")
    if "target" not in runs:
        return base
    targets = pd.to_numeric(runs["target"], errors="coerce")
    several = targets.groupby(base).transform(lambda t: t.dropna().nunique() > 1)
    suffix = targets.map(lambda t: "" if pd.isna(t) else f" ({t:.0%} target)")
    return base.where(~several.astype(bool), base + suffix)


def _labels(ours: pd.DataFrame) -> pd.Series:
    """The row a run belongs to: its method, or "<method> (trial N)" for a sweep trial (trials differ in
    hyperparameters, so they are never averaged together; the study is named when there are several)."""
    if "trial" not in ours:
        return ours["method"].astype(str)
    trial = pd.to_numeric(ours["trial"], errors="coerce")
    study = ours["study"].astype(str) + " " if "study" in ours and ours["study"].nunique() > 1 else ""
    with_trial = ours["method"].astype(str) + " (" + study + "trial " + trial.astype("Int64").astype(str) + ")"
    return with_trial.where(trial.notna(), ours["method"].astype(str))


def _record(label: str, kind: str, rows: pd.DataFrame, dense_latency: Summary | None, **extra: Any) -> Record:
    """The numbers of one row from its runs (one per seed); the dense row has no change or reduction."""
    latency = Summary.of(rows["latency_median_ms"]) if "latency_median_ms" in rows else None
    speedup = None
    if latency is not None and dense_latency is not None and kind != "dense":
        speedup = dense_latency.mean / latency.mean
    dense_kind = kind == "dense"
    return Record(
        label=label,
        kind=kind,
        method=extra.get("method", label),
        target=extra.get("target"),
        n=int(rows["seed"].nunique()) if "seed" in rows else len(rows),
        base_acc=Summary.of(rows["dense_test_acc"] if not dense_kind else rows["test_acc"]),
        test_acc=Summary.of(rows["test_acc"]),
        acc_change=None if dense_kind else Summary.of(rows["test_acc"] - rows["dense_test_acc"]),
        params=float(rows["params"].mean()),
        params_red=None if dense_kind else Summary.of((1 - rows["params"] / rows["dense_params"]) * 100),
        macs=float(rows["macs"].mean()),
        flops_red=None if dense_kind else Summary.of((1 - rows["macs"] / rows["dense_macs"]) * 100),
        latency=latency,
        speedup=speedup,
    )


def _append(table: Table, record: Record, columns: Sequence[Column]) -> None:
    table.rows.append({c.header: c.cell(record) for c in columns})
    table.kinds.append(record.kind)
    table.records.append(record)


def _mark_best(table: Table) -> None:
    """Bold the best of our rows per column (ties too), among rows at the same FLOPs target: a row
    that pruned less is not "more accurate" than one that pruned more."""
    by_target: dict[Any, list[int]] = {}
    for i, kind in enumerate(table.kinds):
        if kind == "ours":
            by_target.setdefault(table.records[i].target, []).append(i)
    for ours in by_target.values():
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
        table.footnotes.append(PUBLISHED_NOTE)
    conventions = {r.convention for r in table.records if r.kind == "published" and r.convention != "MACs"}
    flops_red = BY_KEY["flops_red"].header
    for mark, convention in zip("†‡§", sorted(conventions), strict=False):
        table.footnotes.append(CONVENTION_NOTE.format(mark=mark, convention=convention))
        for i, record in enumerate(table.records):
            if record.convention == convention:
                table.rows[i][flops_red] += f" {mark}"


def _published(reference: pd.DataFrame | None, key: dict[str, Any]) -> dict[str, list[Record]]:
    """Published rows of this group, as records, by method."""
    if reference is None or reference.empty:
        return {}
    match = reference
    for column in ("model", "dataset"):
        if column in key and key[column] != "all":
            match = match[match[column] == key[column]]
    out: dict[str, list[Record]] = {}
    for row in match.itertuples(index=False):
        out.setdefault(row.method, []).append(_published_record(row))
    return out


def _published_record(r: Any) -> Record:
    """One row of published.csv (accuracies and reductions in %) as a record with one "seed"."""
    base, acc = float(r.baseline_acc) / 100, float(r.pruned_acc) / 100
    return Record(
        label=f"{r.method} ({r.config}) [published]",
        kind="published",
        method=r.method,
        target=None,
        n="-",
        base_acc=Summary(base, None, 1),
        test_acc=Summary(acc, None, 1),
        acc_change=Summary(acc - base, None, 1),
        params_red=None if pd.isna(r.params_reduction) else Summary(float(r.params_reduction), None, 1),
        flops_red=None if pd.isna(r.flops_reduction) else Summary(float(r.flops_reduction), None, 1),
        convention=r.flops_convention,
        source=r.source,
    )


def _comparisons(group: pd.DataFrame, reference_method: str) -> list[str]:
    """Paired test-accuracy differences against ``reference_method`` at matched targets and seeds."""
    ours = group[group["method"] != "dense"]
    if "target" not in ours:
        ours = ours.assign(target=float("nan"))
    base = ours[ours["method"] == reference_method]
    if base.empty:
        return [f"no '{reference_method}' runs in this group to compare against"]
    lines = []
    for method in dict.fromkeys(ours["method"]):
        if method == reference_method:
            continue
        rows = ours[ours["method"] == method]
        for target in rows["target"].unique():
            same = (lambda f: f["target"].isna()) if pd.isna(target) else (lambda f, t=target: f["target"] == t)
            a = rows[same(rows)].groupby("seed")["test_acc"].mean()
            b = base[same(base)].groupby("seed")["test_acc"].mean()
            diff = paired_difference(a, b)
            if diff is None:
                continue
            at = "" if pd.isna(target) else f" at the {target:.0%} target"
            lines.append(f"{method} - {reference_method}{at}: {diff.text()} pp of test accuracy")
    return lines


# --- what bench run prints ------------------------------------------------------------------------


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One run's per-seed rows as one table (display text), the dense baseline first."""
    return build_tables(results, group_by=())[0].frame()
