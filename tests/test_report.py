"""``bench report``: golden files for every table format from runs in a real MLflow store (and the
same tables from its checked-in export), one row per protocol digest, repeats and sweep trials, the
budget column, the statistics, LaTeX that compiles with pdflatex, a self-contained HTML file with
figures, and no torch import anywhere on the path. (The report built from runs that ``bench run``
logged is in test_run.py, on the smoke run's store.)"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from bench.errors import BenchError
from bench.schema import Result
from reports.reference import load_published
from reports.report import ReportRequest, build_report, latex_document
from reports.source import load_export, load_mlflow, tidy
from reports.stats import Summary, paired_difference
from reports.tables import build_tables, latex_escape, render

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "report_runs.csv"
GOLDEN = HERE / "golden"
UPDATE = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"  # regenerate, then review the diff by eye
_spec = importlib.util.spec_from_file_location("make_report_runs", HERE / "fixtures" / "make_report_runs.py")
make_report_runs = sys.modules.setdefault("make_report_runs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(make_report_runs)  # registered first: its dataclasses look their module up


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow (sqlite) store holding the fixture's runs: mixed digests, a repeat, a sweep."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    make_report_runs.write_store(uri)
    return uri


@pytest.fixture(scope="module")
def runs(store: str) -> pd.DataFrame:
    return load_mlflow(store)


def _tables(runs: pd.DataFrame, **kwargs):
    return build_tables(runs, reference=load_published(), compare_to="l1", **kwargs)


def _by_title(tables, model: str):
    return next(t for t in tables if t.title.startswith(model))


def _labels(table) -> list[str]:
    """The labels of our rows (published rows are matched in test_published.py)."""
    return [row["method"] for row, kind in zip(table.rows, table.kinds, strict=True) if kind != "published"]


@pytest.mark.parametrize(("fmt", "suffix"), [("md", "md"), ("latex", "tex"), ("csv", "csv"), ("html", "html")])
def test_each_format_matches_its_golden_file(runs: pd.DataFrame, fmt: str, suffix: str) -> None:
    text = render(_tables(runs), fmt)
    golden = GOLDEN / f"report.{suffix}"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), f"{fmt} output changed; BENCH_UPDATE_GOLDEN=1 rewrites {golden} to review"


def test_the_export_gives_the_same_tables_as_the_store(runs: pd.DataFrame) -> None:
    """report_runs.csv is the store's export (make_report_runs.py): settings survive the CSV."""
    exported = load_export(FIXTURE)
    assert sorted(c for c in exported if c.startswith("protocol.")) == sorted(
        c for c in runs if c.startswith("protocol.")
    )
    assert render(_tables(exported), "md") == render(_tables(runs), "md")


def test_the_table_is_laid_out_like_a_paper(runs: pd.DataFrame) -> None:
    tables = _tables(runs)
    assert [t.title for t in tables] == [f"{m} on CIFAR-10 (JPEG copy)" for m in ("resnet20", "resnet56", "vgg16")]
    resnet, vgg = tables[1], tables[2]
    labels = _labels(resnet)
    assert labels == ["dense", "l1 (30% target)", "l1 (50% target)", "ffr", "random"]
    assert vgg.rows[2]["method"].startswith("l1 (l1-a) [published")  # interleaved after our l1 row
    dense = resnet.rows[0]
    assert dense["n"] == "3" and dense["acc change (pp)"] == "-" and dense["speed-up"] == "-"
    ffr = resnet.rows[labels.index("ffr")]
    assert ffr["test acc (%)"] == "92.86 +- 0.16"  # mean and sample std over 3 seeds
    assert ffr["FLOPs red. (%)"].startswith("50.0")
    assert (labels.index("ffr"), "test acc (%)") in resnet.bold  # the best at the 50% target
    assert not any(i == labels.index("l1 (30% target)") for i, _ in resnet.bold)  # alone at 30%: nothing to beat
    assert vgg.rows[1]["test acc (%)"] == "93.31" and "+-" not in vgg.rows[1]["test acc (%)"]  # n=1: no std
    assert any("published rows" in note for note in vgg.footnotes)


def test_a_row_aggregates_one_digest_labelled_by_the_settings_that_differ(runs: pd.DataFrame) -> None:
    resnet20 = _by_title(_tables(runs), "resnet20")
    assert _labels(resnet20) == [
        "dense (dense.epochs=4)", "dense (dense.epochs=2)",
        "l1 (dense.epochs=4)", "l1 (dense.epochs=2)", "ffr (dense.epochs=4)", "random (dense.epochs=4)",
    ]  # fmt: skip
    n = {
        row["method"]: row["n"] for row, kind in zip(resnet20.rows, resnet20.kinds, strict=True) if kind != "published"
    }
    assert n == {"dense (dense.epochs=4)": "2", "dense (dense.epochs=2)": "1", "l1 (dense.epochs=4)": "2",
                 "l1 (dense.epochs=2)": "1", "ffr (dense.epochs=4)": "2", "random (dense.epochs=4)": "1"}  # fmt: skip
    short = resnet20.rows[3]
    assert short["base acc (%)"] == "87.12" and short["test acc (%)"] == "86.50"  # its own baseline, not pooled
    assert short["speed-up"] == "1.50x"  # 12.3 ms of the dense.epochs=2 baseline over 8.2 ms


def test_settings_that_differ_because_the_method_differs_never_label_a_row(runs: pd.DataFrame) -> None:
    """ffr's lambda_ and the method name differ from l1's: no row says so; trials keep their own label."""
    resnet20 = _by_title(_tables(runs, trials=True), "resnet20")
    labels = _labels(resnet20)
    assert "ffr (trial 0, dense.epochs=4)" in labels and "ffr (trial 1, dense.epochs=4)" in labels
    assert not any("method" in label for label in labels)


def test_the_best_is_bold_only_beside_rows_of_the_same_target_and_settings(runs: pd.DataFrame) -> None:
    resnet20 = _by_title(_tables(runs), "resnet20")
    bold_rows = {resnet20.rows[i]["method"] for i, column in resnet20.bold if column == "test acc (%)"}
    assert bold_rows == {"l1 (dense.epochs=4)"}  # 90.35 beats ffr's 90.25; l1 at dense.epochs=2 is alone
    assert not any(resnet20.rows[i]["method"].endswith("(dense.epochs=2)") for i, _ in resnet20.bold)


def test_a_repeated_run_counts_once_the_latest_kept(runs: pd.DataFrame) -> None:
    resnet20 = _by_title(_tables(runs), "resnet20")
    l1 = resnet20.rows[_labels(resnet20).index("l1 (dense.epochs=4)")]
    assert l1["test acc (%)"] == "90.35 +- 0.21"  # seed 0 of the command run again (90.50), not the first (90.00)
    note = "2 repeated run(s) set aside (same protocol, method and seed; the latest kept)"
    assert note in resnet20.footnotes  # the first l1 and dense of seed 0: the command was run again
    assert not any("repeated" in note for note in _by_title(_tables(runs), "resnet56").footnotes)


def test_n_and_the_std_always_agree(runs: pd.DataFrame) -> None:
    for table in _tables(runs, trials=True):
        for kind, row in zip(table.kinds, table.rows, strict=True):
            if kind != "published":
                assert ("+-" in row["test acc (%)"]) == (int(row["n"]) > 1), (table.title, row)


def test_a_scratch_row_names_its_source_method_not_its_digest() -> None:
    """Scratch-E trained from l1's and from slim's architecture: two rows, named by the source."""
    base = {"seed": 0, "model": "resnet20", "test_acc": 0.9, "dense_test_acc": 0.91, "params": 1e5, "macs": 2e7,
            "dense_params": 2e5, "dense_macs": 4e7, "protocol.dense.epochs": "4"}  # fmt: skip
    scratch = {**base, "method": "scratch-E"}
    rows = [
        {**base, "method": "l1", "protocol": "d-l1", "protocol.method": "l1"},
        {**base, "method": "slim", "protocol": "d-slim", "protocol.method": "slim"},
        {**scratch, "plan_source": "l1", "protocol": "s1", "protocol.scratch_source": "d-l1"},
        {**scratch, "plan_source": "slim", "protocol": "s2", "protocol.scratch_source": "d-slim"},
    ]
    table = build_tables(tidy(pd.DataFrame(rows)))[0]
    assert _labels(table) == ["l1", "slim", "scratch-E (from l1)", "scratch-E (from slim)"]


def test_sweep_trials_appear_only_when_asked(store: str, runs: pd.DataFrame) -> None:
    default = _by_title(_tables(runs), "resnet20")
    assert not any("trial" in label for label in _labels(default))
    assert "2 sweep trial run(s) left out (shown with --trials or --sweep NAME)" in default.footnotes
    asked = build_report(ReportRequest(tracking_uri=store, trials=True))
    assert sum("trial" in label for label in _labels(_by_title(asked.tables, "resnet20"))) == 2
    sweep = build_report(ReportRequest(tracking_uri=store, sweep=make_report_runs.SWEEP))
    [table] = sweep.tables
    assert _labels(table) == ["ffr (trial 0)", "ffr (trial 1)"] and not table.footnotes
    cli = [sys.executable, "-m", "bench", "report", "--from", str(FIXTURE), "--trials"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "| ffr (trial 1, dense.epochs=4) |" in proc.stdout, proc.stderr[-2000:]


def test_old_runs_without_a_digest_stand_in_with_the_parent_config_hash(runs: pd.DataFrame) -> None:
    vgg = runs[runs["model"] == "vgg16"]
    assert set(vgg["protocol"]) == {"cfg:9c1d2e3f4a5b"}
    assert _labels(_by_title(_tables(runs), "vgg16")) == ["dense", "l1"]
    other = vgg.assign(config_hash="0000aaaa1111", protocol=None, test_acc=vgg["test_acc"] - 0.01)
    table = build_tables(tidy(pd.concat([vgg, other])))[0]  # another command's config: never pooled
    assert _labels(table) == [
        "dense (protocol=cfg:9c1d2e3f4a5b)", "dense (protocol=cfg:0000aaaa1111)",
        "l1 (protocol=cfg:9c1d2e3f4a5b)", "l1 (protocol=cfg:0000aaaa1111)",
    ]  # fmt: skip
    assert [row["n"] for row in table.rows] == ["1", "1", "1", "1"]


def test_the_latency_batch_size_is_read_from_the_metric_else_the_tag(runs: pd.DataFrame) -> None:
    timed = runs[runs["latency_median_ms"].notna()]
    sizes = timed.set_index(timed["protocol.dense.epochs"].astype(str))["latency_batch_size"]
    assert set(sizes.loc["160"]) == {64} and set(sizes.loc["2"]) == {32}


def test_the_budget_column_and_what_it_counts(runs: pd.DataFrame) -> None:
    tables = _tables(runs)
    resnet20, resnet56 = tables[0], tables[1]
    assert resnet56.columns[:3] == ["method", "n", "epochs"]
    epochs = {row["method"]: row["epochs"] for row in resnet56.rows}
    assert epochs["dense"] == "160" and epochs["l1 (50% target)"] == "200" and epochs["ffr"] == "260"
    assert "channels red. (%)" in resnet20.columns and "channels red. (%)" not in resnet56.columns
    random = resnet20.rows[_labels(resnet20).index("random (dense.epochs=4)")]
    assert random["channels red. (%)"] == "50.0"  # random under channel_fraction
    csv = pd.read_csv(__import__("io").StringIO(render(tables, "csv")))
    assert {"train_epochs", "train_images", "channels_red_pct"} <= set(csv.columns)
    assert csv.loc[csv["method"] == "ffr", "train_images"].tolist() == [260 * 45000]
    for fmt in ("latex", "html"):
        assert "every training epoch that produced the model" in render(tables, fmt)
    assert "every training epoch" not in render(tables, "md")


def test_the_table_bench_run_prints_shows_the_budget() -> None:
    rows = [
        Result("dense", 0, 0.91, 0.90, 270000, 40000000, 0.91, 270000, 40000000, train_epochs=4).to_row(),
        Result("l1", 0, 0.90, 0.89, 140000, 20000000, 0.91, 270000, 40000000, train_epochs=6).to_row(),
    ]
    table = build_tables(pd.DataFrame(rows), group_by=())[0]
    assert table.frame()["epochs"].tolist() == ["4", "6"] and table.frame()["n"].tolist() == ["1", "1"]


def test_grouping_by_the_target_gives_one_table_per_target(runs: pd.DataFrame) -> None:
    tables = build_tables(runs[runs["model"] == "resnet56"], ("target",))  # the model named: its runs share it
    assert [t.title for t in tables] == [
        "resnet56 on CIFAR-10 (JPEG copy) (target 0.3)",
        "resnet56 on CIFAR-10 (JPEG copy) (target 0.5)",
        "resnet56 on CIFAR-10 (JPEG copy) (target none)",
    ]
    assert _labels(tables[2]) == ["dense"] and _labels(tables[0]) == ["l1"]


def test_grouping_by_a_protocol_setting(runs: pd.DataFrame) -> None:
    tables = build_tables(runs[runs["model"] == "resnet20"], ("model", "dense.epochs"))
    assert [t.title for t in tables] == [
        "resnet20 on CIFAR-10 (JPEG copy) (dense.epochs 2)",
        "resnet20 on CIFAR-10 (JPEG copy) (dense.epochs 4)",
    ]
    assert _labels(tables[0]) == ["dense", "l1"]  # nothing differs inside a group: no settings in the labels
    assert _labels(tables[1]) == ["dense", "l1", "ffr", "random"]


def test_an_unknown_group_key_names_the_closest_and_the_valid_keys(runs: pd.DataFrame) -> None:
    with pytest.raises(BenchError, match=r"cannot group by 'dense\.epoch'.*'dense\.epochs'.*finetune\.lr.*model"):
        build_tables(runs, ("model", "dense.epoch"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--from", str(FIXTURE), "--group-by", "model,colour"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "cannot group by 'colour'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_differing_flops_convention_gets_a_footnote() -> None:
    reference = load_published()
    runs = load_export(FIXTURE)
    runs = runs[runs["model"] == "resnet56"]
    runs = runs.assign(model="vgg19", method=runs["method"].replace({"l1": "slim"}))  # slim's vgg19 row: 2x MACs
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


def test_the_paired_comparison_is_reported_at_matched_targets_and_settings(runs: pd.DataFrame) -> None:
    resnet20, resnet = _tables(runs)[:2]
    assert any(line.startswith("ffr - l1 at the 50% target: +0.25 [") for line in resnet.comparisons)
    assert not any("30%" in line and "ffr" in line for line in resnet.comparisons)  # ffr ran at 50% only
    assert [line.split(":")[0] for line in resnet20.comparisons] == [
        "ffr (dense.epochs=4) - l1 (dense.epochs=4) at the 50% target"  # never against l1 at dense.epochs=2
    ]


def test_latex_escaping_and_booktabs_structure(runs: pd.DataFrame) -> None:
    assert (
        latex_escape("a_b & 50% #1 {x} ~ ^ \\")
        == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    text = render(_tables(runs), "latex")
    assert text.count(r"\toprule") == 3 and text.count(r"\bottomrule") == 3  # one table per group
    assert r"\textbf{" in text and r"$\pm$" in text and "_" not in text.replace(r"\_", "")


def test_latex_compiles_with_pdflatex(runs: pd.DataFrame, tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        reason = "pdflatex is not installed (Debian: texlive-latex-recommended); .ci/run installs it"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    (tmp_path / "report.tex").write_text(latex_document(render(_tables(runs), "latex")))
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
        ({"export": str(FIXTURE), "group_by": ("colour",)}, "cannot group by 'colour'"),
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


def test_the_sweep_figure_plots_folded_sparsity_against_each_swept_setting_and_accuracy() -> None:
    from reports.figures import FOLDED_METRIC, FOLDED_METRICS, sparsity_vs_settings

    runs = load_export(FIXTURE)
    assert sparsity_vs_settings(runs) is None  # no run logged the folded curve: nothing to plot
    trial = runs[runs["trial"].notna()].iloc[[0]]
    trials = pd.concat([trial.assign(trial=i) for i in range(4)], ignore_index=True)
    trials["protocol.method_config.lambda_"] = ["1e-05", "0.0001", "0.001", "0.01"]
    for metric in FOLDED_METRICS:
        trials[metric] = [0.0, 0.05, 0.2, 0.6]
    dense = runs[runs["method"] == "dense"].iloc[[0]].assign(**dict.fromkeys(FOLDED_METRICS, 0.01))
    fig = sparsity_vs_settings(pd.concat([trials, dense], ignore_index=True))
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    accuracy = "val accuracy after pruning + fine-tune (%)"
    assert [ax.get_xlabel() for ax in panels] == ["lambda_", accuracy, "lambda_", accuracy]  # two rows
    assert sorted(panels[0].collections[0].get_offsets()[:, 1]) == [0.0, 5.0, 20.0, 60.0]  # in %
    assert panels[0].lines[0].get_ydata()[0] == pytest.approx(1.0)  # the dense reference, in %
    assert FOLDED_METRIC in FOLDED_METRICS


def test_an_export_into_a_folder_that_does_not_exist_yet_creates_it(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "runs.csv"
    build_report(ReportRequest(export=str(FIXTURE), save_export=str(target)))
    pd.testing.assert_frame_equal(load_export(FIXTURE), load_export(target), check_dtype=False)


def test_an_export_without_the_run_columns_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(BenchError, match=r"other.csv is not a bench export: it lacks run_id, method, .*bench report"):
        load_export(path)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--from", str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "lacks run_id" in proc.stderr
