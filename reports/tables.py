"""The paper-style comparison table: one row per method plus the dense baseline.

Input: one row per (method, seed) with columns method, seed, test_acc, dense_test_acc, params,
dense_params, macs, dense_macs (accuracies as fractions, MACs per image). A cell is mean +- std
over seeds with n shown; with one seed there is no std.
"""

from __future__ import annotations

import math

import pandas as pd

COLUMNS = [
    "method",
    "n",
    "test acc (%)",
    "acc change (pp)",
    "params (M)",
    "params red. (%)",
    "FLOPs (M MACs)",
    "FLOPs red. (%)",
]


def mean_std(values: pd.Series, scale: float = 1.0, digits: int = 2) -> str:
    """'mean +- std' of ``values * scale``; just the mean when there is one value."""
    values = values.dropna() * scale
    if values.empty:
        return "n/a"
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f}"


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """Aggregate per-seed rows into one row per method, the dense baseline first."""
    order = ["dense", *[m for m in dict.fromkeys(results["method"]) if m != "dense"]]
    rows = []
    for method in order:
        group = results[results["method"] == method]
        if group.empty:
            continue
        rows.append(
            {
                "method": method,
                "n": len(group),
                "test acc (%)": mean_std(group["test_acc"], 100),
                "acc change (pp)": "-"
                if method == "dense"
                else _signed(mean_std(group["test_acc"] - group["dense_test_acc"], 100)),
                "params (M)": f"{group['params'].mean() / 1e6:.3f}",
                "params red. (%)": _reduction(group["params"], group["dense_params"]),
                "FLOPs (M MACs)": f"{group['macs'].mean() / 1e6:.2f}",
                "FLOPs red. (%)": _reduction(group["macs"], group["dense_macs"]),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _reduction(values: pd.Series, base: pd.Series) -> str:
    reduction = (1 - values / base) * 100
    return "-" if math.isclose(reduction.abs().max(), 0.0, abs_tol=1e-9) else mean_std(reduction, 1, 1)


def _signed(text: str) -> str:
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def format_table(table: pd.DataFrame, title: str = "") -> str:
    """A GitHub-flavoured Markdown table (also readable as plain text in a terminal)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" if c == "method" else "---:" for c in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(([title, ""] if title else []) + [header, rule, *body])
