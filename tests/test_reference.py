"""The published figures: well-formed data, and rows that sit beside ours in the table."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from reports.reference import COLUMNS, REFERENCE_CSV, load_published, published_for
from reports.tables import build_tables

METHODS = {"l1", "slim", "group_lasso", "oicsr", "sgl0", "stressednet", "ffr", "scratch-E", "scratch-B"}


def test_reference_csv_is_well_formed():
    ref = load_published()
    assert list(ref.columns) == list(COLUMNS)
    assert set(ref["method"]) <= METHODS
    assert ref["baseline_acc"].between(50, 100).all() and ref["pruned_acc"].between(50, 100).all()
    for column in ("params_reduction", "flops_reduction"):
        assert ref[column].dropna().between(0, 100).all()
    assert set(ref["flops_convention"]) <= {"MACs", "2x MACs"}
    assert ref["source"].str.len().gt(10).all()


def test_errors_were_converted_to_accuracy():
    """methods/README.md gives Li et al.'s ResNet-56 as error 6.96 -> 6.90 (plan A)."""
    ref = load_published()
    row = ref[(ref["model"] == "resnet56") & (ref["config"] == "l1-a")].iloc[0]
    assert (row.baseline_acc, row.pruned_acc) == (100 - 6.96, 100 - 6.90)


def test_published_for_matches_model_and_dataset():
    rows = published_for("vgg19", "cifar10")
    assert len(rows) == 1 and rows.iloc[0]["method"] == "slim" and rows.iloc[0]["flops_convention"] == "2x MACs"
    assert published_for("resnet32", "cifar10").empty


def test_published_rows_sit_after_ours_marked_and_footnoted():
    ours = pd.DataFrame(
        [
            {"method": m, "seed": 0, "test_acc": acc, "dense_test_acc": 0.936, "params": p, "dense_params": 20e6,
             "macs": f, "dense_macs": 398e6, "target": target}
            for m, acc, p, f, target in (("dense", 0.936, 20e6, 398e6, None), ("slim", 0.935, 5e6, 200e6, 0.5))
        ]
    )  # fmt: skip
    table = build_tables(ours, group_by=(), reference=published_for("vgg19", "cifar10"))[0]
    labels = [row["method"] for row in table.rows]
    assert labels == ["dense", "slim", "slim (70% channels) [published, Liu et al. 2017]"]  # at 50%: within 2 pp of 51%
    published = table.rows[2]
    assert published["test acc (%)"] == "93.80" and published["acc change (pp)"] == "+0.14"
    assert published["FLOPs red. (%)"] == "51.0 †"  # Network Slimming counts 2 FLOPs per MAC
    assert any("2x MACs" in note for note in table.footnotes)


def test_reports_never_import_torch():
    code = "import sys, reports.tables, reports.reference; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert REFERENCE_CSV.is_file()
