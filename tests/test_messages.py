"""What the user reads: ``profile --latency`` names whose latency each number is (dense, pruned, the
speed-up) at each batch size; ``list presets`` prints every description in full, wrapped to the
terminal; report figures label the dataset as the tables do and keep a single FLOPs target from
filling the axis with a tenth of a point. CLI checks run ``python -m bench`` in a fresh interpreter;
figures are built through the report's own code path from the checked-in export."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.text import Text

from reports.figures import MIN_HALF_SPAN_PP, percent_span
from reports.report import ReportRequest, build_report, iter_figures
from reports.source import load_export
from reports.tables import build_tables

HERE = Path(__file__).parent
ROOT = HERE.parent
FIXTURE = HERE / "fixtures" / "report_runs.csv"  # resnet20 and vgg16 ran at one FLOPs target, resnet56 at two
TIMEOUT = 300  # s: a cold torch import on a loaded 2-core machine


def bench(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"BENCH_DATA_DIR", "MLFLOW_TRACKING_URI"}}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd, env={**base, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- profile --latency ----------------------------------------------------------------------------

LATENCY_LINE = re.compile(
    r"batch (\d+):  dense ([\d.]+) ms \(IQR [\d.]+\)  pruned \(l1-b\) ([\d.]+) ms \(IQR [\d.]+\)"
    r"  speed-up ([\d.]+)x \(dense / pruned\)"
)


def test_profile_latency_shows_dense_pruned_and_the_speedup_at_each_batch_size(tmp_path: Path) -> None:
    args = ("profile", "--model", "resnet56", "--plan", "l1-b", "--latency", "--repeats", "3", "--batch-size", "1,2")
    result = bench(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = [LATENCY_LINE.search(line) for line in result.stdout.splitlines()]
    rows = [m.groups() for m in found if m]
    assert [int(r[0]) for r in rows] == [1, 2], result.stdout  # one labelled line per batch size
    for _, dense, pruned, speedup in rows:
        assert float(speedup) == pytest.approx(float(dense) / float(pruned), abs=0.02)  # rounding of 2 decimals
    assert "median and IQR of 3 repeats" in result.stdout and "dense and l1-b interleaved" in result.stdout
    report = json.loads(bench(*args, "--json", cwd=tmp_path).stdout)
    assert [e["batch_size"] for e in report["latency"]] == [1, 2]
    for entry in report["latency"]:
        assert entry["speedup"] == pytest.approx(entry["dense"]["median_ms"] / entry["pruned"]["median_ms"])
        assert entry["dense"]["batch_size"] == entry["pruned"]["batch_size"] == entry["batch_size"]


def test_profile_latency_without_a_plan_says_it_is_the_dense_models(tmp_path: Path) -> None:
    result = bench("profile", "--model", "resnet20", "--latency", "--repeats", "2", "--batch-size", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"batch 2:  dense [\d.]+ ms \(IQR [\d.]+\)$", result.stdout, flags=re.M), result.stdout
    assert "no --plan: only the dense model" in result.stdout and "speed-up" not in result.stdout


@pytest.mark.parametrize(("value", "fragment"), [("0", "must be >= 1, got 0"), ("1,x", "--batch-size takes")])
def test_profile_rejects_a_bad_batch_size_before_any_work(value: str, fragment: str, tmp_path: Path) -> None:
    line = one_error_line(bench("profile", "--model", "resnet20", "--latency", "--batch-size", value, cwd=tmp_path))
    assert fragment in line


# --- list presets ---------------------------------------------------------------------------------


def preset_text(name: str) -> str:
    """The preset file's leading comment block as one paragraph (independent of the CLI's parser)."""
    lines = (ROOT / "bench" / "presets" / f"{name}.toml").read_text().split("\n\n")[0].splitlines()
    return " ".join(line.removeprefix("#").strip() for line in lines).removeprefix(f"{name}:").strip()


@pytest.mark.parametrize("columns", [60, 400])
def test_list_presets_prints_each_description_in_full_wrapped_to_the_terminal(columns: int, tmp_path: Path) -> None:
    result = bench("list", "presets", cwd=tmp_path, COLUMNS=str(columns))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) < columns, result.stdout  # the last column stays free
    entries: dict[str, list[str]] = {}
    for line in lines:
        if not line.startswith(" "):
            name, _, line = line.partition(" ")
            entries[name] = []
        entries[name].append(line.strip())
    assert list(entries) == ["smoke", "quick", "paper"]
    for name, parts in entries.items():
        assert " ".join(parts) == preset_text(name), f"{name}: description cut or changed"
    assert any(len(parts) > 1 for parts in entries.values()) == (columns == 60)  # wrapped only when narrow


# --- report figures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures() -> dict:
    """(title, every text on the figure, x limits, plotted x values) of each figure of the fixture's
    report, built by the report's code path (iter_figures is what make_figures saves)."""
    request = ReportRequest(export=str(FIXTURE))
    found = {}
    for name, fig in iter_figures(load_export(FIXTURE), request):
        ax = fig.axes[0]
        texts = [t.get_text() for t in fig.findobj(Text) if t.get_text()]
        xs = [x for c in ax.containers for x in c.lines[0].get_xdata()]  # the errorbar points (x in %)
        found[name] = {"title": ax.get_title(), "texts": texts, "xlim": ax.get_xlim(), "xs": xs}
        plt.close(fig)
    return found


def test_figures_label_the_dataset_as_the_tables_do(figures: dict) -> None:
    tables = {t.title for t in build_tables(load_export(FIXTURE))}
    assert tables == {f"{m} on CIFAR-10 (JPEG copy)" for m in ("resnet20", "resnet56", "vgg16")}
    assert len(figures) >= 5
    for name, fig in figures.items():
        assert fig["title"].splitlines()[-1] in tables, f"{name}: {fig['title']!r}"
        assert not any("cifar10" in text for text in fig["texts"]), f"{name}: {fig['texts']}"


def test_a_single_flops_target_gets_a_readable_axis(figures: dict) -> None:
    """resnet20 and vgg16 ran at one target: their points span well under 1 pp of FLOPs reduction."""
    for model in ("resnet20", "vgg16"):
        fig = figures[f"accuracy_vs_flops_{model}_cifar10"]
        lo, hi = fig["xlim"]
        assert hi - lo >= 2 * MIN_HALF_SPAN_PP - 1e-9 and lo >= 0 and hi <= 100, (model, fig["xlim"])
        assert all(lo < x < hi for x in fig["xs"]), (model, fig["xlim"], fig["xs"])
    wide = figures["accuracy_vs_flops_resnet56_cifar10"]  # 30% and 50% targets: the data sets the span
    assert wide["xlim"][1] - wide["xlim"][0] == pytest.approx(20 * 1.1, abs=0.5)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([50.0, 50.05], (45.025, 55.025)),
        ([0.5], (0.0, 10.0)),
        ([99.0, 99.5], (90.0, 100.0)),
        ([10.0, 70.0], (7.0, 73.0)),
    ],
)
def test_percent_span_keeps_a_minimum_width_inside_0_100(values: list[float], expected: tuple[float, float]) -> None:
    assert percent_span(pd.Series(values)) == pytest.approx(expected)


def test_the_saved_report_holds_the_figures(tmp_path: Path) -> None:
    report = build_report(ReportRequest(export=str(FIXTURE), out=str(tmp_path)))
    assert "accuracy_vs_flops_resnet20_cifar10" in report.figures
    assert all(p.stat().st_size > 1000 for paths in report.figures.values() for p in paths)
