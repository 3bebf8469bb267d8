"""The Python API, for notebooks: ``bench.run``, ``bench.report`` (and ``bench.load_pruned``, from
:mod:`bench.export`), exposed lazily by ``bench/__init__.py``.

Presentation layer, like ``bench/cli/``: ``run`` prints the plan and the comparison table as
``bench run`` does, and ``report`` reads ``reports``. Both go through the CLI's own steps: the same
flags become the same config layer (``bench.cli.common.run_flags``), resolved and checked by
``bench.config`` (a bad name or value is a ``BenchError`` before any work), the same runner, the same
report builder. Settings that the CLI takes as ``--set key=value`` are keyword arguments with ``__``
for the dots (``finetune__epochs=2``, ``method__slim__params__lam=1e-4``): a Python keyword cannot
hold a dot, and ``__`` is scikit-learn's convention for nested parameters. A dotted key works as well,
through a dict: ``bench.run(..., **{"finetune.epochs": 2})``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError

Names = str | Iterable[str]  # "l1,slim" or ["l1", "slim"]


def run(
    methods: Names,
    model: str,
    preset: str = "quick",
    *,
    seeds: int | str | Iterable[int] | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    target_flops_reduction: float | None = None,
    plan: str | None = None,
    budget: int | None = None,
    config: str | Path | None = None,
    published: bool = False,
    progress: bool = True,
    quiet: bool = False,
    **settings: Any,
) -> pd.DataFrame:
    """``bench run`` from Python: returns the results, one row per (method or dense, seed).

    The arguments are ``bench run``'s flags (``preset`` defaults to ``quick``, as there; ``data_dir``
    to ``$BENCH_DATA_DIR``); ``**settings`` are its ``--set`` keys with ``__`` for the dots. Columns:
    ``method``, ``seed``, ``test_acc`` and ``best_val_acc`` (fractions), ``params``, ``macs`` (per
    image), the dense baseline's ``dense_test_acc``, ``dense_params``, ``dense_macs``, ``acc_change``,
    ``params_reduction``, ``flops_reduction`` (fractions), ``train_epochs``, ``train_images``,
    ``channels_removed``, ``budget/*``, ``latency_*`` when measured, and ``run_id`` (the MLflow run:
    ``bench.load_pruned(run_id, tracking_uri=frame.attrs["tracking_uri"])`` gives its model back).
    ``quiet``: print nothing (the plan, epoch lines and table); ``progress``: the progress bars.
    """
    from bench import config as bench_config
    from bench import lifecycle
    from bench.cli.common import run_flags

    args = _run_namespace(locals())
    cfg = bench_config.resolve(preset, _path(config), _with_settings(run_flags(args), settings), [])
    if not cfg.methods:
        raise BenchError("methods is empty; name at least one method (bench.run(methods='l1', ...))")
    from bench.cli.present import table_printer
    from bench.runner import run as run_pipeline
    from bench.tracking import resolve_tracking_uri

    say = _silent if quiet else print
    with lifecycle.command():
        results = run_pipeline(cfg, progress=progress and not quiet, say=say, present=table_printer(say))
    results.attrs["tracking_uri"] = resolve_tracking_uri(cfg.tracking_uri, Path(cfg.results_dir).resolve())
    return results


def _silent(_text: str) -> None:
    """A ``say`` that prints nothing."""


def _run_namespace(given: Mapping[str, Any]) -> argparse.Namespace:
    """``run``'s arguments as the CLI's parsed flags, so that ``run_flags`` maps them alike."""
    methods, seeds = given["methods"], given["seeds"]
    return argparse.Namespace(
        model=given["model"],
        methods=methods if isinstance(methods, str) else ",".join(methods),
        seeds=None if seeds is None else _seed_text(seeds),
        dataset=given["dataset"],
        data_dir=_path(given["data_dir"]),
        target_flops_reduction=given["target_flops_reduction"],
        plan=given["plan"],
        budget=given["budget"],
        published=given["published"],
        tracking_uri=given["tracking_uri"],
        results_dir=_path(given["results_dir"]),
        experiment=given["experiment"],
    )


def _seed_text(seeds: int | str | Iterable[int]) -> str:
    if isinstance(seeds, str):
        return seeds
    if isinstance(seeds, int):
        return str(seeds)
    return ",".join(str(seed) for seed in seeds)


def _path(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


def settings_layer(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"finetune__epochs": 2, "method.slim.params.lam": 1e-4}`` -> the nested layer ``--set`` builds."""
    layer: dict[str, Any] = {}
    for key, value in settings.items():
        parts = key.replace("__", ".").split(".")
        if not all(parts):
            raise BenchError(f"malformed setting '{key}'; write finetune__epochs=2 (or **{{'finetune.epochs': 2}})")
        node = layer
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BenchError(f"setting '{key}' conflicts with another setting of '{part}'")
        node[parts[-1]] = value
    return layer


def _with_settings(flags: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The flags layer with the settings on top (as ``--set`` lies above the flags)."""
    from bench.config import merge_layer

    return merge_layer(flags, settings_layer(settings))


# --- report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """The tables of ``bench report``, as DataFrames.

    ``tables``: each table as shown (title -> display text, one row per dense baseline, method or
    published row). ``numbers``: the numbers behind every row of every table (``--format csv``:
    accuracies in %, params in M, MACs in M, reductions in %; ``group`` is the table's title).
    ``runs``: one row per stored run read. ``text``: the Markdown tables with their footnotes
    (a notebook displays it).
    """

    tables: dict[str, pd.DataFrame]
    numbers: pd.DataFrame
    runs: pd.DataFrame
    text: str
    footnotes: dict[str, list[str]] = field(default_factory=dict)

    def _repr_markdown_(self) -> str:
        return self.text


def report(
    *,
    experiment: str | None = None,
    sweep: str | None = None,
    runs: Names | None = None,
    source: str | Path | None = None,
    group_by: Names = ("model", "dataset"),
    published: bool = False,
    compare_to: str | None = None,
    trials: bool = False,
    tracking_uri: str | None = None,
    results_dir: str | Path = "results",
) -> Report:
    """``bench report`` from Python: the tables of stored runs, nothing recomputed.

    One selection at most: ``experiment`` (default 'bench'), ``sweep`` (a study name) or ``runs`` (run
    ids, e.g. ``frame.run_id`` of ``bench.run``; a parent id stands for its children). ``source`` reads
    a CSV/Parquet export (``--from``) instead of MLflow. The rest are ``bench report``'s flags.
    """
    from bench.tracking import resolve_tracking_uri
    from reports.report import ReportRequest, build_report

    request = ReportRequest(
        tracking_uri=None if source else resolve_tracking_uri(tracking_uri, Path(results_dir).resolve()),
        export=_path(source),
        experiment=experiment,
        sweep=sweep,
        run_ids=_names(runs),
        group_by=_names(group_by),
        published=published,
        compare_to=compare_to,
        trials=trials,
    )
    return _as_frames(build_report(request))


def _names(value: Names | None) -> tuple[str, ...]:
    """``"a, b"`` or an iterable of names (a DataFrame column) -> ``("a", "b")``."""
    from bench.cli.common import split

    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(split(value))
    return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))


def _as_frames(built: Any) -> Report:
    """reports.report.Report -> the notebook's Report."""
    import io

    from reports.render import render

    tables = {_unique(t.title, i, built.tables): t.frame() for i, t in enumerate(built.tables)}
    numbers = pd.read_csv(io.StringIO(render(built.tables, "csv")))
    footnotes = {_unique(t.title, i, built.tables): list(t.footnotes) for i, t in enumerate(built.tables)}
    return Report(tables, numbers, built.runs, built.text, footnotes)


def _unique(title: str, index: int, tables: list[Any]) -> str:
    """A table's title, numbered when another table has the same one."""
    same = [t for t in tables if t.title == title]
    return title if len(same) == 1 else f"{title} ({index + 1})"


__all__ = ["Report", "report", "run", "settings_layer"]
