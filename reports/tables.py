"""The paper-style comparison table, as CIFAR pruning papers lay it out.

Input: one row per (method or dense, seed) run, with columns method, seed, test_acc,
dense_test_acc, params, dense_params, macs, dense_macs (accuracies as fractions, MACs per image)
and optionally model, dataset, data_label, target, latency_median_ms. Output: one table per group
(model and dataset by default) with the dense baseline first and one row per method (and per
FLOPs target when a method ran at several), cells mean +- std over seeds (n shown; one seed: no
std), the best of our rows in bold, published rows interleaved after ours and marked, and
footnotes. :func:`render` writes Markdown, LaTeX (booktabs), CSV or an HTML fragment.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from reports.stats import Summary, paired_difference

COLUMNS = [
    "method",
    "n",
    "base acc (%)",
    "test acc (%)",
    "acc change (pp)",
    "params (M)",
    "params red. (%)",
    "FLOPs (M MACs)",
    "FLOPs red. (%)",
]
LATENCY_COLUMNS = ["latency (ms)", "speed-up"]
HIGHER_IS_BETTER = {
    "test acc (%)": True,
    "acc change (pp)": True,
    "params red. (%)": True,
    "FLOPs red. (%)": True,
    "latency (ms)": False,
    "speed-up": True,
}
PUBLISHED_NOTE = (
    "published rows are copied from the papers (results/reference/published.csv): original CIFAR "
    "images, checkpoint selected on the test set; ours select on a validation split"
)
CONVENTION_NOTE = "{mark} the source counts FLOPs as {convention}; ours are conv+linear MACs per image"


@dataclass
class Table:
    """One group's table: display text per cell, plus which cells are bold and the notes."""

    title: str
    columns: list[str]
    rows: list[dict[str, str]]
    kinds: list[str]  # "dense", "ours" or "published", per row
    records: list[dict[str, Any]]  # the numbers behind each row (for CSV)
    bold: set[tuple[int, str]] = field(default_factory=set)
    footnotes: list[str] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)


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
    groups = runs.groupby(keys, sort=True, dropna=False) if keys else [((), runs)]
    tables = []
    for key, group in groups:
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        tables.append(_table(group, values, reference, compare_to))
    return tables


def _table(group: pd.DataFrame, key: dict[str, Any], reference: pd.DataFrame | None, compare_to: str | None) -> Table:
    records = _records(group)
    has_latency = any(r.get("latency") is not None for r in records)
    columns = COLUMNS + (LATENCY_COLUMNS if has_latency else [])
    published = _published(reference, key)
    table = Table(_title(group, key), columns, [], [], [])
    for i, record in enumerate(records):
        _append(table, record, has_latency)
        last_of_method = i + 1 == len(records) or records[i + 1]["method"] != record["method"]
        if record["kind"] == "ours" and last_of_method:  # published rows right after all of ours
            for pub in published.pop(record["method"], []):
                _append(table, pub, has_latency)
    for rest in published.values():
        for pub in rest:
            _append(table, pub, has_latency)
    _mark_best(table)
    _add_notes(table)
    if compare_to:
        table.comparisons = _comparisons(group, compare_to)
    return table


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


def _records(group: pd.DataFrame) -> list[dict[str, Any]]:
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


def _record(label: str, kind: str, rows: pd.DataFrame, dense_latency: Summary | None, **extra: Any) -> dict[str, Any]:
    latency = Summary.of(rows["latency_median_ms"]) if "latency_median_ms" in rows else None
    speedup = None
    if latency is not None and dense_latency is not None and kind != "dense":
        speedup = dense_latency.mean / latency.mean
    dense_kind = kind == "dense"
    return {
        "label": label,
        "kind": kind,
        "method": extra.get("method", label),
        "target": extra.get("target"),
        "n": int(rows["seed"].nunique()) if "seed" in rows else len(rows),
        "base_acc": Summary.of(rows["dense_test_acc"] if not dense_kind else rows["test_acc"]),
        "test_acc": Summary.of(rows["test_acc"]),
        "acc_change": None if dense_kind else Summary.of(rows["test_acc"] - rows["dense_test_acc"]),
        "params": float(rows["params"].mean()),
        "params_red": None if dense_kind else Summary.of((1 - rows["params"] / rows["dense_params"]) * 100),
        "macs": float(rows["macs"].mean()),
        "flops_red": None if dense_kind else Summary.of((1 - rows["macs"] / rows["dense_macs"]) * 100),
        "latency": latency,
        "speedup": speedup,
        "convention": None,
    }


def _append(table: Table, record: dict[str, Any], has_latency: bool) -> None:
    row = {
        "method": record["label"],
        "n": str(record["n"]),
        "base acc (%)": _text(record["base_acc"], 100),
        "test acc (%)": _text(record["test_acc"], 100),
        "acc change (pp)": _text(record["acc_change"], 100, signed=True),
        "params (M)": _number(record["params"], 1e-6, 3),
        "params red. (%)": _text(record["params_red"], 1, 1),
        "FLOPs (M MACs)": _number(record["macs"], 1e-6, 2),
        "FLOPs red. (%)": _text(record["flops_red"], 1, 1),
    }
    if has_latency:
        row["latency (ms)"] = _text(record["latency"], 1, 2)
        row["speed-up"] = "-" if record["speedup"] is None else f"{record['speedup']:.2f}x"
    table.rows.append(row)
    table.kinds.append(record["kind"])
    table.records.append(record)


def _text(summary: Summary | None, scale: float, digits: int = 2, signed: bool = False) -> str:
    return "-" if summary is None else summary.text(scale, digits, signed)


def _number(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def _mark_best(table: Table) -> None:
    """Bold the best of our rows per column (ties too), among rows at the same FLOPs target: a row
    that pruned less is not "more accurate" than one that pruned more."""
    by_target: dict[Any, list[int]] = {}
    for i, kind in enumerate(table.kinds):
        if kind == "ours":
            by_target.setdefault(table.records[i]["target"], []).append(i)
    for ours in by_target.values():
        if len(ours) >= 2:
            _mark_best_of(table, ours)


def _mark_best_of(table: Table, ours: list[int]) -> None:
    keys = {
        "test acc (%)": "test_acc",
        "acc change (pp)": "acc_change",
        "params red. (%)": "params_red",
        "FLOPs red. (%)": "flops_red",
        "latency (ms)": "latency",
        "speed-up": "speedup",
    }
    for column, key in keys.items():
        if column not in table.columns:
            continue
        scores = {i: _score(table.records[i][key]) for i in ours}
        scores = {i: s for i, s in scores.items() if s is not None}
        if not scores:
            continue
        best = (max if HIGHER_IS_BETTER[column] else min)(scores.values())
        table.bold |= {(i, column) for i, s in scores.items() if math.isclose(s, best, rel_tol=1e-9, abs_tol=1e-12)}


def _score(value: Summary | float | None) -> float | None:
    if value is None:
        return None
    return value.mean if isinstance(value, Summary) else float(value)


def _add_notes(table: Table) -> None:
    if "published" in table.kinds:
        table.footnotes.append(PUBLISHED_NOTE)
    conventions = {r["convention"] for r in table.records if r["kind"] == "published" and r["convention"] != "MACs"}
    for mark, convention in zip("†‡§", sorted(conventions), strict=False):
        table.footnotes.append(CONVENTION_NOTE.format(mark=mark, convention=convention))
        for i, record in enumerate(table.records):
            if record["convention"] == convention:
                table.rows[i]["FLOPs red. (%)"] += f" {mark}"


def _published(reference: pd.DataFrame | None, key: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Published rows of this group, as records, by method."""
    if reference is None or reference.empty:
        return {}
    match = reference
    for column in ("model", "dataset"):
        if column in key and key[column] != "all":
            match = match[match[column] == key[column]]
    out: dict[str, list[dict[str, Any]]] = {}
    for r in match.itertuples(index=False):
        base, acc = float(r.baseline_acc) / 100, float(r.pruned_acc) / 100
        record = {
            "label": f"{r.method} ({r.config}) [published]",
            "kind": "published",
            "method": r.method,
            "target": None,
            "n": "-",
            "base_acc": Summary(base, None, 1),
            "test_acc": Summary(acc, None, 1),
            "acc_change": Summary(acc - base, None, 1),
            "params": None,
            "params_red": None if pd.isna(r.params_reduction) else Summary(float(r.params_reduction), None, 1),
            "macs": None,
            "flops_red": None if pd.isna(r.flops_reduction) else Summary(float(r.flops_reduction), None, 1),
            "latency": None,
            "speedup": None,
            "convention": r.flops_convention,
            "source": r.source,
        }
        out.setdefault(r.method, []).append(record)
    return out


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


# --- rendering -----------------------------------------------------------------------------------


def render(tables: list[Table], fmt: str) -> str:
    """All tables in one document of format md, latex, csv or html (a fragment)."""
    if fmt == "csv":
        return _csv(tables)
    renderer = {"md": _markdown, "latex": _latex, "html": _html}[fmt]
    return "\n\n".join(renderer(t) for t in tables) + "\n"


def _cell(table: Table, i: int, column: str, bold: Any, escape: Any = str) -> str:
    """Cell text escaped for the format, wrapped by ``bold`` where it is the best of its column."""
    text = escape(table.rows[i][column])
    return bold(text) if (i, column) in table.bold else text


def _markdown(table: Table) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "method" else "---:" for c in table.columns) + "|"
    body = [
        "| " + " | ".join(_cell(table, i, c, lambda t: f"**{t}**") for c in table.columns) + " |"
        for i in range(len(table.rows))
    ]
    notes = [f"- {n}" for n in table.footnotes] + [f"- {c}" for c in table.comparisons]
    return "\n".join([f"### {table.title}", "", header, rule, *body] + (["", *notes] if notes else []))


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "†": r"\textsuperscript{\dag}",
    "‡": r"\textsuperscript{\ddag}",
    "§": r"\textsuperscript{\S}",
}


def latex_escape(text: str) -> str:
    escaped = "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))
    return escaped.replace("+-", r"$\pm$")


def _latex(table: Table) -> str:
    spec = "l" + "r" * (len(table.columns) - 1)
    header = " & ".join(latex_escape(c) for c in table.columns) + r" \\"
    body = []
    for i in range(len(table.rows)):
        if i > 0 and table.kinds[i] != table.kinds[i - 1] and "dense" in (table.kinds[i - 1], table.kinds[i]):
            body.append(r"\midrule")
        cells = [_cell(table, i, c, lambda t: rf"\textbf{{{t}}}", latex_escape) for c in table.columns]
        body.append(" & ".join(cells) + r" \\")
    notes = [latex_escape(n) for n in table.footnotes + table.comparisons]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(table.title)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if notes:
        lines += [r"\par\smallskip\footnotesize", r" \\ ".join(notes)]
    lines.append(r"\end{table}")
    return "\n".join(lines)


def _html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = []
    for i in range(len(table.rows)):
        cells = "".join(f"<td>{_cell(table, i, c, lambda t: f'<b>{t}</b>', html.escape)}</td>" for c in table.columns)
        rows.append(f'<tr class="{table.kinds[i]}">{cells}</tr>')
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.footnotes + table.comparisons)
    return (
        f"<h3>{html.escape(table.title)}</h3>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + f"\n</tbody>\n</table>\n<ul>{notes}</ul>"
    )


CSV_FIELDS = [
    "group",
    "kind",
    "method",
    "target",
    "n",
    "base_acc_mean",
    "test_acc_mean",
    "test_acc_std",
    "acc_change_mean",
    "acc_change_std",
    "params_m",
    "params_red_pct",
    "macs_m",
    "flops_red_pct",
    "latency_ms",
    "speedup",
]


def _csv(tables: list[Table]) -> str:
    """The numbers behind every row (accuracies in %), one line per row, for spreadsheets and plots."""
    rows = []
    for table in tables:
        for record in table.records:
            rows.append(
                {
                    "group": table.title,
                    "kind": record["kind"],
                    "method": record["label"],
                    "target": record["target"],
                    "n": record["n"],
                    "base_acc_mean": _mean(record["base_acc"], 100),
                    "test_acc_mean": _mean(record["test_acc"], 100),
                    "test_acc_std": _std(record["test_acc"], 100),
                    "acc_change_mean": _mean(record["acc_change"], 100),
                    "acc_change_std": _std(record["acc_change"], 100),
                    "params_m": None if record["params"] is None else round(record["params"] / 1e6, 6),
                    "params_red_pct": _mean(record["params_red"], 1),
                    "macs_m": None if record["macs"] is None else round(record["macs"] / 1e6, 6),
                    "flops_red_pct": _mean(record["flops_red"], 1),
                    "latency_ms": _mean(record["latency"], 1),
                    "speedup": None if record["speedup"] is None else round(record["speedup"], 4),
                }
            )
    return pd.DataFrame(rows, columns=CSV_FIELDS).to_csv(index=False, lineterminator="\n")


def _mean(summary: Summary | None, scale: float) -> float | None:
    return None if summary is None else round(summary.mean * scale, 4)


def _std(summary: Summary | None, scale: float) -> float | None:
    return None if summary is None or summary.std is None else round(summary.std * scale, 4)


# --- what bench run prints ------------------------------------------------------------------------


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One run's per-seed rows as one table (display text), the dense baseline first."""
    return build_tables(results, group_by=())[0].frame()


def format_table(table: pd.DataFrame, title: str = "") -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text in a terminal)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "method" else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(([title, ""] if title else []) + [header, rule, *body])
