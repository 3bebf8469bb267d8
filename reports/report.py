"""``bench report``: tables and figures from stored runs (MLflow or an export), nothing recomputed.

Writes ``report.md|tex|csv`` (or one self-contained ``report.html`` with the figures embedded and
the runs' environment) and the figures as PNG and PDF under ``--out``; prints the table.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bench.curves import mean_by_method
from bench.errors import BenchError, unknown_name
from reports import figures, source
from reports.reference import load_published
from reports.tables import Table, build_tables, group_title, groups, render, selected_runs

FORMATS = {"md": "md", "latex": "tex", "csv": "csv", "html": "html"}
ENV_COLUMNS = ["git_sha", "git_dirty", "device", "torch", "cuda", "python", "mlflow"]


@dataclass(frozen=True)
class ReportRequest:
    """Where the runs come from (``export`` file, else MLflow ``tracking_uri`` with one selection),
    the format, where files go, how rows are grouped (run columns or protocol settings, checked
    against the runs read), and what is added (``trials``: sweep trials beside the runs; a
    ``sweep`` report always shows its trials)."""

    tracking_uri: str | None = None
    export: str | None = None
    experiment: str | None = None
    sweep: str | None = None
    run_ids: tuple[str, ...] = ()
    fmt: str = "md"
    out: str | None = None
    group_by: tuple[str, ...] = ("model", "dataset")
    published: bool = False
    compare_to: str | None = None
    save_export: str | None = None
    trials: bool = False

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise unknown_name("format", self.fmt, FORMATS)
        selections = [x for x in (self.experiment, self.sweep, self.run_ids or None) if x]
        if len(selections) > 1 and not (self.sweep and self.experiment and not self.run_ids):
            raise BenchError("choose one of --experiment, --sweep or --runs (--sweep may name its --experiment)")

    @property
    def with_trials(self) -> bool:
        return self.trials or self.sweep is not None


@dataclass
class Report:
    runs: pd.DataFrame
    tables: list[Table]
    text: str
    figures: dict[str, list[Path]]
    files: list[Path]


def load_runs(request: ReportRequest) -> pd.DataFrame:
    if request.export:
        return source.load_export(request.export)
    if request.tracking_uri is None:
        raise BenchError("no source: pass --tracking-uri (or --results-dir) or --from FILE")
    return source.load_mlflow(
        request.tracking_uri, experiment=request.experiment, sweep=request.sweep, run_ids=request.run_ids
    )


def build_report(request: ReportRequest) -> Report:
    runs = load_runs(request)
    if request.save_export:
        source.save_export(runs, request.save_export)
    reference = load_published() if request.published else None
    tables = build_tables(
        runs, request.group_by, reference=reference, compare_to=request.compare_to, trials=request.with_trials
    )
    text = render(tables, request.fmt if request.fmt != "html" else "md")
    report = Report(runs, tables, text, {}, [])
    if request.out or request.fmt == "html":
        out = Path(request.out or "results/reports")
        report.figures = make_figures(runs, request, out / "figures")
        report.files.append(_write_document(report, request, out))
    return report


def make_figures(runs: pd.DataFrame, request: ReportRequest, folder: Path) -> dict[str, list[Path]]:
    """Every figure of :func:`iter_figures`, saved as PNG and PDF under ``folder`` (and closed)."""
    return {name: figures.save(fig, folder, name) for name, fig in iter_figures(runs, request)}


def iter_figures(runs: pd.DataFrame, request: ReportRequest) -> Iterator[tuple[str, Figure]]:
    """(file name, figure) for every figure the runs hold data for, per group of the table: of the
    runs the tables count, one line per row of a table (less its target), titled as the table is.
    One group's figures at a time: the caller saves (closes) them before the next group's are drawn."""
    columns = {k: source.group_column(runs, k) for k in request.group_by}  # asked name -> run column
    columns = {k: c for k, c in columns.items() if c in runs}
    for key, group in groups(runs, list(columns.values())):
        group = selected_runs(group, request.with_trials)  # labelled within its table, as the table is
        suffix = _safe("_".join(str(k) for k in key if not pd.isna(k)) or "all")
        title = group_title(group, dict(zip(columns, key, strict=True)))
        for name, fig in _group_figures(group, request, title).items():
            if fig is not None:
                yield f"{name}_{suffix}", fig


def _group_figures(group: pd.DataFrame, request: ReportRequest, title: str) -> dict[str, Figure | None]:
    candidates = {
        "accuracy_vs_flops": figures.accuracy_vs_flops(group, title),
        "accuracy_vs_latency": figures.accuracy_vs_latency(group, title),
        "sparsity_vs_settings": figures.sparsity_vs_settings(group, title),
    }
    if request.export is None and request.tracking_uri is not None:  # artifacts live in MLflow only
        candidates["channels_per_layer"] = figures.channels_per_layer(_artifacts(group, request, "plans.json"), title)
        candidates["sparsity_curves"] = figures.sparsity_curves(
            mean_by_method(_artifacts(group, request, "sparsity.json", every_seed=True)), title
        )
    return candidates


def _artifacts(group: pd.DataFrame, request: ReportRequest, name: str, every_seed: bool = False) -> dict[str, Any]:
    """The named JSON artifact by label "<row> s<seed>": of one run per row of the table, less its
    target (its lowest seed), or of every run of the row with ``every_seed``."""
    found = {}
    runs = group.sort_values("seed", kind="stable")
    if not every_seed:
        runs = runs.drop_duplicates(subset=["series"])
    for run_id, method, series, seed in runs[["run_id", "method", "series", "seed"]].itertuples(index=False):
        if name == "plans.json" and method == "dense":
            continue
        data = source.read_artifact(request.tracking_uri, run_id, name)
        if data is not None:
            found[f"{series} s{seed}"] = data
    return found


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _write_document(report: Report, request: ReportRequest, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"report.{FORMATS[request.fmt]}"
    if request.fmt == "html":
        path.write_text(html_document(report, request))
    elif request.fmt == "latex":
        path.write_text(latex_document(report.text))
    else:
        path.write_text(report.text)
    return path


def latex_document(body: str) -> str:
    """A standalone document around the tables (what the compile test builds)."""
    return "\n".join(
        [
            r"\documentclass{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage[margin=1.5cm,landscape]{geometry}",
            r"\usepackage{booktabs}",
            r"\begin{document}",
            body,
            r"\end{document}",
            "",
        ]
    )


def html_document(report: Report, request: ReportRequest) -> str:
    """One self-contained HTML file: tables, the figures as embedded PNGs, and the environment."""
    tables = render(report.tables, "html")
    images = []
    for name, paths in report.figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        images.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(name)}</figcaption></figure>")  # fmt: skip
    env = _environment(report.runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>bench report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: .5em; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #ccc; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.published td {{ color: #555; font-style: italic; }}
tr.dense td {{ background: #f4f4f4; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>bench report</h1>
<p>{len(report.runs)} stored runs; source: {html.escape(_source_text(request))}.
Accuracies are test accuracies of the best-validation checkpoint, mean +- std over seeds.</p>
{tables}
<h2>Figures</h2>
{"".join(images) or "<p>no figure: the runs hold nothing to plot</p>"}
<h2>Environment</h2>
{env}
</body></html>
"""


def _source_text(request: ReportRequest) -> str:
    if request.export:
        return f"export {request.export}"
    what = (
        f"runs {', '.join(request.run_ids)}"
        if request.run_ids
        else f"sweep '{request.sweep}'"
        if request.sweep
        else f"experiment '{request.experiment or 'bench'}'"
    )
    return f"{what} at {request.tracking_uri}"


def _environment(runs: pd.DataFrame) -> str:
    columns = [c for c in ENV_COLUMNS if c in runs]
    envs = runs[columns].astype(object).drop_duplicates().fillna("-")
    counts = runs[columns].astype(object).fillna("-").value_counts().rename("runs").reset_index()
    envs = envs.merge(counts, on=columns, how="left")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [*columns, "runs"])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in envs.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def run_report(request: ReportRequest, say: Any = print) -> Report:
    report = build_report(request)
    say(report.text.rstrip())
    for path in report.files:
        say(f"wrote {path}")
    if report.figures:
        say(f"figures: {', '.join(sorted(report.figures))} (PNG and PDF)")
    return report


def parse_ids(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())
