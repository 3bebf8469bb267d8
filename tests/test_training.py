"""The training loop on real CIFAR-10 images: it learns, it selects on val, and resume is exact."""

from __future__ import annotations

import pytest
import torch

from bench import datasets, models
from bench.config import Schedule
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
