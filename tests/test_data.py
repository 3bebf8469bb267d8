"""Data layer: real CIFAR-10 / Tiny ImageNet builds, image folders, errors, batched augmentation.

The augmentation tests run on synthetic tensors; the dataset tests read the real copies through
the ``cifar_root`` / ``data_dir`` fixtures and share one decoded cache (``dataset_cache``).
"""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import datasets
from bench.augment import BatchLoader, default_padding, normalize, random_crop_flip
from bench.datasets import DatasetSplits, Split, build
from bench.errors import BenchError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- augmentation (synthetic tensors) -----------------------------------------------------------


def _pattern(n: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """Images whose pixels are all distinct and non-zero (1..255), so a window identifies its offset."""
    base = (torch.arange(3 * h * w) % 255 + 1).view(1, 3, h, w)
    return base.repeat(n, 1, 1, 1).to(torch.uint8)


def _windows(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) that random_crop_flip may return for ``image``."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            out += [window, window.flip(-1)]
    return out


def test_crops_are_shifted_windows_and_vary() -> None:
    images = _pattern(64)
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    for crop, image in zip(out, images, strict=True):
        assert any(torch.equal(crop, w) for w in _windows(image, 2))
    assert len({bytes(c.numpy()) for c in out}) > 10  # offsets and flips really differ per image


def test_padding_zero_is_identity_or_flip() -> None:
    images = _pattern(200)
    out = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)])
    assert bool((same | flipped).all()) and not bool((same & flipped).any())
    assert 60 < int(same.sum()) < 140  # about half flipped


def test_augmentation_is_deterministic_by_seed() -> None:
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    a = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    b = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    c = random_crop_flip(images, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize_matches_formula() -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    x = normalize(images, mean, std)
    assert x.dtype == torch.float32 and torch.allclose(x.double(), expected, atol=1e-5)
    y = normalize(images, mean, std, dtype=torch.bfloat16, channels_last=True)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


def test_default_padding() -> None:
    assert default_padding(32) == 4 and default_padding(64) == 8


def _loader(n: int = 50, batch: int = 8, **kw) -> BatchLoader:
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.arange(n))
    args = {"shuffle": True, "augment": True, "mean": (0.5,) * 3, "std": (0.25,) * 3, "device": "cpu", "seed": 3}
    return BatchLoader(split, batch, **{**args, **kw})


def test_loader_covers_each_image_once_per_epoch() -> None:
    loader = _loader()
    assert len(loader) == 7
    for _ in range(2):
        batches = list(loader)
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == list(range(50))
        assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 8, 8) for x, _ in batches)
    dropped = _loader(drop_last=True)
    assert len(dropped) == 6 and sum(len(y) for _, y in dropped) == 48
    plain = list(_loader(shuffle=False, augment=False))
    assert torch.cat([y for _, y in plain]).tolist() == list(range(50))


def test_loader_epoch_is_pure_function_of_seed_and_epoch() -> None:
    def epoch(loader: BatchLoader, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader.set_epoch(e)
        batches = list(loader)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    torch.manual_seed(0)
    a = _loader()
    torch.manual_seed(0)
    b = _loader()  # same images (same global seed), fresh object: a "resumed" run
    x3, y3 = epoch(a, 3)
    epoch(b, 0)  # state from other epochs must not leak
    x3b, y3b = epoch(b, 3)
    assert torch.equal(x3, x3b) and torch.equal(y3, y3b)
    x4, y4 = epoch(a, 4)
    assert not torch.equal(y3, y4) and not torch.equal(x3, x4)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in a]))  # iter() advances


@pytest.mark.gpu
def test_loader_on_cuda_never_syncs_with_host() -> None:
    loader = _loader(device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the epoch raises
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batches[0][0].device.type == "cuda"
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(50))


# --- real CIFAR-10 (JPEG copy) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar(cifar_root: Path, dataset_cache: Path) -> DatasetSplits:
    return build("cifar10", cifar_root, cache_dir=dataset_cache)


@pytest.mark.data
def test_cifar10_shapes_labels_and_source(cifar: DatasetSplits, cifar_root: Path) -> None:
    assert cifar.num_classes == 10 and cifar.classes == CIFAR10_CLASSES
    assert cifar.input_size == 32 and cifar.mean == (0.4914, 0.4822, 0.4465)
    for split in (cifar.train, cifar.val, cifar.test):
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape[1:] == (3, 32, 32) and split.labels.dtype == torch.int64
    assert (len(cifar.train), len(cifar.val), len(cifar.test)) == (45000, 5000, 10000)
    assert torch.bincount(cifar.test.labels).tolist() == [1000] * 10
    assert "cifar10-jpeg image folder" in cifar.source and str(cifar_root) in cifar.source


@pytest.mark.data
def test_cifar10_val_is_disjoint_from_train(cifar: DatasetSplits, cifar_root: Path) -> None:
    train, val = set(cifar.train.indices.tolist()), set(cifar.val.indices.tolist())
    assert not train & val and train | val == set(range(50000))
    # position k of the full train split is file k in (class, file) order: check one val image,
    # decoded independently by PIL (same libjpeg-turbo output, bit for bit)
    k, pos = int(cifar.val.indices[123]), 123
    cls, num = divmod(k, 5000)
    path = cifar_root / "cifar10-jpeg" / "train" / CIFAR10_CLASSES[cls] / f"{num:04d}.jpg"
    assert int(cifar.val.labels[pos]) == cls
    with Image.open(path) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(cifar.val.images[pos], expected)


@pytest.mark.data
def test_cifar10_seeds_limits_and_cache(
    cifar: DatasetSplits, cifar_root: Path, dataset_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="bench.datasets"):
        small = build("cifar10", cifar_root, cache_dir=dataset_cache, train_limit=1000, test_limit=100)
    assert sum("from cache" in r.getMessage() for r in caplog.records) == 2  # train and test files
    assert not any(r.getMessage().startswith("decoded") for r in caplog.records)
    assert torch.equal(small.val.indices, cifar.val.indices)  # same seed, limits do not move val
    assert torch.equal(small.val.images, cifar.val.images)
    assert len(small.train) == 1000 and set(small.train.indices.tolist()) <= set(cifar.train.indices.tolist())
    assert torch.bincount(small.test.labels).tolist() == [10] * 10  # class-balanced test subset
    other = build("cifar10", cifar_root, cache_dir=dataset_cache, split_seed=1, val_size=1000)
    assert len(other.val) == 1000 and not set(other.val.indices.tolist()) <= set(cifar.val.indices.tolist())


# --- Tiny ImageNet subset -----------------------------------------------------------------------


@pytest.mark.data
def test_tinyimagenet_subset(data_dir: Path, dataset_cache: Path) -> None:
    folder = data_dir / "tiny-imagenet-200-subset"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    tiny = build("tinyimagenet", data_dir, cache_dir=dataset_cache)
    wnids = sorted((folder / "wnids.txt").read_text().split())
    assert tiny.num_classes == 200 and list(tiny.classes) == wnids and tiny.input_size == 64
    assert tiny.test.images.shape == (10000, 3, 64, 64) and len(tiny.val) == 2000
    assert len(tiny.train) + len(tiny.val) == 20000
    assert torch.bincount(tiny.test.labels, minlength=200).tolist() == [50] * 200
    lines = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    annotations = dict(line.split("\t")[:2] for line in lines)
    for k in (0, 1, 10, 4321, 9999):  # test position k is val_k.JPEG (natural order)
        assert tiny.classes[int(tiny.test.labels[k])] == annotations[f"val_{k}.JPEG"]
    assert tiny.test.images[10].shape[0] == 3  # val_10.JPEG is grayscale: replicated to RGB
    assert torch.equal(tiny.test.images[10][0], tiny.test.images[10][2])


# --- image folders and the official CIFAR pickles ------------------------------------------------


def _tree(cifar_root: Path, dest: Path, split_names: tuple[str, str] = ("train", "test")) -> Path:
    """A 2-class image folder of real CIFAR JPEGs: 10 train and 3 test images per class."""
    for split, count in zip(split_names, (10, 3), strict=True):
        for cls in ("cat", "dog"):
            (dest / split / cls).mkdir(parents=True)
            for i in range(count):
                src = cifar_root / "cifar10-jpeg" / "train" / cls / f"{i + 100 * (split != 'train'):04d}.jpg"
                shutil.copy(src, dest / split / cls / f"img_{i}.jpg")
    return dest


@pytest.mark.data
def test_imagefolder_relative_path(cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(cifar_root, tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    data = build("imagefolder:tree", "/nonexistent-root-is-ignored", cache_dir=tmp_path / "cache")
    assert data.classes == ("cat", "dog") and data.num_classes == 2 and data.input_size == 32
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 6)  # 10% of 20 is val
    assert data.test.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert str(tmp_path / "tree") in data.source and data.mean == (0.485, 0.456, 0.406)


@pytest.mark.data
def test_imagefolder_val_folder_and_val_size_error(cifar_root: Path, tmp_path: Path) -> None:
    tree = _tree(cifar_root, tmp_path / "tree", ("train", "val"))
    data = build(f"imagefolder:{tree}", None, cache_dir=tmp_path / "cache", val_size=5)
    assert len(data.val) == 5 and len(data.test) == 6 and "val/ as test" in data.source
    with pytest.raises(BenchError, match="val_size 20 must be smaller than the 20"):
        build(f"imagefolder:{tree}", None, cache_dir=tmp_path / "cache", val_size=20)


@pytest.mark.data
def test_official_cifar_pickles_are_preferred(cifar_root: Path, tmp_path: Path) -> None:
    """A fake cifar-10-batches-py beside the JPEG copy: read directly, pixels exact."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (20, 3072), dtype=np.uint8) for _ in range(6)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, data in zip(names, batches, strict=True):
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [i % 10 for i in range(20)]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    (tmp_path / "cifar10-jpeg").symlink_to(cifar_root / "cifar10-jpeg")
    data = build("cifar10", tmp_path, cache_dir=tmp_path / "cache", val_size=10)
    assert data.source.startswith("torchvision cifar-10-batches-py") and data.classes == CIFAR10_CLASSES
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert torch.equal(data.test.images, torch.from_numpy(batches[5].reshape(20, 3, 32, 32)))
    k = int(data.train.indices[0])
    assert torch.equal(data.train.images[0].flatten(), torch.from_numpy(batches[k // 20][k % 20]))


# --- errors -------------------------------------------------------------------------------------


def test_unknown_name_suggests_closest(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="Did you mean 'cifar10'"):
        build("cifar1", tmp_path, cache_dir=tmp_path)
    assert "imagefolder:<path>" in datasets.dataset_names() and set(datasets.DATASETS) >= {"cifar100"}


@pytest.mark.data
def test_missing_dataset_names_folders(cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"cifar-100-python/.*cifar100-jpeg/.*--data-dir") as info:
        build("cifar100", cifar_root, cache_dir=tmp_path)
    assert str(cifar_root) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BenchError, match=r"tiny-imagenet-200/wnids\.txt"):
        build("tinyimagenet", tmp_path, cache_dir=tmp_path)


def test_bad_root_limits_and_offline_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BenchError, match=r"not a directory; pass --data-dir or set \$BENCH_DATA_DIR"):
        build("cifar10", tmp_path / "nope", cache_dir=tmp_path)
    with pytest.raises(BenchError, match=r"needs a data root: pass --data-dir, set \$BENCH_DATA_DIR"):
        build("cifar10", None, cache_dir=tmp_path)
    with pytest.raises(BenchError, match="train_limit must be an integer >= 1"):
        build("cifar10", tmp_path, cache_dir=tmp_path, train_limit=0)
    with pytest.raises(BenchError, match="no train/ folder"):
        build(f"imagefolder:{tmp_path}", None, cache_dir=tmp_path)

    import torchvision.datasets

    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(BenchError, match=r"could not download 'cifar10'.*cannot reach the internet"):
        build("cifar10", tmp_path, cache_dir=tmp_path, download=True)
