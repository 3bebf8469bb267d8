"""Published figures (results/reference/published.csv) as rows beside ours, marked "published".

Pure pandas: reads the CSV, never recomputes. Published CIFAR rows selected their checkpoint on
the test set and ran on the original CIFAR-10; ours select on validation, so the table title and
the method cell say where each row comes from.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports.tables import COLUMNS

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "published.csv"


def load_published(path: Path = REFERENCE_CSV) -> pd.DataFrame:
    return pd.read_csv(path)


def published_rows(reference: pd.DataFrame, model: str, dataset: str) -> pd.DataFrame:
    """The published rows for ``model`` on ``dataset``, in the comparison table's columns."""
    matches = reference[(reference["model"] == model) & (reference["dataset"] == dataset)]
    rows = [
        {
            "method": f"{r.method} (published, {r.config}; selected on {r.selection})",
            "n": "-",
            "test acc (%)": f"{r.pruned_acc:.2f}",
            "acc change (pp)": f"{r.pruned_acc - r.baseline_acc:+.2f}",
            "params (M)": "-",
            "params red. (%)": _percent(r.params_reduction),
            "FLOPs (M MACs)": "-",
            "FLOPs red. (%)": _percent(r.flops_reduction) + (" (2x MACs)" if r.flops_convention != "MACs" else ""),
        }
        for r in matches.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _percent(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.1f}"


def with_published(table: pd.DataFrame, model: str, dataset: str, path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """Our comparison table followed by the matching published rows (none: the table unchanged)."""
    extra = published_rows(load_published(path), model, dataset)
    return table if extra.empty else pd.concat([table, extra], ignore_index=True)
