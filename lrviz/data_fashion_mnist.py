"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; Zalando Research, MIT licence) and its bundled sample.

``fashion-mnist`` reads the four standard idx files (``.gz`` or not) from the first folder that has
them: ``root`` (``--data-root``), ``$LRVIZ_DATA_DIR``, :data:`SYSTEM_DATA_DIRS` (the Debian package
``dataset-fashion-mnist``), then lrviz's download folder; only when none has them is a download with
torchvision tried. Every header is checked (magic number, shape, length) and the decoded arrays are
kept in memory, keyed by file, size and modification time.

``fashion-mnist-sample`` is the 2,000-image test-set sample bundled with lrviz (200 per class), so
the dashboard and the tests work with nothing installed. It was drawn as the first 200 images of each
class in ``numpy.random.default_rng(0).permutation(10000)`` of the test set, kept in test-set order;
the ``.npz`` holds the uint8 images, the labels and those test-set indices.

``fashion-mnist-train-sample`` is its training counterpart: 3,000 images of the 60,000-image *train*
split (300 per class), drawn by the same recipe (:func:`sample_indices`: the first 300 of each class
in ``numpy.random.default_rng(0).permutation(60000)``, in train-set order), so that the dashboard
fine-tunes offline on training images and never on the test images it reports. Both files are
written by :func:`write_sample` (``python benchmarks/bundle_demo.py --samples-only``) from the idx
files of the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data_transforms import TensorImageDataset, check_norm, check_resize
from .errors import LrvizError, short_cause

logger = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SAMPLES",
    "SAMPLE_PATH",
    "SYSTEM_DATA_DIRS",
    "TRAIN_SAMPLE_PATH",
    "cache_dir",
    "fashion_mnist",
    "fashion_mnist_sample",
    "fashion_mnist_train_sample",
    "sample_indices",
    "write_sample",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: The bundled 2,000-image test-set sample.
SAMPLE_PATH = Path(__file__).parent / "assets" / "fashion-mnist-sample.npz"
#: The bundled 3,000-image train-set sample.
TRAIN_SAMPLE_PATH = Path(__file__).parent / "assets" / "fashion-mnist-train-sample.npz"
#: The bundled samples: split -> (file, images per class, seed of the permutation they are drawn from).
SAMPLES: dict[str, tuple[Path, int, int]] = {"test": (SAMPLE_PATH, 200, 0), "train": (TRAIN_SAMPLE_PATH, 300, 0)}

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FMNIST_SIZES = {"train": 60000, "test": 10000}

#: System-wide folders searched for the Fashion-MNIST idx files (after ``root`` and
#: ``$LRVIZ_DATA_DIR``). Tests may monkeypatch this.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

_FMNIST_CACHE: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
_FMNIST_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Return the folder where lrviz downloads datasets (``~/.cache/lrviz/data``).

    Returns
    -------
    pathlib.Path
        The download folder (it may not exist yet).
    """
    return Path("~/.cache/lrviz/data").expanduser()


def _download_fashion_mnist(target: Path) -> None:
    """Download Fashion-MNIST into ``target/FashionMNIST/raw`` with torchvision.

    Kept as a module-level function so tests can replace it (no network in tests).
    """
    from torchvision.datasets import FashionMNIST

    FashionMNIST(root=str(target), train=True, download=True)
    FashionMNIST(root=str(target), train=False, download=True)


def _fashion_mnist_candidates(root: str | os.PathLike | None) -> list[Path]:
    """The folders searched for the idx files, in order."""
    bases: list[Path] = []
    if root is not None:
        bases.append(Path(root).expanduser())
    env = os.environ.get("LRVIZ_DATA_DIR")
    if env:
        bases.append(Path(env).expanduser())
    out: list[Path] = []
    for base in bases:
        out += [base, base / "FashionMNIST" / "raw"]
    out += [Path(p) for p in SYSTEM_DATA_DIRS]
    out.append(cache_dir() / "FashionMNIST" / "raw")
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _find_fashion_mnist(root: str | os.PathLike | None, split: str) -> tuple[Path, Path] | None:
    img_stem, lbl_stem = _FMNIST_FILES[split]
    for folder in _fashion_mnist_candidates(root):
        img = _find_idx_file(folder, img_stem)
        lbl = _find_idx_file(folder, lbl_stem)
        if img is not None and lbl is not None:
            return img, lbl
    return None


def _read_idx(path: Path, expected_magic: int, expected_ndim: int) -> np.ndarray:
    """Read an idx (ubyte) file, optionally gzip-compressed, validating its header."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise LrvizError(
            f"Cannot read {path}: {exc}. The file is corrupt or not gzip data; delete it and "
            "reinstall the data (apt-get install dataset-fashion-mnist) or point --data-root to "
            "a folder with intact files."
        ) from exc
    header = 4 + 4 * expected_ndim
    if len(raw) < header:
        raise LrvizError(
            f"{path} is too short ({len(raw)} bytes) to be an idx file. The file is corrupt; "
            "delete it and get the data again (apt-get install dataset-fashion-mnist)."
        )
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise LrvizError(
            f"{path} has idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x}. "
            "The file is corrupt or not a Fashion-MNIST idx file; delete it and get the data "
            "again (apt-get install dataset-fashion-mnist)."
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim)]
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise LrvizError(
            f"{path} declares shape {tuple(dims)} ({count} bytes of data) but holds "
            f"{len(raw) - header} bytes. The file is truncated or corrupt; delete it and get the "
            "data again (apt-get install dataset-fashion-mnist)."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_fashion_mnist_arrays(
    img_path: Path, lbl_path: Path, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    stats = (img_path.stat(), lbl_path.stat())
    key = (
        str(img_path.resolve()),
        split,
        tuple((st.st_size, st.st_mtime_ns) for st in stats),
    )
    with _FMNIST_LOCK:
        cached = _FMNIST_CACHE.get(key)
        if cached is not None:
            return cached
        images = _read_idx(img_path, 0x00000803, 3)
        labels = _read_idx(lbl_path, 0x00000801, 1)
        if images.shape[1:] != (28, 28):
            raise LrvizError(
                f"{img_path} holds images of size {images.shape[1:]}, expected 28x28 for "
                "Fashion-MNIST. Point --data-root to the Fashion-MNIST files."
            )
        if images.shape[0] != labels.shape[0]:
            raise LrvizError(
                f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
                f"{labels.shape[0]} labels. The files do not belong together; get the data again."
            )
        if labels.size and int(labels.max()) > 9:
            raise LrvizError(
                f"{lbl_path} holds label {int(labels.max())}; Fashion-MNIST labels are 0..9. "
                "The file is corrupt; get the data again."
            )
        if images.shape[0] != _FMNIST_SIZES[split]:
            logger.warning(
                "%s holds %d images; the standard Fashion-MNIST %s split has %d",
                img_path,
                images.shape[0],
                split,
                _FMNIST_SIZES[split],
            )
        result = (
            torch.from_numpy(images.copy()).unsqueeze(1),  # N x 1 x 28 x 28 uint8
            torch.from_numpy(labels.astype(np.int64)),
        )
        _FMNIST_CACHE[key] = result
        logger.info("Decoded Fashion-MNIST %s split from %s", split, img_path.parent)
        return result



def fashion_mnist(
    arg: str | None,
    split: str,
    *,
    root: str | os.PathLike | None,
    resize: int | tuple[int, int] | None,
    grayscale: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    augment: bool,
) -> Dataset:
    """The ``fashion-mnist`` dataset kind: the full split from the idx files (see the module docstring)."""
    if arg:
        raise LrvizError(
            f"Dataset 'fashion-mnist' takes no argument, got 'fashion-mnist:{arg}'. "
            "Use --data-root DIR to choose the folder with the idx files."
        )
    if root is not None and not Path(root).expanduser().is_dir():
        raise LrvizError(
            f"--data-root {str(root)!r} does not exist or is not a folder. Give the folder that holds "
            f"the Fashion-MNIST idx files ({_FMNIST_FILES[split][0]}.gz, ...), or drop --data-root."
        )
    found = _find_fashion_mnist(root, split) or _download_and_find(root, split)
    images, labels = _load_fashion_mnist_arrays(found[0], found[1], split)
    return _as_dataset(images, labels, "fashion-mnist", resize, grayscale, mean, std, augment)


def _download_and_find(root: str | os.PathLike | None, split: str) -> tuple[Path, Path]:
    """Download into :func:`cache_dir` and find the files there; an error that lists the folders
    searched and how to install the data when that fails (offline)."""
    target = cache_dir()
    searched = _fashion_mnist_candidates(root)
    try:
        logger.info("Fashion-MNIST not found locally; downloading to %s", target)
        _download_fashion_mnist(target)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        logger.debug("Fashion-MNIST download failed: %r", exc)
        folders = ", ".join(str(p) for p in searched)
        raise LrvizError(
            "Fashion-MNIST data not found and the download failed (offline?): "
            f"{short_cause(exc)}. "
            f"Searched these folders for {_FMNIST_FILES[split][0]}.gz: {folders}. "
            "Fix: install the data with 'apt-get install dataset-fashion-mnist', or put the "
            "four idx .gz files in a folder and pass it with --data-root DIR "
            "(or set LRVIZ_DATA_DIR)."
        ) from exc
    found = _find_fashion_mnist(root, split)
    if found is None:
        raise LrvizError(
            f"Fashion-MNIST download to {target} finished but the idx files were not found "
            "there. Install the data with 'apt-get install dataset-fashion-mnist' or pass "
            "--data-root DIR."
        )
    return found


def sample_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """The bundled samples' recipe: the first ``per_class`` items of each of the 10 classes in
    ``numpy.random.default_rng(seed).permutation(len(labels))``, sorted (dataset order)."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.sort(np.concatenate([order[labels[order] == c][:per_class] for c in range(10)]))


def write_sample(split: str, root: str | os.PathLike | None = None, path: str | os.PathLike | None = None) -> Path:
    """Draw the bundled sample of ``split`` (see :data:`SAMPLES`) from the full Fashion-MNIST idx files
    and write it as a compressed ``.npz`` (``images`` uint8 N×1×28×28, ``labels``, ``indices`` into the
    split); returns the path written (default: the bundled file)."""
    if split not in SAMPLES:
        raise LrvizError(f"no bundled sample of split {split!r}; use one of {sorted(SAMPLES)}")
    target, per_class, seed = SAMPLES[split]
    found = _find_fashion_mnist(root, split)
    if found is None:
        raise LrvizError(f"Fashion-MNIST {split} idx files not found; install the Debian package dataset-fashion-mnist "
                         "or pass the folder that holds them")
    images, labels = _load_fashion_mnist_arrays(found[0], found[1], split)
    idx = sample_indices(labels.numpy(), per_class, seed)
    out = Path(path) if path is not None else target
    np.savez_compressed(out, images=images.numpy()[idx], labels=labels.numpy()[idx], indices=idx.astype(np.int64))
    return out


def _bundled(kind: str, split: str, resize, grayscale, mean, std, augment) -> Dataset:
    path = SAMPLES[split][0]
    if not path.exists():
        raise LrvizError(f"the bundled sample {path} is missing (reinstall lrviz)")
    with np.load(path) as z:
        images, labels, indices = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), z["indices"]
    ds = _as_dataset(images, labels, kind, resize, grayscale, mean, std, augment)
    ds.split = split
    ds.source_indices = indices.tolist()  # positions in the full Fashion-MNIST split
    return ds


def fashion_mnist_sample(arg, split, *, root, resize, grayscale, mean, std, augment) -> Dataset:
    """The ``fashion-mnist-sample`` dataset kind: 2,000 Fashion-MNIST test images (200 per class)
    bundled with lrviz (MIT licence, Zalando)."""
    if arg:
        raise LrvizError(f"Dataset 'fashion-mnist-sample' takes no argument, got 'fashion-mnist-sample:{arg}'")
    if split != "test":
        raise LrvizError("fashion-mnist-sample is a test-set sample only; train on 'fashion-mnist' or on the bundled "
                         "train-set sample 'fashion-mnist-train-sample'")
    return _bundled("fashion-mnist-sample", "test", resize, grayscale, mean, std, augment)


def fashion_mnist_train_sample(arg, split, *, root, resize, grayscale, mean, std, augment) -> Dataset:
    """The ``fashion-mnist-train-sample`` dataset kind: 3,000 Fashion-MNIST *train* images (300 per
    class) bundled with lrviz, for fine-tuning offline without touching the test images."""
    if arg:
        raise LrvizError(f"Dataset 'fashion-mnist-train-sample' takes no argument, got 'fashion-mnist-train-sample:{arg}'")
    if split != "train":
        raise LrvizError("fashion-mnist-train-sample is a train-set sample only; evaluate on 'fashion-mnist-sample' "
                         "(bundled test images) or 'fashion-mnist'")
    return _bundled("fashion-mnist-train-sample", "train", resize, grayscale, mean, std, augment)


def _as_dataset(images, labels, name, resize, grayscale, mean, std, augment) -> Dataset:
    """In-memory Fashion-MNIST-style dataset with the standard classes and normalisation."""
    return TensorImageDataset(
        images,
        labels,
        classes=FASHION_MNIST_CLASSES,
        name=name,
        resize=check_resize(resize),
        grayscale=grayscale,
        mean=check_norm(mean, FASHION_MNIST_MEAN, 1, "mean"),
        std=check_norm(std, FASHION_MNIST_STD, 1, "std"),
        augment=augment,
    )
