"""The protocol digest: every setting that shapes a result except the seed, so that reports never
pool unlike runs and a (digest, method, seed) counts once."""

from __future__ import annotations

from bench import protocol
from bench.config import from_dict


def _digest(cfg_dict: dict, method: str = "l1") -> str:
    cfg = from_dict(cfg_dict)
    return protocol.digest(protocol.method_protocol(cfg, method, {"lam": 1e-4}, "cpu", sparsity_training=False))


def test_the_seed_and_where_things_are_stored_leave_the_digest_alone() -> None:
    base = _digest({})
    assert _digest({"seeds": [3, 4]}) == base
    assert _digest({"results_dir": "elsewhere", "experiment": "x", "tracking_uri": "sqlite:///x.db"}) == base
    assert _digest({"data": {"root": "/other/copy"}}) == base
    assert _digest({"methods": ["l1", "slim"]}) == base  # the other methods of an invocation


def test_settings_that_shape_the_result_change_the_digest() -> None:
    base = _digest({})
    for changed in (
        {"dense": {"epochs": 4}},
        {"finetune": {"lr": 0.5}},
        {"prune": {"channel_fraction": 0.3}},
        {"prune": {"sparsity_checkpoint": "best_val"}},
        {"budget": 10},
        {"data": {"train_limit": 100}},
        {"deterministic": True},
    ):
        assert _digest(changed) != base, changed
    assert _digest({}, method="random") != base


def test_the_dense_protocol_ignores_method_settings() -> None:
    def dense(cfg_dict: dict) -> str:
        return protocol.digest(protocol.dense_protocol(from_dict(cfg_dict), "cpu"))

    assert dense({"finetune": {"epochs": 9}, "budget": 3, "prune": {"layer_ratio": 0.2}}) == dense({})
    assert dense({"dense": {"epochs": 9}}) != dense({})
    assert dense({}) != protocol.digest(protocol.dense_protocol(from_dict({}), "cuda"))
