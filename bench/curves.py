"""Sparsity curves as plain data (no torch), so reports and the CLI can average and print them.

A stored curve set (``sparsity.json``, written by :mod:`bench.sparsity`) maps each name of
``CURVES`` to fractions over its ``eps`` grid; runs logged before the BN-folded curves have only
the two raw ones.
"""

from __future__ import annotations

CURVES = ("unstructured", "structured", "unstructured_folded", "structured_folded", "gamma")

CURVE_TITLES = {
    "unstructured": "unstructured, raw: fraction of conv + linear weights with |w| < eps",
    "structured": "structured, raw: fraction of conv filters with mean |w| < eps",
    "unstructured_folded": "unstructured, BN-folded: fraction of conv weights with |w * gamma / sqrt(var + eps)| "
    "< eps x the layer's mean",
    "structured_folded": "structured, BN-folded: fraction of conv filters with folded mean |w| "
    "< eps x the layer's mean",
    "gamma": "BN scales: fraction of BN channels with |gamma| < eps",
}


def mean_by_method(named: dict[str, dict]) -> dict[str, dict]:
    """Curves labelled "<method> s<seed>" averaged over seeds per method (pointwise means of the
    fractions; ``seeds`` counts the runs). A curve older runs lack is averaged over the runs that have it."""
    grouped: dict[str, list[dict]] = {}
    for label, curves in named.items():
        grouped.setdefault(label.rsplit(" s", 1)[0], []).append(curves)
    out = {}
    for method, runs in grouped.items():
        mean: dict = {"eps": runs[0]["eps"], "seeds": len(runs)}
        for kind in CURVES:
            present = [r[kind] for r in runs if r.get(kind)]
            if present:
                mean[kind] = [sum(values) / len(present) for values in zip(*present, strict=True)]
        out[method] = mean
    return out


def format_curves(named: dict[str, dict], every: int = 4) -> str:
    """One text table per curve kind: a row per ``every``-th eps of the grid (4: one per decade), a
    column per named model (a method's seed mean, or one run)."""
    names = list(named)
    eps = named[names[0]]["eps"]
    blocks = []
    for kind in CURVES:
        shown = [n for n in names if named[n].get(kind)]
        if not shown:
            continue
        header = ["eps", *[_column(n, named[n]) for n in shown]]
        lines = [f"{CURVE_TITLES[kind]}", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for i in range(0, len(eps), every):
            lines.append("| " + " | ".join([f"{eps[i]:.0e}", *[f"{named[n][kind][i]:.3f}" for n in shown]]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _column(name: str, curves: dict) -> str:
    seeds = curves.get("seeds")
    return f"{name} (n={seeds})" if seeds else name
