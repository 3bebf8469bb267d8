"""Report figures (matplotlib, Agg): each function takes stored results and returns a Figure, or
None when the runs hold nothing to plot. :func:`save` writes PNG and PDF.

- accuracy against FLOPs reduction: one line per method across targets (mean, std bars over
  seeds), the dense baseline as a dashed line, and a sweep's trials with their Pareto front;
- accuracy against measured latency (and the latency's batch and device);
- remaining channels per prunable layer of each method's final plan;
- sparsity curves over eps, raw and BN-folded (and BN gamma's), one line per row (seed mean);
- a sweep's BN-folded structured sparsity against each swept setting and against accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

DPI = 150
MIN_HALF_SPAN_PP = 5.0  # the FLOPs axis spans at least +-5 pp: one target must not fill it with 0.1 pp


def titled(what: str, title: str) -> str:
    """What the figure shows, then which runs (the table's title: model, dataset label, group keys)."""
    return f"{what}\n{title}" if title else what


def _finish(fig: Figure, ax, title: str) -> Figure:
    """The title, grid, legend and layout every figure shares."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_flops(runs: pd.DataFrame, title: str = "") -> Figure | None:
    ours = runs[runs["method"] != "dense"].dropna(subset=["flops_reduction", "test_acc"])
    if ours.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    trials = ours[ours["trial"].notna()] if "trial" in ours else ours.iloc[:0]
    runs_only = ours.drop(trials.index)
    series = "series" if "series" in runs else "method"  # a table row less its target: one protocol
    for method, rows in runs_only.groupby(series, sort=False):
        points = rows.groupby(rows["flops_reduction"].round(3))["test_acc"].agg(["mean", "std"]).sort_index()
        ax.errorbar(
            points.index * 100, points["mean"] * 100, yerr=points["std"].fillna(0) * 100, marker="o", capsize=3,
            label=str(method),
        )  # fmt: skip
    if not trials.empty:
        ax.scatter(
            trials["flops_reduction"] * 100, trials["best_val_acc"] * 100, s=14, alpha=0.5, label="sweep trials (val)"
        )
        front = pareto_front(trials["flops_reduction"], trials["best_val_acc"])
        ax.plot(front[:, 0] * 100, front[:, 1] * 100, "k-", lw=1.2, label="Pareto front (val)")
    dense = runs[runs["method"] == "dense"].dropna(subset=["test_acc"])
    for name, rows in dense.groupby(series, sort=False):  # one line per dense protocol
        mean = rows["test_acc"].mean() * 100
        ax.axhline(mean, color="grey", ls="--", lw=1, label=f"{name} ({mean:.2f}%)")
    ax.set_xlabel("FLOPs reduction (%, conv+linear MACs)")
    ax.set_ylabel("test accuracy (%)" if trials.empty else "accuracy (%): test for runs, val for trials")
    ax.set_xlim(*percent_span(ours["flops_reduction"] * 100))
    return _finish(fig, ax, titled("accuracy against FLOPs reduction", title))


def percent_span(values: pd.Series, half: float = MIN_HALF_SPAN_PP) -> tuple[float, float]:
    """Axis limits (%) holding every value with a margin, at least ``2 * half`` wide, inside [0, 100]:
    a narrow spread is centred in a ``2 * half`` window, shifted (not cut) where it meets 0 or 100."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(half - (hi - lo) / 2, 0.05 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, min(100.0, hi - lo)
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    return lo, hi


def pareto_front(x: pd.Series, y: pd.Series):
    """Points not dominated when both x and y are maximised, sorted by x (an (n, 2) array)."""
    import numpy as np

    points = np.column_stack([x.to_numpy(float), y.to_numpy(float)])
    order = points[np.argsort(-points[:, 0], kind="stable")]
    front, best_y = [], -np.inf
    for px, py in order:
        if py > best_y:
            front.append((px, py))
            best_y = py
    return np.array(sorted(front))


def accuracy_vs_latency(runs: pd.DataFrame, title: str = "") -> Figure | None:
    timed = runs.dropna(subset=["latency_median_ms", "test_acc"])
    if timed.empty:
        return None
    from reports.rows import prepare, row_labels

    labels = timed["row"] if "row" in timed else row_labels(prepare(timed)).set_axis(timed.index)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, rows in timed.groupby(labels, sort=False):
        ax.errorbar(
            rows["latency_median_ms"].mean(), rows["test_acc"].mean() * 100,
            xerr=rows["latency_median_ms"].std() if len(rows) > 1 else 0,
            yerr=rows["test_acc"].std() * 100 if len(rows) > 1 else 0, marker="s", capsize=3, label=str(method),
        )  # fmt: skip
    batch = _first(timed, "latency_batch_size")
    batch = int(float(batch)) if batch is not None else None
    device = _first(timed, "latency_device")
    ax.set_xlabel(f"latency (ms per batch of {batch or '?'}, median, {device or 'device ?'})")
    ax.set_ylabel("test accuracy (%)")
    return _finish(fig, ax, titled("accuracy against measured latency", title))


def _first(frame: pd.DataFrame, column: str) -> Any:
    if column not in frame:
        return None
    values = frame[column].dropna()
    return values.iloc[0] if not values.empty else None


def channels_per_layer(plans: dict[str, list[dict[str, Any]]], title: str = "") -> Figure | None:
    """``plans``: method label -> its stored plans (rounds, in order). Dense widths come from the
    first round's channel counts."""
    widths = {label: remaining_channels(rounds) for label, rounds in plans.items() if rounds}
    if not widths:
        return None
    dense = {u: w for before, _ in widths.values() for u, w in before.items()}
    units = list(dense)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.22 * len(units)), 4.4))
    ax.plot(range(len(units)), [dense[u] for u in units], "k--", lw=1, label="dense")
    for label, (_, after) in widths.items():
        ax.plot(range(len(units)), [after.get(u, dense[u]) for u in units], marker=".", label=label)
    ax.set_xticks(range(len(units)), [u.replace(".conv1", "").replace("layer", "L") for u in units], rotation=90)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("prunable layer (unit), forward order")
    ax.set_ylabel("channels remaining")
    return _finish(fig, ax, titled("remaining channels per layer", title))


def remaining_channels(rounds: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(widths before the first plan, widths after the last) of every unit any round pruned. Each
    round's kept indices are relative to that round's widths, so the rounds compose in order."""
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for plan in rounds:
        for unit, kept in plan["keep"].items():
            before.setdefault(unit, plan["channels"][unit])
            after[unit] = len(kept)
    return before, after


SPARSITY_PANELS = {  # curve -> panel title (the stored curves of bench.curves.CURVES)
    "unstructured": "raw: weights with |w| < eps",
    "structured": "raw: filters with mean |w| < eps",
    "unstructured_folded": "BN-folded: weights < eps x layer mean",
    "structured_folded": "BN-folded: filters < eps x layer mean",
    "gamma": "BN scales: |gamma| < eps",
}
FOLDED_METRICS = {  # the summaries of the settings figure: BN-folded, below 10% of the layer's mean
    "sparsity/structured_folded_eps_1e-01": "filters < 10% of layer mean (%)",
    "sparsity/unstructured_folded_eps_1e-01": "weights < 10% of layer mean (%)",
}
FOLDED_METRIC = next(iter(FOLDED_METRICS))


def sparsity_curves(curves: dict[str, dict[str, Any]], title: str = "") -> Figure | None:
    """``curves``: label -> stored sparsity curves (eps and one fraction per eps for each curve; a
    seed mean when ``seeds`` is there). Raw curves above, BN-folded ones and gamma's below; runs
    logged before the folded curves leave those panels empty."""
    if not curves:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharey=True)
    panels = dict(zip(SPARSITY_PANELS, [axes[0][0], axes[0][1], axes[1][0], axes[1][1], axes[1][2]], strict=True))
    for label, c in curves.items():
        style = {"ls": "--", "color": "grey"} if label.startswith("dense") else {}
        name = f"{label} (n={c['seeds']})" if c.get("seeds") else label
        for kind, ax in panels.items():
            if c.get(kind):
                ax.plot(c["eps"], c[kind], label=name, **style)
    for kind, ax in panels.items():
        ax.set_title(SPARSITY_PANELS[kind], fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("eps (relative to the layer's mean)" if "folded" in kind else "eps")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("fraction below eps")
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][2].axis("off")
    axes[0][2].legend(handles, labels, fontsize=8, loc="center")
    fig.suptitle(titled("sparsity of the trained (pre-pruning) models, mean over seeds", title))
    fig.tight_layout()
    return fig


def sparsity_vs_settings(runs: pd.DataFrame, title: str = "") -> Figure | None:
    """A sweep's trials: BN-folded structured (top) and unstructured (bottom) sparsity before pruning,
    below a tenth of the layer's mean folded magnitude, against each numeric method setting that
    varies over the trials (3 values or more) and against the trial's validation accuracy, with the
    dense baseline's as a dashed line. None without such trials."""
    trials = runs[runs["trial"].notna()] if "trial" in runs else runs.iloc[:0]
    if trials.empty or FOLDED_METRIC not in trials or trials[FOLDED_METRIC].isna().all():
        return None
    swept = [c for c in _numeric_settings(trials) if trials[c].nunique() >= 3]
    dense = runs[(runs["method"] == "dense") & runs[FOLDED_METRIC].notna()]
    xs = [(pd.to_numeric(trials[c]), c.removeprefix("protocol.method_config."), True) for c in swept]
    xs.append((trials["best_val_acc"] * 100, "val accuracy after pruning + fine-tune (%)", False))
    fig, axes = plt.subplots(2, len(xs), figsize=(4.2 * len(xs) + 1, 7.5), sharey="row", squeeze=False)
    for row, (metric, label) in zip(axes, FOLDED_METRICS.items(), strict=True):
        for ax, (x, name, log) in zip(row, xs, strict=True):
            points = ax.scatter(x, trials[metric] * 100, c=trials["best_val_acc"] * 100, cmap="viridis", s=22)
            ax.set_xscale("log" if log else "linear")
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
            if not dense.empty and metric in dense:
                ax.axhline(dense[metric].mean() * 100, ls="--", color="grey", label=f"dense (n={len(dense)})")
        row[0].set_ylabel(f"BN-folded {label}")
        if not dense.empty and metric in dense:
            row[-1].scatter(dense["best_val_acc"] * 100, dense[metric] * 100, marker="*", s=90, color="k")
            row[-1].legend(fontsize=8)
    fig.colorbar(points, ax=axes.ravel().tolist(), label="val accuracy (%)")
    fig.suptitle(titled("sweep trials: BN-folded sparsity before pruning", title))
    return fig


def _numeric_settings(frame: pd.DataFrame) -> list[str]:
    """The method's settings (``protocol.method_config.*``) whose values all read as numbers."""
    out = []
    for column in (c for c in frame.columns if str(c).startswith("protocol.method_config.")):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().all():
            out.append(column)
    return out


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """``name``.png and ``name``.pdf under ``out_dir``; the figure is closed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return paths
