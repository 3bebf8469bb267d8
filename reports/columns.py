"""The report's columns, each declared once, and the records and tables they are read from.

A :class:`Column` names its header, the :class:`Record` field it shows, how that value is scaled and
rounded, which direction is better (for bolding the best row) and its CSV name. The Markdown, LaTeX,
HTML and CSV writers (:mod:`reports.render`) and the "bold the best" rule (:mod:`reports.tables`)
all read :data:`COLUMNS`; to add a column, add a field to :class:`Record`, fill it where records are
built, and add one line to :data:`COLUMNS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from reports.stats import Summary


@dataclass(frozen=True)
class Record:
    """The numbers behind one table row: accuracies as fractions, params and MACs as counts (MACs per
    image), reductions in percent, latency in ms per batch (median)."""

    label: str  # the row's name in the table
    kind: str  # "dense", "ours" or "published"
    method: str
    target: float | None  # the FLOPs target these runs pruned to, as a fraction
    n: int | str  # seeds averaged ("-" for a published row)
    base_acc: Summary | None
    test_acc: Summary | None
    acc_change: Summary | None = None
    params: float | None = None
    params_red: Summary | None = None
    macs: float | None = None
    flops_red: Summary | None = None
    latency: Summary | None = None
    speedup: float | None = None  # the dense row's mean latency over this row's
    convention: str | None = None  # how a published source counts FLOPs ("MACs", "2x MACs")
    source: str | None = None  # the paper a published row is copied from
    plan: str | None = None  # the named pruning plan these runs used (e.g. "l1-a"), if any
    epochs: float | None = None  # the training budget: mean of the runs' train_epochs
    images: float | None = None  # the same budget in training images seen
    channels_red: Summary | None = None  # achieved share of prunable channels removed, in percent
    prune_rule: str | None = None  # the rule these runs pruned by ("target_flops_reduction", ...)
    settings: str = ""  # protocol settings rows are compared within (bold): "dense.epochs=4"


@dataclass(frozen=True)
class Column:
    """One column of the table and of the CSV.

    ``kind`` says what the record field holds: "text" (shown as it is), "summary" (a :class:`Summary`
    over seeds, shown as mean +- std) or "number" (a float). Shown values are ``value * scale`` with
    ``digits`` decimals; CSV values are rounded to ``csv_digits``. ``header`` None: CSV only;
    ``csv_name`` None: table only; ``csv_std``: the CSV column of the std over seeds, if any.
    ``optional``: shown only when the table needs it ("latency": a row has a latency; "channels":
    a row pruned by a channel rule). ``trim``: no trailing zeros ("200", "2.4").
    """

    header: str | None
    key: str
    kind: Literal["text", "summary", "number"] = "text"
    scale: float = 1.0
    digits: int = 2
    better: Literal["higher", "lower"] | None = None
    csv_name: str | None = None
    csv_std: str | None = None
    csv_digits: int = 4
    signed: bool = False
    suffix: str = ""
    optional: str | None = None
    trim: bool = False

    def value(self, record: Record) -> Any:
        return getattr(record, self.key)

    def cell(self, record: Record) -> str:
        """The display text of this column for ``record`` ("-" when there is no value)."""
        value = self.value(record)
        if self.kind == "text":
            return str(value)
        if value is None or (self.kind == "number" and math.isnan(value)):
            return "-"
        if self.kind == "summary":
            return value.text(self.scale, self.digits, self.signed)
        text = f"{value * self.scale:.{self.digits}f}"
        if self.trim and "." in text:
            text = text.rstrip("0").rstrip(".")
        return f"{text}{self.suffix}"

    def csv(self, record: Record) -> dict[str, Any]:
        """This column's CSV field(s) for ``record``: the raw value, or the scaled and rounded mean (and std)."""
        value = self.value(record)
        if self.kind == "text":
            return {self.csv_name: value}
        if self.kind == "number":  # divides: x / 1e6 and x * 1e-6 can differ in the last bit
            return {self.csv_name: None if value is None else round(value / (1 / self.scale), self.csv_digits)}
        fields = {self.csv_name: self._rounded(None if value is None else value.mean)}
        if self.csv_std:
            fields[self.csv_std] = self._rounded(None if value is None else value.std)
        return fields

    def _rounded(self, value: float | None) -> float | None:
        return None if value is None else round(value * self.scale, self.csv_digits)

    def score(self, record: Record) -> float | None:
        """The number compared when bolding the best row (a summary's mean)."""
        value = self.value(record)
        if value is None:
            return None
        return value.mean if isinstance(value, Summary) else float(value)


PERCENT, MILLIONS = 100.0, 1e-6
COLUMNS: tuple[Column, ...] = (
    Column(None, "kind", csv_name="kind"),
    Column("method", "label", csv_name="method"),
    Column(None, "target", csv_name="target"),
    Column("n", "n", csv_name="n"),
    Column("epochs", "epochs", "number", digits=1, csv_name="train_epochs", trim=True),
    Column(None, "images", "number", csv_name="train_images", csv_digits=0),
    Column("base acc (%)", "base_acc", "summary", PERCENT, csv_name="base_acc_mean"),
    Column("test acc (%)", "test_acc", "summary", PERCENT, better="higher", csv_name="test_acc_mean",
           csv_std="test_acc_std"),
    Column("acc change (pp)", "acc_change", "summary", PERCENT, better="higher", csv_name="acc_change_mean",
           csv_std="acc_change_std", signed=True),
    Column("params (M)", "params", "number", MILLIONS, 3, csv_name="params_m", csv_digits=6),
    Column("params red. (%)", "params_red", "summary", digits=1, better="higher", csv_name="params_red_pct"),
    Column("FLOPs (M MACs)", "macs", "number", MILLIONS, 2, csv_name="macs_m", csv_digits=6),
    Column("FLOPs red. (%)", "flops_red", "summary", digits=1, better="higher", csv_name="flops_red_pct"),
    Column("channels red. (%)", "channels_red", "summary", digits=1, csv_name="channels_red_pct",
           optional="channels"),
    Column("latency (ms)", "latency", "summary", better="lower", csv_name="latency_ms", optional="latency"),
    Column("speed-up", "speedup", "number", better="higher", csv_name="speedup", suffix="x", optional="latency"),
)  # fmt: skip
CHANNEL_RULES = ("channel_fraction", "layer_ratio")  # rules under which a table shows the channels removed
BY_KEY = {c.key: c for c in COLUMNS}
CSV_FIELDS = ["group"] + [name for c in COLUMNS for name in (c.csv_name, c.csv_std) if name]


def needed(records: list[Record]) -> set[str]:
    """The optional columns ``records`` need: "latency" when one has a latency, "channels" when one
    pruned by a channel rule (under a FLOPs target the channels removed is a by-product)."""
    found = {"latency"} if any(r.latency is not None for r in records) else set()
    return found | ({"channels"} if any(r.prune_rule in CHANNEL_RULES for r in records) else set())


def shown(optional: set[str]) -> tuple[Column, ...]:
    """The columns a table displays, in order; an optional one only when named in ``optional``."""
    return tuple(c for c in COLUMNS if c.header is not None and (c.optional is None or c.optional in optional))


@dataclass
class Table:
    """One group's table: display text per cell, plus which cells are bold and the notes."""

    title: str
    columns: list[str]  # the headers shown
    rows: list[dict[str, str]]  # header -> display text
    kinds: list[str]  # "dense", "ours" or "published", per row
    records: list[Record]  # the numbers behind each row (for CSV)
    bold: set[tuple[int, str]] = field(default_factory=set)  # (row, header)
    footnotes: list[str] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)  # what a column counts: LaTeX and HTML footnotes only

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)
