"""``bench report``: golden files for every table format from a checked-in results export, the
statistics, LaTeX that compiles with pdflatex, a self-contained HTML file with figures, and no
torch import anywhere on the path. (The report built from runs logged through a real MLflow store
is in test_run.py, on the smoke run's store.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.errors import BenchError
from reports.reference import load_published
from reports.report import ReportRequest, build_report, latex_document
from reports.source import load_export
from reports.stats import Summary, paired_difference
from reports.tables import build_tables, latex_escape, render

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "report_runs.csv"
GOLDEN = HERE / "golden"
UPDATE = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"  # regenerate, then review the diff by eye


def _tables():
    return build_tables(load_export(FIXTURE), reference=load_published(), compare_to="l1")


@pytest.mark.parametrize(("fmt", "suffix"), [("md", "md"), ("latex", "tex"), ("csv", "csv"), ("html", "html")])
def test_each_format_matches_its_golden_file(fmt: str, suffix: str) -> None:
    text = render(_tables(), fmt)
    golden = GOLDEN / f"report.{suffix}"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), f"{fmt} output changed; BENCH_UPDATE_GOLDEN=1 rewrites {golden} to review"


def test_the_table_is_laid_out_like_a_paper() -> None:
    resnet, vgg = _tables()
    assert resnet.title == "resnet56 on CIFAR-10 (JPEG copy)" and vgg.title.startswith("vgg16")
    labels = [row["method"] for row in resnet.rows]
    assert labels[0] == "dense" and labels[1:3] == ["l1 (30% target)", "l1 (50% target)"]
    assert labels[3].startswith("l1 (l1-a) [published]")  # interleaved after our l1 rows
    assert "ffr" in labels and "random" in labels
    dense = resnet.rows[0]
    assert dense["n"] == "3" and dense["acc change (pp)"] == "-" and dense["speed-up"] == "-"
    ffr = resnet.rows[labels.index("ffr")]
    assert ffr["test acc (%)"] == "92.86 +- 0.16"  # mean and sample std over 3 seeds
    assert ffr["FLOPs red. (%)"].startswith("50.0")
    assert (labels.index("ffr"), "test acc (%)") in resnet.bold  # the best at the 50% target
    assert not any(i == labels.index("l1 (30% target)") for i, _ in resnet.bold)  # alone at 30%: nothing to beat
    assert vgg.rows[1]["test acc (%)"] == "93.31" and "+-" not in vgg.rows[1]["test acc (%)"]  # n=1: no std
    assert any("published rows" in note for note in resnet.footnotes)


def test_a_differing_flops_convention_gets_a_footnote() -> None:
    reference = load_published()
    runs = load_export(FIXTURE).assign(model="vgg19")  # Network Slimming's vgg19 row counts 2 FLOPs per MAC
    table = build_tables(runs, reference=reference)[0]
    published = [i for i, kind in enumerate(table.kinds) if kind == "published"]
    assert published and any(table.rows[i]["FLOPs red. (%)"].endswith("†") for i in published)
    assert any(note.startswith("† the source counts FLOPs as 2x MACs") for note in table.footnotes)


def test_summary_and_paired_difference_match_the_formulas() -> None:
    assert Summary.of(pd.Series([0.5])) == Summary(0.5, None, 1)
    assert Summary.of(pd.Series([1.0, 2.0, 3.0])).std == pytest.approx(1.0)
    a = pd.Series({0: 0.93, 1: 0.94, 2: 0.92, 3: 0.91})
    b = pd.Series({0: 0.92, 1: 0.92, 2: 0.91, 5: 0.50})  # seed 5 has no partner: not paired
    diff = paired_difference(a, b)
    d = [0.01, 0.02, 0.01]
    half = scipy_stats.t.ppf(0.975, 2) * pd.Series(d).std() / 3**0.5
    assert diff.n == 3 and diff.mean == pytest.approx(sum(d) / 3)
    assert (diff.low, diff.high) == pytest.approx((diff.mean - half, diff.mean + half))
    assert paired_difference(a[:1], b[:1]).low is None


def test_the_paired_comparison_is_reported_at_matched_targets() -> None:
    resnet = _tables()[0]
    assert any(line.startswith("ffr - l1 at the 50% target: +0.25 [") for line in resnet.comparisons)
    assert not any("30%" in line and "ffr" in line for line in resnet.comparisons)  # ffr ran at 50% only


def test_latex_escaping_and_booktabs_structure() -> None:
    assert (
        latex_escape("a_b & 50% #1 {x} ~ ^ \\")
        == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    text = render(_tables(), "latex")
    assert text.count(r"\toprule") == 2 and text.count(r"\bottomrule") == 2  # one table per group
    assert r"\textbf{" in text and r"$\pm$" in text and "_" not in text.replace(r"\_", "")


def test_latex_compiles_with_pdflatex(tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        reason = "pdflatex is not installed (Debian: texlive-latex-recommended); .ci/run installs it"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    (tmp_path / "report.tex").write_text(latex_document(render(_tables(), "latex")))
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "report.pdf").stat().st_size > 1000


def test_html_is_one_file_with_embedded_figures_and_the_environment(tmp_path: Path) -> None:
    report = build_report(ReportRequest(export=str(FIXTURE), fmt="html", out=str(tmp_path), published=True))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(report.figures) >= 3  # flops and latency per group
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    assert "0123456789abcdef0123456789abcdef01234567" in page and "2.15.0+cu132" in page
    for paths in report.figures.values():
        assert {p.suffix for p in paths} == {".png", ".pdf"} and all(p.stat().st_size > 1000 for p in paths)


def test_reports_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from bench.cli import main; "
        f"code = main(['report', '--from', {str(FIXTURE)!r}, '--format', 'html', '--out', {str(tmp_path)!r}]); "
        "assert code == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_export_round_trips(tmp_path: Path) -> None:
    runs = load_export(FIXTURE)
    build_report(ReportRequest(export=str(FIXTURE), save_export=str(tmp_path / "runs.parquet")))
    again = load_export(tmp_path / "runs.parquet")
    pd.testing.assert_frame_equal(runs, again, check_dtype=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "docx"}, "unknown format 'docx'"),
        ({"group_by": ("colour",)}, "cannot group by colour"),
        ({"export": "missing.csv"}, "no export file missing.csv"),
    ],
)
def test_bad_requests_fail_with_what_is_valid(kwargs, message) -> None:
    with pytest.raises(BenchError, match=message):
        build_report(ReportRequest(**kwargs))


def test_the_cli_exits_2_on_a_missing_store(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "report", "--results-dir", str(tmp_path / "none")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr and "Traceback" not in proc.stderr


def test_remaining_channels_compose_over_rounds() -> None:
    """OICSR-style rounds: each plan's kept indices refer to the widths after the previous round."""
    from reports.figures import remaining_channels

    rounds = [
        {"channels": {"a": 16, "b": 32}, "keep": {"a": list(range(12)), "b": list(range(20))}},
        {"channels": {"a": 12, "c": 64}, "keep": {"a": list(range(9)), "c": list(range(40))}},
    ]
    before, after = remaining_channels(rounds)
    assert before == {"a": 16, "b": 32, "c": 64}
    assert after == {"a": 9, "b": 20, "c": 40}  # b stays as round 0 left it
