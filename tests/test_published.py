"""Published rows beside ours: matched by named plan or by FLOPs target (within a stated tolerance),
never beside a run at another target; rows the harness cannot reproduce are labelled; the CSV is
validated with a clear error. Runs go through reports.source.tidy, as a report reads them."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from bench.errors import BenchError
from reports.reference import FLOPS_TOLERANCE, load_published, matches, plan_of, published_for
from reports.source import tidy
from reports.tables import build_tables

DENSE = {"params": 853018, "macs": 125485706, "acc": 0.930}  # resnet56


def _runs(model: str, rows: list[tuple[str, str | None, float | None, float, float]]) -> pd.DataFrame:
    """Our runs on ``model``: (method, plan, target, test_acc, MACs fraction kept), seeds 0 and 1, plus dense."""
    out = [_run(model, "dense", None, None, DENSE["acc"], 1.0, seed) for seed in (0, 1)]
    for method, plan, target, acc, kept in rows:
        out += [_run(model, method, plan, target, acc + 0.001 * seed, kept, seed) for seed in (0, 1)]
    return tidy(pd.DataFrame(out))


def _run(model: str, method: str, plan: str | None, target: float | None, acc: float, kept: float, seed: int):
    rule, value = ("plan", plan) if plan else ("target_flops_reduction", str(target)) if target else (None, None)
    return {
        "method": method, "seed": seed, "model": model, "dataset": "cifar10", "prune_rule": rule,
        "prune_value": value, "test_acc": acc, "dense_test_acc": DENSE["acc"], "params": DENSE["params"] * kept,
        "dense_params": DENSE["params"], "macs": DENSE["macs"] * kept, "dense_macs": DENSE["macs"],
    }  # fmt: skip


def _table(runs: pd.DataFrame):
    tables = build_tables(runs, reference=load_published())
    assert len(tables) == 1
    return tables[0]


def _labels(table) -> list[str]:
    return [row["method"] for row in table.rows]


def test_tidy_reads_the_named_plan_of_a_run() -> None:
    runs = _runs("resnet56", [("l1", "l1-a", None, 0.929, 0.896), ("ffr", None, 0.5, 0.925, 0.5)])
    assert set(runs.loc[runs["method"] == "l1", "plan"]) == {"l1-a"}
    assert runs.loc[runs["method"] != "l1", "plan"].isna().all()
    assert set(runs.loc[runs["method"] == "ffr", "target"]) == {0.5}


def test_a_run_at_plan_l1_a_shows_li_et_al_and_liu_et_al_beside_it() -> None:
    plan = [("l1", "l1-a", None, 0.929, 0.896), ("scratch-E", "l1-a", None, 0.928, 0.896),
            ("scratch-B", "l1-a", None, 0.930, 0.896)]  # fmt: skip
    table = _table(_runs("resnet56", plan))
    assert _labels(table) == [
        "dense",
        "l1",
        "l1 (l1-a) [published, Li et al. 2017]",
        "scratch-E",
        "scratch-E (l1-a) [published, Liu et al. 2019]",
        "scratch-B",
        "scratch-B (l1-a) [published, Liu et al. 2019]",
    ]  # l1-b rows (another operating point) are left out
    li, liu_e = table.rows[2], table.rows[4]
    assert (li["test acc (%)"], li["params red. (%)"], li["FLOPs red. (%)"]) == ("93.10", "9.4", "10.4")
    assert li["n"] == "-" and li["acc change (pp)"] == "+0.06"
    assert liu_e["test acc (%)"] == "92.96 +- 0.26" and liu_e["base acc (%)"] == "93.14"
    assert any("within 2 pp" in note for note in table.footnotes)
    assert any("std the paper reports" in note for note in table.footnotes)


def test_a_run_at_a_50_percent_target_does_not_show_a_34_percent_row() -> None:
    table = _table(_runs("vgg16", [("l1", None, 0.5, 0.925, 0.5)]))
    assert _labels(table) == ["dense", "l1"]  # Li et al.'s VGG-16-A removes 34.2% of FLOPs
    assert not any("published" in note for note in table.footnotes)


def test_a_row_within_the_tolerance_of_a_target_shows_and_one_just_outside_does_not() -> None:
    near = _table(_runs("vgg16", [("l1", None, 0.35, 0.930, 0.65)]))  # 35% vs the published 34.2%
    assert _labels(near) == ["dense", "l1", "l1 (l1-a) [published, Li et al. 2017]"]
    far = _table(_runs("vgg16", [("l1", None, 0.37, 0.930, 0.63)]))  # 2.8 pp away
    assert "published" not in " ".join(_labels(far))
    assert FLOPS_TOLERANCE == 0.02


def test_the_row_sits_beside_the_matching_target_not_after_other_targets() -> None:
    rows = [("l1", None, 0.2, 0.931, 0.8), ("l1", None, 0.34, 0.930, 0.66), ("l1", None, 0.5, 0.925, 0.5)]
    labels = _labels(_table(_runs("vgg16", rows)))
    assert labels == ["dense", "l1 (20% target)", "l1 (34% target)", "l1 (l1-a) [published, Li et al. 2017]",
                      "l1 (50% target)"]  # fmt: skip


def test_a_row_whose_runs_do_not_all_share_one_plan_is_matched_by_no_plan() -> None:
    assert plan_of(pd.DataFrame({"plan": ["l1-a", "l1-a"]})) == "l1-a"
    for plans in (["l1-a", "l1-b"], ["l1-a", None], [None, None]):
        assert plan_of(pd.DataFrame({"plan": plans})) is None
    assert plan_of(pd.DataFrame({"method": ["l1"]})) is None


def test_another_methods_run_at_the_same_plan_does_not_pull_in_the_l1_row() -> None:
    labels = _labels(_table(_runs("resnet56", [("random", "l1-a", None, 0.925, 0.896)])))
    assert labels == ["dense", "random"]


def test_rows_this_harness_cannot_reproduce_are_labelled_and_footnoted() -> None:
    table = _table(_runs("resnet20", [("group_lasso", None, 0.5, 0.90, 0.5)]))
    labels = _labels(table)
    assert labels[:2] == ["dense", "group_lasso"]
    assert labels[2] == (
        "group_lasso (depth 20 -> 18) [published, Wen et al. 2016; not reproducible here: "
        "depth regularisation removes layers (20 -> 18); not comparable with channel pruning]"
    )
    assert any("cannot be rerun by this harness" in note for note in table.footnotes)
    imagenet = published_for("timm:resnet50", "imagenet")
    assert not imagenet["reproducible"].any() and imagenet["note"].str.contains("ImageNet").all()
    assert not matches(imagenet, "oicsr", None, 0.5).any()  # shown labelled, never matched


def test_the_published_csv_carries_the_l1_reductions_and_cites_every_row() -> None:
    ref = load_published()
    l1 = ref[ref["method"] == "l1"].set_index(["model", "plan"])
    reductions = {key: (row.params_reduction, row.flops_reduction) for key, row in l1.iterrows()}
    assert reductions == {
        ("vgg16", "l1-a"): (64.0, 34.2),
        ("resnet56", "l1-a"): (9.4, 10.4),
        ("resnet56", "l1-b"): (13.7, 27.6),
        ("resnet110", "l1-a"): (2.3, 15.9),
        ("resnet110", "l1-b"): (32.4, 38.6),
    }
    scratch = ref[ref["method"].isin(["scratch-E", "scratch-B"])]
    assert len(scratch) == 8 and scratch["pruned_acc_std"].notna().all()
    assert scratch["source"].str.contains("rewinding-iclr20-public vision/plot/gen.py").all()
    assert ref["source"].str.len().gt(20).all() and ref["paper"].notna().all()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["plan"]), "missing column(s) plan"),
        (lambda f: f.assign(reproducible="maybe"), "reproducible must be yes or no, got 'maybe'"),
        (lambda f: f.assign(note=None, reproducible="no"), "needs a note saying why"),
        (lambda f: f.assign(target="half"), "column target holds something that is not a number"),
        (lambda f: f.assign(plan=None, target=None, flops_reduction=None), "give a plan, a target or a flops_red"),
    ],
)
def test_a_malformed_published_csv_is_refused_with_what_is_wrong(tmp_path: Path, edit, message: str) -> None:
    path = tmp_path / "published.csv"
    edit(pd.read_csv(Path(__file__).parents[1] / "results" / "reference" / "published.csv")).to_csv(path, index=False)
    with pytest.raises(BenchError, match=re.escape(message)):
        load_published(path)
