"""Statistics over seeds: mean, sample std (n - 1), and paired differences with a 95% t interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation over ``n`` values; std is None when n < 2."""

    mean: float
    std: float | None
    n: int

    @staticmethod
    def of(values: pd.Series) -> Summary | None:
        values = pd.to_numeric(values, errors="coerce").dropna()
        if values.empty:
            return None
        std = float(values.std(ddof=1)) if len(values) > 1 else None
        return Summary(float(values.mean()), std, len(values))

    def text(self, scale: float = 1.0, digits: int = 2, signed: bool = False) -> str:
        sign = "+" if signed else ""
        mean = f"{self.mean * scale:{sign}.{digits}f}"
        return mean if self.std is None else f"{mean} +- {self.std * scale:.{digits}f}"


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over paired seeds, with the two-sided 95% Student-t interval (None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        mean = f"{self.mean * scale:+.{digits}f}"
        if self.low is None:
            return f"{mean} (n={self.n}, no interval)"
        return f"{mean} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}] (95% CI, n={self.n} seeds)"


def paired_difference(a: pd.Series, b: pd.Series) -> PairedDifference | None:
    """``a`` and ``b`` are indexed by seed; only seeds present in both are paired."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    if joined.empty:
        return None
    diff = joined["a"] - joined["b"]
    n = len(diff)
    if n < 2:
        return PairedDifference(float(diff.mean()), None, None, n)
    half = float(stats.t.ppf(0.975, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
    return PairedDifference(float(diff.mean()), float(diff.mean()) - half, float(diff.mean()) + half, n)
