"""Which runs a table row aggregates: the runs of one protocol digest of one method (or sweep trial).

A row never pools unlike runs. Its runs share the protocol digest (every setting that shaped the
result except the seed: ``reports.source``'s ``protocol`` column), so ``n`` counts distinct seeds of
one protocol and the std is over them. Before rows are formed, :func:`select` sets aside repeated
runs (the same digest, method and seed: the latest started is kept) and, unless asked, sweep trials.

Where a table holds several digests of one method (or of the dense baseline), each becomes a row
labelled by the settings that differ among them: ``l1 (dense.epochs=4)``, ``l1 (dense.epochs=2)``.
Such a setting also labels the other methods' rows that record it (``ffr (dense.epochs=4)``), so a
reader sees which rows are comparable, except settings of the method itself (``method``,
``method_config.*``), which label only that method's rows. Digests that no recorded setting tells
apart (runs of old stores) are labelled by the digest: ``l1 (protocol=cfg:1a2b3c4d5e6f)``. The
target is shown as before (``l1 (30% target)``), never as its setting, and a scratch row names the
method whose architecture it trains (``scratch-E (from l1)``), not that run's digest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from bench.schema import DENSE
from reports.source import SETTING, setting_columns, setting_text

TARGET_KEY = "prune.target_flops_reduction"  # shown as the row's target, never as a setting
DIGEST = "protocol"  # the pseudo-setting of digests that no recorded setting tells apart
OPAQUE = ("scratch_source",)  # settings holding another run's digest: shown as "from <method>" instead
UNKNOWN = "unknown"  # the digest of runs given without one (bench run's own results)
TRIALS_NOTE = "{n} sweep trial run(s) left out (shown with --trials or --sweep NAME)"
REPEATS_NOTE = "{n} repeated run(s) set aside (same protocol, method and seed; the latest kept)"
IDENTITY = ["protocol", "method", "seed", "prune_rule", "prune_value", "study", "trial"]  # one run counts once


@dataclass(frozen=True, eq=False)
class Row:
    """One table row: the runs of one digest of one method (or trial) and how the row is named.

    ``settings`` is the text of the settings every method's rows record (``dense.epochs=4``): rows
    are compared (bold, paired differences) only with rows of the same settings and target.
    ``values`` holds every setting of the digest, and the digest itself under ``protocol``.
    """

    method: str
    trial: str  # "trial 3" ("<study> trial 3" when the table holds several studies), else ""
    source: str  # "from l1": the method whose architecture a scratch row trains, else ""
    target: float | None
    target_shown: bool  # the method ran at several targets: the label says which
    keys: tuple[str, ...]  # the settings its label shows ("dense.epochs", ...)
    settings: str
    values: Mapping[str, str | None]
    runs: pd.DataFrame

    @property
    def label(self) -> str:
        target = f"{self.target:.0%} target" if self.target_shown and self.target is not None else ""
        return _compose(self.method, [self.trial, self.source, target, *self._settings()])

    @property
    def name(self) -> str:
        """The label without the target (paired differences name the target once)."""
        return _compose(self.method, [self.trial, self.source, *self._settings()])

    def _settings(self) -> list[str]:
        return [f"{k}={self.values.get(k)}" for k in self.keys]


def _compose(method: str, pieces: list[str]) -> str:
    shown = [p for p in pieces if p]
    return f"{method} ({', '.join(shown)})" if shown else method


# --- which runs count -------------------------------------------------------------------------


def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every column this module reads (bench run's own results lack most), index 0..n-1;
    a run without a digest gets ``unknown``."""
    runs = runs.reset_index(drop=True)
    defaults = {"protocol": UNKNOWN, "study": None, "trial": None, "prune_rule": None, "prune_value": None}
    defaults["plan_source"] = None
    defaults |= {"start_time": math.nan, "target": math.nan, "seed": pd.Series(range(len(runs)))}
    runs = runs.assign(**{k: v for k, v in defaults.items() if k not in runs})
    return runs.assign(protocol=runs["protocol"].where(runs["protocol"].notna(), UNKNOWN))


def select(runs: pd.DataFrame, trials: bool) -> tuple[pd.DataFrame, list[str]]:
    """The runs a table counts (sweep trials only when ``trials``; each (digest, method, seed) once)
    and the footnotes saying what was left out."""
    notes = []
    if not trials:
        is_trial = runs["trial"].notna() | runs["study"].notna()
        if is_trial.any():
            notes.append(TRIALS_NOTE.format(n=int(is_trial.sum())))
        runs = runs[~is_trial]
    kept = latest(runs)
    if len(kept) < len(runs):
        notes.append(REPEATS_NOTE.format(n=len(runs) - len(kept)))
    return kept, notes


def latest(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per (digest, method, seed): the latest started (the last given when times are
    missing), in the place of the first, so rows keep the order the methods were first run in."""
    newest_last = runs.sort_values("start_time", kind="stable", na_position="first")
    keep = newest_last.drop_duplicates(subset=IDENTITY, keep="last").index
    order = pd.Series(range(len(runs)), index=runs.index)
    first = order.groupby([runs[c] for c in IDENTITY], dropna=False, sort=False).transform("min")
    return runs.loc[keep].assign(_first=first).sort_values("_first", kind="stable").drop(columns="_first")


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Naming:
    """Which settings label whose rows: each method's own, the shared ones, and the compared ones."""

    own: Mapping[tuple[str, str, str], list[str]]  # (method, trial, source) -> settings differing among its digests
    shared: frozenset[str]  # settings that differ for some method, label every row recording them
    compared: tuple[str, ...]  # shared settings every method's rows record: rows compare within them


def partition(runs: pd.DataFrame) -> list[Row]:
    """The rows of one table: the dense baseline's first, then each method's in first-seen order
    (a sweep trial is its own method), and within a method by target, then first-seen digest."""
    source = ("from " + runs["plan_source"].astype(object).astype(str)).where(runs["plan_source"].notna(), "")
    runs = runs.assign(_trial=trial_pieces(runs), _method=runs["method"].astype(str), _source=source.astype(object))
    bases = {key: part for key, part in runs.groupby(["_method", "_trial", "_source"], sort=False)}
    digests = {key: _digests(part) for key, part in bases.items()}
    naming = _naming(digests, {key: _several_targets(part) for key, part in bases.items()})
    order = sorted(bases, key=lambda key: key[0] != DENSE)  # stable: dense first
    return [row for key in order for row in _rows(key, bases[key], digests[key], naming)]


def _digests(part: pd.DataFrame) -> dict[str, dict[str, str | None]]:
    """Each digest of one method's runs (first-seen order) -> its settings, the target and the digest."""
    out = {}
    for digest, runs in part.groupby("protocol", sort=False):
        first = runs.iloc[0]
        values = {c.removeprefix(SETTING): setting_text(first[c]) for c in setting_columns(runs)}
        target = pd.to_numeric(runs["target"], errors="coerce").dropna()
        out[str(digest)] = values | {DIGEST: str(digest), "_target": None if target.empty else str(target.iloc[0])}
    return out


def _several_targets(part: pd.DataFrame) -> bool:
    return pd.to_numeric(part["target"], errors="coerce").dropna().nunique() > 1


def _naming(digests: Mapping[tuple[str, ...], dict], several: Mapping[tuple[str, ...], bool]) -> _Naming:
    own = {key: _differing(found, several[key]) for key, found in digests.items()}
    shared = frozenset(k for keys in own.values() for k in keys if not _method_specific(k))
    methods = [found for key, found in digests.items() if key[0] != DENSE]
    compared = tuple(sorted(k for k in shared if methods and all(_sets(found, k) for found in methods)))
    return _Naming(own, shared, compared)


def _differing(found: Mapping[str, dict], several_targets: bool) -> list[str]:
    """The settings whose values differ among one method's digests; the digest itself when no setting
    (nor the target) tells two of them apart."""
    keys = {k for values in found.values() for k in values} - {DIGEST, "_target", *OPAQUE}
    if several_targets:
        keys.discard(TARGET_KEY)
    differ = sorted(k for k in keys if len({values.get(k) for values in found.values()}) > 1)
    told_apart = {(v["_target"] if several_targets else None, *(v.get(k) for k in differ)) for v in found.values()}
    return differ if len(told_apart) == len(found) else [*differ, DIGEST]


def _method_specific(key: str) -> bool:
    return key in ("method", DIGEST) or key.startswith("method_config.")


def _sets(found: Mapping[str, dict], key: str) -> bool:
    """Every digest of a method sets ``key`` (a dense digest sets no fine-tuning setting)."""
    return all(values.get(key) is not None for values in found.values())


def _rows(key: tuple[str, str, str], part: pd.DataFrame, found: dict[str, dict], naming: _Naming) -> list[Row]:
    shown = [k for k in naming.shared if any(v.get(k) is not None for v in found.values())]
    keys = sorted(set(naming.own[key]) | set(shown), key=lambda k: (k == DIGEST, k))
    several = _several_targets(part)
    rows = []
    for digest, values in found.items():
        target = None if values["_target"] is None else float(values["_target"])
        rows.append(
            Row(
                method=key[0],
                trial=key[1],
                source=key[2],
                target=target,
                target_shown=several,
                keys=tuple(keys),
                settings=", ".join(f"{k}={values.get(k)}" for k in naming.compared),
                values=values,
                runs=part[part["protocol"] == digest],
            )
        )
    return sorted(rows, key=lambda r: (r.target is None, r.target or 0.0))  # stable: first-seen digest


def trial_pieces(runs: pd.DataFrame) -> pd.Series:
    """ "trial N" for a sweep trial's run ("<study> trial N" when there are several studies), else ""
    (trials differ in hyperparameters, so they are never averaged together)."""
    trial = pd.to_numeric(runs["trial"], errors="coerce")
    several = runs["study"].nunique() > 1
    study = runs["study"].astype(object).astype(str) + " " if several else ""
    text = study + "trial " + trial.astype("Int64").astype(object).astype(str)
    return text.where(trial.notna(), "").astype(object)


def dense_for(row: Row, dense: list[Row]) -> Row | None:
    """The dense row ``row`` was pruned from: the only one, or the one whose labelled settings (its
    digest, for old runs) ``row`` shares; None when that is ambiguous."""
    if len(dense) == 1:
        return dense[0]
    keys = {k for d in dense for k in d.keys}
    found = [d for d in dense if all(row.values.get(k) == d.values.get(k) for k in keys)]
    return found[0] if len(found) == 1 else None


def row_labels(runs: pd.DataFrame) -> pd.Series:
    """The label of the row each of ``runs`` falls in (after :func:`prepare`; no selection)."""
    labels = pd.Series("", index=runs.index, dtype=object)
    for row in partition(runs):
        labels[row.runs.index] = row.label
    return labels
