"""Datasets as uint8 tensors: CIFAR-10/100, Tiny ImageNet and any image-folder tree.

``build(name, root, cache_dir=...)`` returns a :class:`DatasetSplits` whose train, val and test
splits hold every image decoded in memory (uint8 NCHW). The harness needs no DataLoader workers:
augmentation runs batched on these tensors (``bench.augment``), on the GPU when there is one.

Where the data comes from (recorded in ``DatasetSplits.source``):

* ``cifar10`` / ``cifar100``: torchvision's official pickles (``cifar-10-batches-py/``,
  ``cifar-100-python/``, fine labels) under ``root``; else an image-folder copy
  (``cifar10-jpeg/`` or ``cifar100-jpeg/`` holding ``train|test/<class>/*``); else, with
  ``download=True``, torchvision's download.
* ``tinyimagenet``: ``tiny-imagenet-200/`` or ``tiny-imagenet-200-subset/`` under ``root`` (or
  ``root`` itself). The official test split has no labels, so the labelled val split is our TEST
  split; class index = position in sorted ``wnids.txt``.
* ``imagefolder:<path>``: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*`` (or ``val/``).

Decoded image files are cached under ``cache_dir`` (one ``.pt`` per source split), so a second
build takes seconds. The validation split is always carved from the FULL training split with a
seeded permutation, so it does not depend on ``train_limit`` or ``test_limit``.

Why this module is long: four on-disk formats (official pickles, image folders, Tiny ImageNet's
layout, torchvision downloads) share one split protocol and one decoded-image cache.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import pickle
import re
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.checkpoint import atomic_save
from bench.errors import BenchError, first_line, unknown_name

log = logging.getLogger(__name__)

Stats = tuple[float, float, float]

DATASETS: dict[str, str] = {
    "cifar10": "CIFAR-10, 10 classes, 32x32: cifar-10-batches-py/ (torchvision) or cifar10-jpeg/ image folder",
    "cifar100": "CIFAR-100 (fine labels), 100 classes, 32x32: cifar-100-python/ or cifar100-jpeg/",
    "tinyimagenet": "Tiny ImageNet, 200 classes, 64x64: tiny-imagenet-200[-subset]/; labelled val used as test",
    "imagefolder:<path>": "any tree with train/<class>/* and test/<class>/* (or val/); 10% of train is val",
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_CACHE_VERSION = 1  # bump when the cached tensor layout changes
_TEST_SUBSET_SEED = 0  # test_limit picks the same test images for every split_seed and run seed
_POOL_MIN_FILES = 2000  # below this, starting worker processes costs more than it saves
_CHUNK = 1000  # files per decode task: small enough for a smooth progress bar
_DECODE_BARS: ContextVar[bool] = ContextVar("decode_bars", default=True)  # build(progress=...) sets it


@dataclass(frozen=True, eq=False)
class Split:
    """One split in memory: images uint8 (N, 3, H, W) contiguous, labels int64 (N,).

    ``indices`` (int64, optional) are the positions of these images in the source split they were
    taken from (train or test, in file/pickle order), so overlaps between splits can be checked.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 NCHW, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 of shape ({len(self.images)},), got {self.labels.shape}")
        if self.indices is not None and self.indices.shape != self.labels.shape:
            raise ValueError("indices must have one entry per image")
        if not self.images.is_contiguous():
            object.__setattr__(self, "images", self.images.contiguous())

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, positions: torch.Tensor) -> Split:
        """The images at ``positions``; ``indices`` keep pointing into the source split."""
        base = self.indices if self.indices is not None else torch.arange(len(self))
        return Split(self.images[positions], self.labels[positions], base[positions])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Train/val/test splits plus what a model and a run record need to know about them.

    ``mean``/``std`` are per channel (RGB) in [0, 1] units (pixel / 255), for normalisation.
    ``source`` says exactly which files were read; the run records it.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...]
    input_size: int  # px, height (= width for the built-in datasets)
    mean: Stats
    std: Stats
    source: str

    @property
    def label(self) -> str:
        """How reports name the data: a lossy re-encoded copy or a subset never passes for the original
        (the JPEG copy of CIFAR-10 is "CIFAR-10 (JPEG copy)", as the data README requires)."""
        base = _LABELS.get(self.name, self.name)
        if "-jpeg image folder" in self.source:
            return f"{base} (JPEG copy)"
        if "subset" in self.source:
            return f"{base} (subset)"
        return base


_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny ImageNet"}


@dataclass(frozen=True)
class _Source:
    """Full train and test splits as read from disk, before val carving and limits."""

    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str


# Published per-channel statistics, in [0, 1] units.
NORMALIZATION: dict[str, tuple[Stats, Stats]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}


def dataset_names() -> list[str]:
    """Names ``build`` accepts (``imagefolder:<path>`` stands for any path)."""
    return list(DATASETS)


def build(
    name: str,
    root: str | Path | None,
    *,
    cache_dir: Path,
    val_size: int | None = None,
    split_seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    download: bool = False,
    progress: bool = True,
) -> DatasetSplits:
    """Load dataset ``name`` from under ``root`` and split it into train/val/test.

    ``val_size`` images are held out of the full training split by a permutation seeded with
    ``split_seed`` (default: 5000 for CIFAR, 10 per class for Tiny ImageNet, 10% for image
    folders). ``train_limit`` / ``test_limit`` keep at most that many images (smoke runs); the
    test subset is class-balanced and the same for every ``split_seed``. ``progress`` False hides
    the decode bars of a first use (``--no-progress``).
    """
    _check_limit("train_limit", train_limit)
    _check_limit("test_limit", test_limit)
    _check_limit("val_size", val_size)
    if not isinstance(split_seed, int) or split_seed < 0:
        raise BenchError(f"split_seed must be an integer >= 0, got {split_seed!r}")
    kind, raw = _load_with_bars(name, root, Path(cache_dir), download, progress)
    n_train = len(raw.train)
    if val_size is None:
        val_size = _default_val_size(kind, n_train, len(raw.classes))
    if val_size >= n_train:
        raise BenchError(
            f"val_size {val_size} must be smaller than the {n_train} training images of '{name}'; "
            "pass a smaller val_size (data.val_size)"
        )
    train_idx, val_idx = split_indices(n_train, val_size, split_seed, train_limit)
    test_pos = balanced_subset(raw.test.labels, test_limit) if test_limit else torch.arange(len(raw.test))
    mean, std = NORMALIZATION[kind]
    return DatasetSplits(
        name=name,
        train=raw.train.select(train_idx),
        val=raw.train.select(val_idx),
        test=raw.test.select(test_pos),
        num_classes=len(raw.classes),
        classes=raw.classes,
        input_size=raw.train.images.shape[-2],
        mean=mean,
        std=std,
        source=raw.source,
    )


def _check_limit(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise BenchError(f"{what} must be an integer >= 1 or unset, got {value!r}")


def _default_val_size(kind: str, n_train: int, num_classes: int) -> int:
    if kind in ("cifar10", "cifar100"):
        return 5000
    if kind == "tinyimagenet":
        return 10 * num_classes
    return max(1, n_train // 10)


def split_indices(
    n_train: int, val_size: int, split_seed: int, train_limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) positions into the full training split, each sorted ascending.

    Val is the first ``val_size`` of a permutation seeded by ``split_seed``; train is the rest,
    cut to its first ``train_limit`` (a random subset), so val never depends on the limit.
    """
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    val, rest = perm[:val_size], perm[val_size:]
    if train_limit is not None:
        rest = rest[:train_limit]
    return rest.sort().values, val.sort().values


def balanced_subset(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Sorted positions of ``limit`` test images, class-balanced to within one image per class.

    A fixed-seed permutation is reordered round-robin over classes (the k-th image of every class
    before any class's (k+1)-th), and its prefix is taken.
    """
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_TEST_SUBSET_SEED))
    lab = labels[perm]
    order = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(lab)) - starts[lab[order]]  # k: the k-th of its class in perm
    return perm[torch.argsort(rank, stable=True)[:limit]].sort().values


# --- resolving a name to files ------------------------------------------------------------------


def _load_with_bars(
    name: str, root: str | Path | None, cache_dir: Path, download: bool, progress: bool
) -> tuple[str, _Source]:
    """``_load_source`` with its decode bars shown or hidden, however deep the decode happens."""
    token = _DECODE_BARS.set(progress)
    try:
        return _load_source(name, root, cache_dir, download)
    finally:
        _DECODE_BARS.reset(token)


def _load_source(name: str, root: str | Path | None, cache_dir: Path, download: bool) -> tuple[str, _Source]:
    """(kind, full splits) for a dataset name; kind keys the statistics and the val default."""
    if name.startswith("imagefolder:"):
        path = Path(name.removeprefix("imagefolder:")).expanduser()
        if not str(path):
            raise BenchError("imagefolder needs a path: use 'imagefolder:<path to a folder with train/ and test/>'")
        return "imagefolder", _load_imagefolder(path.resolve(), cache_dir)
    if name not in ("cifar10", "cifar100", "tinyimagenet"):
        raise unknown_name("dataset", name, dataset_names())
    root_path = _check_root(name, root)
    if name == "tinyimagenet":
        if download:
            log.warning("tinyimagenet has no automatic download; looking for local files only")
        return name, _load_tinyimagenet(root_path, cache_dir)
    return name, _load_cifar(name, root_path, cache_dir, download)


def _check_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise BenchError(f"dataset '{name}' needs a data root: pass --data-dir, set $BENCH_DATA_DIR or data.root")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise BenchError(
            f"data root '{root}' is not a directory; pass --data-dir or set $BENCH_DATA_DIR to the folder "
            f"holding '{name}'"
        )
    return path


def _missing(name: str, root: Path, looked_for: Sequence[str]) -> BenchError:
    return BenchError(
        f"dataset '{name}' not found under {root}: looked for {', '.join(looked_for)}. Downloads are impossible "
        "offline, so pass --data-dir pointing at a folder that holds one of them"
    )


# --- CIFAR --------------------------------------------------------------------------------------

_CIFAR = {
    # name: (official folder, train files, test file, label key, meta file, class-name key, jpeg folder)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
        "batches.meta",
        b"label_names",
        "cifar10-jpeg",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", b"fine_labels", "meta", b"fine_label_names", "cifar100-jpeg"),
}


def _load_cifar(name: str, root: Path, cache_dir: Path, download: bool) -> _Source:
    official, *_, jpeg = _CIFAR[name]
    num_classes = 10 if name == "cifar10" else 100
    if (root / official).is_dir():
        return _read_cifar_pickles(name, root / official)
    if (root / jpeg / "train").is_dir():
        raw = _read_image_folder(name, root / jpeg, cache_dir, f"{jpeg} image folder at {root / jpeg}")
        if len(raw.classes) != num_classes:
            raise BenchError(f"{root / jpeg}/train has {len(raw.classes)} class folders, '{name}' needs {num_classes}")
        return raw
    if download:
        _download_cifar(name, root)
        return _read_cifar_pickles(name, root / official)
    raise _missing(name, root, [f"{official}/ (torchvision files)", f"{jpeg}/train|test/<class>/ (image folder)"])


def _read_cifar_pickles(name: str, folder: Path) -> _Source:
    """Read torchvision's official CIFAR pickles directly (no decode, so no cache needed)."""
    _, train_files, test_file, label_key, meta_file, names_key, _ = _CIFAR[name]
    meta = _unpickle(folder / meta_file)
    classes = tuple(c.decode() for c in meta[names_key])
    train = _cat_batches([_unpickle(folder / f) for f in train_files], label_key)
    test = _cat_batches([_unpickle(folder / test_file)], label_key)
    return _Source(train, test, classes, f"torchvision {folder.name} at {folder}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise BenchError(f"{path} is missing: the CIFAR folder {path.parent} is incomplete; download it again")
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def _cat_batches(batches: list[dict], label_key: bytes) -> Split:
    data = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return Split(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels))


def _download_cifar(name: str, root: Path) -> None:
    try:
        from torchvision import datasets as tv_datasets

        cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # urllib, SSL, checksum ...: all mean "no usable download here"
        detail = first_line(exc)
        raise BenchError(
            f"could not download '{name}' into {root} ({detail}); this machine probably cannot reach the "
            "internet: copy the dataset under --data-dir instead"
        ) from exc


# --- Tiny ImageNet ------------------------------------------------------------------------------

_TINY_FOLDERS = ("tiny-imagenet-200", "tiny-imagenet-200-subset")


def _find_tinyimagenet(root: Path) -> Path:
    for folder in (*(root / f for f in _TINY_FOLDERS), root):
        if (folder / "wnids.txt").is_file():
            return folder
    raise _missing("tinyimagenet", root, [f"{f}/wnids.txt" for f in _TINY_FOLDERS] + ["wnids.txt in the root"])


def _load_tinyimagenet(root: Path, cache_dir: Path) -> _Source:
    folder = _find_tinyimagenet(root)
    wnids = tuple(sorted(line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()))
    index = {w: i for i, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        files = _image_files(folder / "train" / wnid / "images")
        if not files:
            raise BenchError(f"{folder}/train/{wnid}/images has no images: the Tiny ImageNet copy is incomplete")
        train_files += files
        train_labels += [index[wnid]] * len(files)
    test_files, test_labels = _tiny_val_annotations(folder, index)
    decode = _decoder("tinyimagenet", folder, cache_dir)
    return _Source(
        decode("train", train_files, train_labels, None),
        decode("test", test_files, test_labels, None),
        wnids,
        f"{folder.name} folder at {folder} (train/<wnid>/images; val/ with val_annotations.txt as the test split)",
    )


def _tiny_val_annotations(folder: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """The labelled val split: ``val/val_annotations.txt`` lines are file<TAB>wnid<TAB>box."""
    path = folder / "val" / "val_annotations.txt"
    if not path.is_file():
        raise BenchError(f"{path} is missing: Tiny ImageNet's labelled val split is needed as the test split")
    files, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise BenchError(f"{path}:{lineno}: expected 'file<TAB>wnid<TAB>box' with a wnid from wnids.txt")
        files.append(folder / "val" / "images" / parts[0])
        labels.append(index[parts[1]])
    order = sorted(range(len(files)), key=lambda i: _natural_key(files[i].name))
    return [files[i] for i in order], [labels[i] for i in order]


# --- image folders ------------------------------------------------------------------------------


def _load_imagefolder(path: Path, cache_dir: Path) -> _Source:
    if not (path / "train").is_dir():
        raise BenchError(
            f"imagefolder '{path}' has no train/ folder: expected train/<class>/* and test/<class>/* (or val/)"
        )
    return _read_image_folder("imagefolder", path, cache_dir, None)


def _read_image_folder(name: str, path: Path, cache_dir: Path, source: str | None) -> _Source:
    """train/<class>/* and test/<class>/* (or val/); classes are train's sorted subfolder names."""
    classes = tuple(sorted(d.name for d in os.scandir(path / "train") if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise BenchError(f"{path / 'train'} has no class folders: expected train/<class>/*")
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if test_dir is None:
        raise BenchError(f"{path} has train/ but neither test/ nor val/: both are needed (test/<class>/*)")
    train_files, train_labels = _class_files(path / "train", classes)
    test_files, test_labels = _class_files(test_dir, classes)
    decode = _decoder(name, path, cache_dir)
    train = decode("train", train_files, train_labels, None)
    test = decode("test", test_files, test_labels, tuple(train.images.shape[-2:]))
    source = source or f"image folder at {path} (train/, {test_dir.name}/ as test)"
    return _Source(train, test, classes, source)


def _class_files(split_dir: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    extra = sorted(
        d.name for d in os.scandir(split_dir) if d.is_dir() and not d.name.startswith(".") and d.name not in classes
    )
    if extra:
        raise BenchError(f"{split_dir} has class folders that train/ lacks: {', '.join(extra[:5])}")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = _image_files(split_dir / cls) if (split_dir / cls).is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise BenchError(f"{split_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, labels


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder``, in natural order (img_2 before img_10: keeps official orders)."""
    if not folder.is_dir():
        return []
    names = [e.name for e in os.scandir(folder) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
    return [folder / n for n in sorted(names, key=_natural_key)]


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


# --- decoding with a cache ----------------------------------------------------------------------

Decoder = Callable[..., Split]  # (split, files, labels, size) -> Split


def _decoder(name: str, base: Path, cache_dir: Path) -> Decoder:
    """A function decoding one split's files through the cache, keyed by dataset, folder and files."""

    def decode(split: str, files: list[Path], labels: list[int], size: tuple[int, int] | None) -> Split:
        path = cache_dir / _cache_name(name, base, split, files, labels, size)
        cached = _load_cached(path, len(files))
        if cached is not None:
            log.info("loaded %d %s %s images from cache %s", len(files), name, split, path)
            return cached
        start = time.perf_counter()
        images = decode_images(files, size, desc=f"decode {name} {split}")
        log.info("decoded %d %s %s images in %.1f s", len(files), name, split, time.perf_counter() - start)
        result = Split(images, torch.tensor(labels, dtype=torch.int64))
        _save_atomic({"images": result.images, "labels": result.labels}, path)
        return result

    return decode


def _cache_name(
    name: str, base: Path, split: str, files: list[Path], labels: list[int], size: tuple[int, int] | None
) -> str:
    """``<name>-<split>-<count>-<digest>.pt``; the digest covers folder, file list, labels and size."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{name}\n{base}\n{split}\n{len(files)}\n{size}\n".encode())
    for file, label in zip(files, labels, strict=True):
        digest.update(f"{file.relative_to(base)}\t{label}\n".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return f"{safe}-{split}-{len(files)}-{digest.hexdigest()[:16]}.pt"


def _load_cached(path: Path, count: int) -> Split | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        split = Split(blob["images"], blob["labels"])
    except Exception as exc:  # a truncated or foreign file: decode again and overwrite it
        log.warning("ignoring unreadable dataset cache %s (%s)", path, exc)
        return None
    return split if len(split) == count else None


def _save_atomic(blob: dict[str, torch.Tensor], path: Path) -> None:
    """Write then rename, so a killed run never leaves a half-written cache file behind."""
    atomic_save(blob, path)


def decode_images(
    files: Sequence[Path], size: tuple[int, int] | None = None, *, desc: str = "decode", progress: bool | None = None
) -> torch.Tensor:
    """Decode image files to one uint8 (N, 3, H, W) tensor, grayscale and RGBA converted to RGB.

    Images whose (H, W) differ from ``size`` (default: the first image's) are resized to it.
    Large lists are decoded by 2 forked processes with torchvision's libjpeg-turbo decoder: on
    CIFAR-10's 60k JPEGs that took ~1.5 s against ~2.5 s serial and ~2.2 s with 2 threads (2 cores).
    ``progress``: show a bar (default: what the enclosing ``build(progress=...)`` asked, else yes).
    """
    if not files:
        raise BenchError("no image files to decode")
    size = size or tuple(_decode_one(files[0], None).shape[-2:])
    chunks = [[str(f) for f in files[i : i + _CHUNK]] for i in range(0, len(files), _CHUNK)]
    out = torch.empty((len(files), 3, *size), dtype=torch.uint8)
    pos = 0
    show = _DECODE_BARS.get() if progress is None else progress
    bar = tqdm(total=len(files), desc=desc, unit="img", leave=False, disable=not show)
    with _pool(len(files)) as pool, bar:
        for arr in pool.imap(_decode_chunk, [(c, size) for c in chunks]):
            out[pos : pos + len(arr)] = torch.from_numpy(arr)
            pos += len(arr)
            bar.update(len(arr))
    return out


def _pool(count: int):
    """2 forked workers for big lists (no torch re-import, unlike spawn); a thread otherwise."""
    workers = min(2, os.cpu_count() or 1)
    if count >= _POOL_MIN_FILES and workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
    return ThreadPool(1)


def _worker_init() -> None:
    # one intra-op thread: the parent's OpenMP pool does not survive fork, and 2 workers fill 2 cores
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent stops the pool, a worker prints no traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(task: tuple[list[str], tuple[int, int]]) -> np.ndarray:
    files, size = task
    return np.stack([_decode_one(Path(f), size).numpy() for f in files])


def _decode_one(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """One image file as uint8 (3, H, W), resized to ``size`` (H, W) when it differs."""
    try:
        image = _decode_torchvision(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BenchError(f"cannot decode image {path}: {exc}") from exc
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        from torchvision.transforms.v2.functional import resize

        image = resize(image, list(size), antialias=True)
    return image


def _decode_torchvision(path: Path) -> torch.Tensor:
    """libjpeg-turbo/libpng through torchvision.io (PIL when a future torchvision drops it)."""
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec, which we do not depend on
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        try:
            from torchvision.io import ImageReadMode, decode_image
        except ImportError:
            return _decode_pil(path)
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)


def _decode_pil(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
