"""Published figures (results/reference/published.csv) as rows beside ours, marked "published".

Pure pandas: reads the CSV, never recomputes. Published CIFAR rows selected their checkpoint on
the test set and ran on the original CIFAR-10; ours select on validation, so the table title and
the method cell say where each row comes from.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "published.csv"


def load_published(path: Path = REFERENCE_CSV) -> pd.DataFrame:
    return pd.read_csv(path)


def published_for(model: str, dataset: str, path: Path = REFERENCE_CSV) -> pd.DataFrame:
    """The published rows for ``model`` on ``dataset`` (empty when there are none)."""
    reference = load_published(path)
    return reference[(reference["model"] == model) & (reference["dataset"] == dataset)].reset_index(drop=True)
