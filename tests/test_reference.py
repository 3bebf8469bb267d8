"""The published figures: well-formed data, and rows that sit beside ours in the table."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from reports.reference import REFERENCE_CSV, load_published, published_rows, with_published
from reports.tables import COLUMNS

REQUIRED = ["method", "model", "dataset", "config", "baseline_acc", "pruned_acc", "params_reduction",
            "flops_reduction", "flops_convention", "selection", "source"]  # fmt: skip


def test_reference_csv_is_well_formed():
    ref = load_published()
    assert list(ref.columns) == REQUIRED
    assert set(ref["method"]) <= {"l1", "slim", "group_lasso", "oicsr", "sgl0", "stressednet", "ffr"}
    assert ref["baseline_acc"].between(50, 100).all() and ref["pruned_acc"].between(50, 100).all()
    for column in ("params_reduction", "flops_reduction"):
        assert ref[column].dropna().between(0, 100).all()
    assert set(ref["flops_convention"]) <= {"MACs", "2x MACs"}
    assert ref["source"].str.len().gt(10).all()


def test_errors_were_converted_to_accuracy():
    """METHODS.md gives Li et al.'s ResNet-56 as error 6.96 -> 6.90 (plan A)."""
    ref = load_published()
    row = ref[(ref["model"] == "resnet56") & (ref["config"] == "l1-a")].iloc[0]
    assert (row.baseline_acc, row.pruned_acc) == (100 - 6.96, 100 - 6.90)


def test_published_rows_match_model_and_dataset_and_are_marked():
    rows = published_rows(load_published(), "vgg19", "cifar10")
    assert len(rows) == 1 and list(rows.columns) == COLUMNS
    row = rows.iloc[0]
    assert row["method"].startswith("slim (published") and "selected on test" in row["method"]
    assert row["test acc (%)"] == "93.80" and row["acc change (pp)"] == "+0.14"
    assert row["FLOPs red. (%)"] == "51.0 (2x MACs)"  # Network Slimming counts 2 FLOPs per MAC
    assert published_rows(load_published(), "vgg19", "cifar100").iloc[0]["params red. (%)"] == "75.1"


def test_with_published_appends_after_ours_and_leaves_unmatched_tables_alone():
    ours = pd.DataFrame([{c: "x" for c in COLUMNS}], columns=COLUMNS)
    both = with_published(ours, "resnet56", "cifar10")
    assert len(both) == 3 and both.iloc[0]["method"] == "x"
    assert with_published(ours, "resnet32", "cifar10") is ours


def test_reports_never_import_torch():
    code = "import sys, reports.tables, reports.reference; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert REFERENCE_CSV.is_file()
