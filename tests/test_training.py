"""The training loop on real CIFAR-10 images: it learns, it selects on val, and resume is exact."""

from __future__ import annotations

import pytest
import torch

from bench import datasets, models
from bench.config import Schedule
from bench.errors import BenchError
from bench.training import Runtime, fit, lr_factor, seed_everything

CPU = Runtime(torch.device("cpu"), progress=False, epoch_lines=False)


@pytest.fixture(scope="module")
def small_cifar(cifar_root, dataset_cache):
    return datasets.build(
        "cifar10", cifar_root, cache_dir=dataset_cache, val_size=500, train_limit=1024, test_limit=500
    )


def test_multistep_schedule_divides_at_milestones():
    s = Schedule(epochs=10, lr=0.1, schedule="multistep", milestones=(0.5, 0.8), gamma=0.1)
    assert [lr_factor(s, e) for e in (0, 4, 5, 7, 8, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_with_warmup():
    s = Schedule(epochs=11, schedule="cosine", warmup_epochs=1)
    assert lr_factor(s, 0) == pytest.approx(0.5)  # linear warm-up: (0+1)/(1+1)
    assert lr_factor(s, 1) == pytest.approx(1.0)
    assert lr_factor(s, 6) == pytest.approx(0.5)
    assert all(lr_factor(s, e) >= lr_factor(s, e + 1) for e in range(1, 10))


def test_constant_schedule():
    assert lr_factor(Schedule(epochs=5, schedule="constant"), 4) == 1.0


def test_training_learns_and_selects_on_validation(small_cifar):
    seed_everything(0)
    model = models.create("resnet20")
    result = fit(model, small_cifar, Schedule(epochs=4, batch_size=64, lr=0.05, schedule="cosine"), CPU, seed=0)
    history = result.history
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.best_val_acc > 0.2  # chance is 0.1 on 10 balanced classes
    best = max(range(4), key=lambda e: (history[e]["val_acc"], e))
    assert result.best_epoch == best
    assert result.test_acc == history[best]["test_acc"]  # test is reported at the val-selected epoch


def test_model_ends_with_the_best_validation_weights(small_cifar):
    seed_everything(1)
    model = models.create("resnet20")
    result = fit(model, small_cifar, Schedule(epochs=3, batch_size=64, lr=0.05), CPU, seed=1)
    from bench.training import eval_loader, evaluate

    _, val_acc = evaluate(model, eval_loader(small_cifar.val, small_cifar, CPU), CPU)
    assert val_acc == pytest.approx(result.best_val_acc)


def test_keep_last_ends_with_the_last_epochs_weights(small_cifar, tmp_path):
    """What a sparsity phase hands to pruning by default: the last epoch, not the best-val one."""
    seed_everything(2)
    model = models.create("resnet20")
    ckpt = tmp_path / "sparsity.ckpt"
    result = fit(
        model, small_cifar, Schedule(epochs=3, batch_size=64, lr=0.05), CPU, seed=2, checkpoint=ckpt, keep="last"
    )
    last = torch.load(ckpt, weights_only=False)["model"]  # the checkpoint of the last completed epoch
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())
    assert result.best_val_acc == max(h["val_acc"] for h in result.history)  # still reported


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(small_cifar, tmp_path):
    """A run stopped after epoch 1 and resumed from its checkpoint ends bit-identical."""
    schedule = Schedule(epochs=3, batch_size=128, lr=0.05, schedule="multistep", milestones=(0.5,))

    seed_everything(3)
    straight = models.create("resnet20")
    fit(straight, small_cifar, schedule, CPU, seed=3, checkpoint=tmp_path / "a.ckpt")

    seed_everything(3)
    interrupted = models.create("resnet20")
    ckpt = tmp_path / "b.ckpt"
    _run_epochs(interrupted, small_cifar, schedule, ckpt, stop_after=1)
    resumed = models.create("resnet20")  # a new process would start from a fresh model
    result = fit(resumed, small_cifar, schedule, CPU, seed=3, checkpoint=ckpt)
    assert len(result.history) == 3
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"


def _run_epochs(model, data, schedule, ckpt, stop_after: int) -> None:
    """Train, and 'kill' the process right after epoch ``stop_after`` has been checkpointed."""

    class Killed(Exception):
        pass

    def stop(epoch, _stats):
        if epoch == stop_after:
            raise Killed

    with pytest.raises(Killed):
        fit(model, data, schedule, CPU, seed=3, checkpoint=ckpt, on_epoch=stop)


def test_divergence_is_reported(small_cifar):
    from bench.training import DivergedError

    seed_everything(0)
    model = models.create("resnet20")
    with pytest.raises(DivergedError):
        fit(model, small_cifar, Schedule(epochs=1, batch_size=128, lr=1e6, momentum=0.0), CPU, seed=0)


# --- torch.compile --------------------------------------------------------------------------------


def _tiny_epoch(runtime: Runtime, method=None):
    """One epoch of the tiny conv net on synthetic 8x8 images: these tests are about the compile
    path (status, fallback, equal numerics), not about learning."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from method_models import tiny

    from bench.testing import synthetic_splits
    from bench.training import EpochTrainer, make_optimizer, train_loader

    torch.manual_seed(0)
    data = synthetic_splits(num_classes=3, size=8, n_train=64)  # shapes only: this is about the compile path
    model, _ = tiny()
    schedule = Schedule(epochs=1, batch_size=32, lr=0.01)
    trainer = EpochTrainer(model, train_loader(data, schedule, runtime, 0), make_optimizer(model, schedule), schedule,
                           runtime, method)  # fmt: skip
    return trainer, trainer.run(0)


@pytest.mark.slow
def test_compiled_training_matches_eager(one_thread):
    eager_trainer, eager = _tiny_epoch(CPU)
    compiled_trainer, compiled = _tiny_epoch(Runtime(torch.device("cpu"), progress=False, epoch_lines=False,
                                                     compile=True))  # fmt: skip
    assert compiled_trainer.compile_status == "on" and eager_trainer.compile_status == "off"
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


def test_a_compile_that_fails_trains_eagerly_and_says_why(one_thread, capsys):
    runtime = Runtime(torch.device("cpu"), progress=False, epoch_lines=False, compile=True,
                      compile_backend="no-such-backend")  # fmt: skip
    trainer, stats = _tiny_epoch(runtime)
    assert trainer.compile_status.startswith("failed: ") and "no-such-backend" in trainer.compile_status
    assert stats["train_loss"] == pytest.approx(_tiny_epoch(CPU)[1]["train_loss"])  # the eager result
    assert "training eagerly" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_gpu_path_keeps_data_and_augmentation_on_the_device(small_cifar):
    """uint8 data and augmentation on the GPU, bf16 autocast, channels_last, compiled forward."""
    from bench.training import EpochTrainer, make_optimizer, train_loader

    runtime = Runtime(torch.device("cuda"), amp=True, channels_last=True, progress=False, epoch_lines=False,
                      compile=True)  # fmt: skip
    schedule = Schedule(epochs=1, batch_size=128, lr=0.05)
    loader = train_loader(small_cifar, schedule, runtime, seed=0)
    assert loader.images.device.type == "cuda" and loader.images.dtype == torch.uint8
    x, y = next(iter(loader))
    assert y.device.type == "cuda"
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
    model = models.create("resnet20").to("cuda", memory_format=torch.channels_last)
    trainer = EpochTrainer(model, loader, make_optimizer(model, schedule), schedule, runtime)
    stats = trainer.run(0)
    assert trainer.compile_status == "on" and stats["train_loss"] > 0


# --- method hooks that shape the optimizer and the evaluation -------------------------------------


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


class _HookProbe:
    """A method that names parameters without weight decay and an EMA decay, and records the
    parameters after every optimizer step (``zero_grads``: the step then moves weights by weight
    decay alone)."""

    def __new__(cls, no_decay=(), ema=None, zero_grads=False):
        from bench.api import Method

        class Probe(Method):
            name = "probe"

            def no_weight_decay(self, model, ctx):
                return set(no_decay)

            def ema_decay(self, ctx):
                return ema

            def after_backward(self, model, ctx):
                if zero_grads:
                    for p in model.parameters():
                        p.grad.zero_()

            def after_step(self, model, ctx):
                self.seen.append([p.detach().clone() for p in model.parameters()])

            def importance(self, model, ctx):
                return {}

        probe = Probe()
        probe.seen = []
        return probe


def _ctx():
    from bench.api import Context

    return Context("small", [], torch.device("cpu"), 0, torch.Generator())


def test_no_weight_decay_hook_exempts_exactly_the_named_parameters(small_cifar, one_thread):
    """Gradients zeroed, so a step moves a weight by weight decay alone: the named one stays put."""
    model = _small_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    schedule = Schedule(epochs=1, batch_size=512, lr=0.1, momentum=0.0, weight_decay=0.1, schedule="constant")
    probe = _HookProbe(no_decay={"0.weight"}, zero_grads=True)
    fit(model, small_cifar, schedule, CPU, seed=0, method=probe, ctx=_ctx(), keep="last")
    steps = len(probe.seen)
    assert steps == 2  # 1024 images, batch 512
    after = dict(model.named_parameters())
    assert torch.equal(after["0.weight"].detach(), before["0.weight"])
    torch.testing.assert_close(after["3.weight"].detach(), before["3.weight"] * (1 - 0.01) ** steps)
    with pytest.raises(BenchError, match="no_weight_decay names parameters the model does not have: nope"):
        fit(_small_net(), small_cifar, schedule, CPU, seed=0, method=_HookProbe(no_decay={"nope"}), ctx=_ctx())


def _expected_ema(seen: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """Bias-corrected EMA of the recorded per-step parameters, written out."""
    t = len(seen)
    weights = [(1 - decay) * decay ** (t - 1 - k) for k in range(t)]
    total = [sum(w * step[i] for w, step in zip(weights, seen, strict=True)) for i in range(len(seen[0]))]
    return [a / (1 - decay**t) for a in total]


@pytest.mark.parametrize("keep", ["last", "best_val"])
def test_ema_hook_evaluates_selects_and_hands_on_the_averaged_parameters(small_cifar, one_thread, keep):
    from bench.training import eval_loader, evaluate

    model = _small_net()
    schedule = Schedule(epochs=2, batch_size=128, lr=0.05)
    probe = _HookProbe(ema=0.9)
    result = fit(model, small_cifar, schedule, CPU, seed=0, method=probe, ctx=_ctx(), keep=keep)
    steps_per_epoch = len(probe.seen) // 2
    epoch_end = steps_per_epoch * (result.best_epoch + 1) if keep == "best_val" else len(probe.seen)
    for p, expected in zip(model.parameters(), _expected_ema(probe.seen[:epoch_end], 0.9), strict=True):
        torch.testing.assert_close(p.detach(), expected)
    live = probe.seen[epoch_end - 1]  # the live weights of that step are not what the model holds
    assert not all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), live, strict=True))
    _, val_acc = evaluate(model, eval_loader(small_cifar.val, small_cifar, CPU), CPU)
    epoch = result.best_epoch if keep == "best_val" else 1
    assert val_acc == pytest.approx(result.history[epoch]["val_acc"])  # evaluated with the averaged weights


def test_ema_resumes_exactly_from_its_checkpoint(small_cifar, one_thread, tmp_path):
    schedule = Schedule(epochs=2, batch_size=256, lr=0.05)
    straight = _small_net()
    fit(straight, small_cifar, schedule, CPU, seed=3, method=_HookProbe(ema=0.9), ctx=_ctx(),
        checkpoint=tmp_path / "a.ckpt", keep="last")  # fmt: skip

    class Killed(Exception):
        pass

    def stop(epoch, _stats):
        if epoch == 0:
            raise Killed

    interrupted = _small_net()
    with pytest.raises(Killed):
        fit(interrupted, small_cifar, schedule, CPU, seed=3, method=_HookProbe(ema=0.9), ctx=_ctx(),
            checkpoint=tmp_path / "b.ckpt", on_epoch=stop, keep="last")  # fmt: skip
    resumed = _small_net()
    fit(resumed, small_cifar, schedule, CPU, seed=3, method=_HookProbe(ema=0.9), ctx=_ctx(),
        checkpoint=tmp_path / "b.ckpt", keep="last")  # fmt: skip
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"


def test_without_hooks_there_is_one_parameter_group_and_no_average():
    from bench.training import make_optimizer

    model = _small_net()
    optimizer = make_optimizer(model, Schedule(weight_decay=1e-4))
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    two = make_optimizer(model, Schedule(weight_decay=1e-4), {"0.weight", "3.weight"})
    assert [len(g["params"]) for g in two.param_groups] == [len(list(model.parameters())) - 2, 2]
    assert two.param_groups[1]["weight_decay"] == 0.0


# --- checkpoints: every generator, what a resume says, a checkpoint that cannot be used -----------


def _noisy_method():
    """A method whose every step draws from each generator a run may use: Python's, numpy's, torch's
    and the method's ``ctx.generator``; a resume that restored any of them wrongly ends elsewhere."""
    import random

    import numpy as np

    from bench.api import Method

    class Noisy(Method):
        name = "noisy"

        def after_step(self, model, ctx):
            draws = random.random() + np.random.rand() + torch.rand(()) + torch.rand((), generator=ctx.generator)
            with torch.no_grad():
                next(model.parameters()).add_(1e-3 * draws)

        def importance(self, model, ctx):
            return {}

    return Noisy()


def _noisy_fit(data, path, on_epoch=None):
    """Each call is a new process would be: every generator seeded afresh, a fresh model."""
    seed_everything(3)
    model = _small_net()
    fit(model, data, Schedule(epochs=2, batch_size=256, lr=0.05), CPU, seed=3, method=_noisy_method(), ctx=_ctx(),
        checkpoint=path, on_epoch=on_epoch, keep="last")  # fmt: skip
    return model


def test_resume_restores_every_generator_and_says_what_it_resumes(small_cifar, one_thread, tmp_path, capsys):
    from bench import checkpoint

    straight = _noisy_fit(small_cifar, tmp_path / "a.ckpt")

    class Killed(Exception):
        pass

    def stop(epoch, _stats):
        raise Killed

    with pytest.raises(Killed):
        _noisy_fit(small_cifar, tmp_path / "b.ckpt", on_epoch=stop)  # killed after epoch 1 of 2
    capsys.readouterr()
    resumed = _noisy_fit(small_cifar, tmp_path / "b.ckpt")
    assert f"train: resuming at epoch 2/2 from {tmp_path / 'b.ckpt'}" in capsys.readouterr().out
    assert checkpoint.last_resume_point() == "train epoch 2/2"  # saved by the resumed epoch
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"
    _noisy_fit(small_cifar, tmp_path / "b.ckpt")  # a finished phase's checkpoint: nothing left to train
    assert f"train: all 2 epochs already done, restored from {tmp_path / 'b.ckpt'}" in capsys.readouterr().out


def test_the_rng_state_holds_every_generator_and_loads_with_weights_only(tmp_path):
    import random

    import numpy as np

    from bench.checkpoint import atomic_save, load
    from bench.training import rng_state, set_rng_state

    ctx = _ctx()
    saved = rng_state(ctx)
    assert set(saved) == {"python", "numpy", "torch", "cuda", "method"}
    assert isinstance(saved["cuda"], list)  # one state per CUDA device; empty while CUDA is unused
    atomic_save({"rng": saved}, tmp_path / "rng.ckpt")
    first = (random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=ctx.generator))
    set_rng_state(load(tmp_path / "rng.ckpt")["rng"], ctx)
    second = (random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=ctx.generator))
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    before = torch.get_rng_state()  # a checkpoint from before: torch's CPU state alone
    torch.rand(3)
    set_rng_state(before)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kind", ["garbage", "another model"])
def test_a_checkpoint_that_cannot_be_used_is_said_and_the_phase_starts_over(small_cifar, one_thread, tmp_path, kind,
                                                                          capsys):  # fmt: skip
    schedule = Schedule(epochs=1, batch_size=256, lr=0.05)
    ckpt = tmp_path / "train.ckpt"
    if kind == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    else:  # another net's weights: loading them fails at the classifier, after the convs were copied
        other = {k: v * 2 if v.is_floating_point() else v for k, v in _small_net().state_dict().items()}
        other.update({"8.weight": torch.zeros(5, 8), "8.bias": torch.zeros(5)})
        torch.save({"epoch": 0, "model": other, "optimizer": {}, "result": {}, "best_state": None,
                    "method_state": {}, "ema": None, "rng": torch.get_rng_state()}, ckpt)  # fmt: skip
    seed_everything(0)
    fresh = _small_net()
    fit(fresh, small_cifar, schedule, CPU, seed=0)
    seed_everything(0)
    model = _small_net()
    result = fit(model, small_cifar, schedule, CPU, seed=0, checkpoint=ckpt, desc="dense s0")
    err = capsys.readouterr().err
    assert f"warning: dense seed 0: cannot resume from {ckpt} (" in err and "starting at epoch 1/1" in err
    assert len(result.history) == 1
    for (name, a), (_, b) in zip(fresh.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name}: the unusable checkpoint changed the run"


@pytest.mark.gpu
def test_the_cuda_generators_are_saved_and_restored():
    from bench.training import rng_state, set_rng_state

    torch.cuda.init()
    saved = rng_state()
    assert len(saved["cuda"]) == torch.cuda.device_count()
    first = torch.rand(8, device="cuda")
    set_rng_state(saved)
    assert torch.equal(torch.rand(8, device="cuda"), first)
