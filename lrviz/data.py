"""Datasets for evaluating (compressed) image classifiers.

Every dataset is built by name through :func:`get_dataset`. Names have the form ``kind[:arg]``:

``fashion-mnist``
    Fashion-MNIST read directly from the standard idx ``.gz`` files (no download needed when the
    files are on disk, e.g. from the Debian package ``dataset-fashion-mnist``).
``imagefolder:DIR``
    A :class:`torchvision.datasets.ImageFolder` over ``DIR`` (one sub-folder per class).
``synthetic`` or ``synthetic:C,H,W,K,N``
    A small, deterministic, learnable dataset of ``N`` images of shape ``C x H x W`` in ``K``
    classes; needs no files at all (handy for tests and demos).

Items are ``(image, label)`` pairs: a normalised ``float32`` tensor of shape ``C x H x W`` and a
Python ``int``. Every returned dataset has the attributes ``classes`` (list of str),
``num_classes`` (int), ``input_size`` (tuple ``(C, H, W)``) and ``name`` (str).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from lrviz.errors import LrvizError

logger = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "available_datasets",
    "get_dataset",
    "make_loader",
    "register_dataset",
    "subset",
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
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SPLITS = ("train", "test")

#: A dataset factory receives the part of the name after ``:`` (or None) and the keyword
#: arguments of :func:`get_dataset`, and returns the dataset.
DatasetFactory = Callable[..., Dataset]

_DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a dataset factory under ``name`` (decorator).

    Parameters
    ----------
    name : str
        The dataset kind, i.e. the part of a dataset name before ``:``.

    Returns
    -------
    callable
        A decorator that registers the factory and returns it unchanged. The factory is called as
        ``factory(arg, split, root=..., resize=..., grayscale=..., mean=..., std=..., augment=...)``
        where ``arg`` is the text after ``:`` in the dataset name, or None.

    Raises
    ------
    LrvizError
        If ``name`` is empty, contains ``:`` or is already registered.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise LrvizError(
            f"Invalid dataset kind {name!r}: it must be a non-empty string without ':'. "
            "Register it under a plain name such as 'my-data'."
        )

    def decorator(factory: DatasetFactory) -> DatasetFactory:
        if name in _DATASETS:
            raise LrvizError(
                f"Dataset kind {name!r} is already registered. Registered kinds: "
                f"{', '.join(available_datasets())}. Pick a different name."
            )
        _DATASETS[name] = factory
        return factory

    return decorator


def available_datasets() -> list[str]:
    """Return the registered dataset kinds, sorted.

    Returns
    -------
    list of str
        The kinds usable as the part before ``:`` in :func:`get_dataset` names.
    """
    return sorted(_DATASETS)


def get_dataset(
    name: str,
    split: str = "test",
    *,
    root: str | os.PathLike | None = None,
    resize: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
) -> Dataset:
    """Build a dataset by name.

    Parameters
    ----------
    name : str
        ``kind[:arg]``, e.g. ``"fashion-mnist"``, ``"imagefolder:/data/imgs"``,
        ``"synthetic:3,32,32,10,256"``. See :func:`available_datasets`.
    split : {"train", "test"}
        Which split to load.
    root : str or path-like, optional
        Folder holding the raw files (Fashion-MNIST). Searched first.
    resize : int or (int, int), optional
        Output image size ``(H, W)``; an int means a square image. For ``imagefolder`` the default
        is 224; for the other kinds the native size is kept.
    grayscale : bool
        Convert to one channel.
    mean, std : sequence of float, optional
        Per-channel normalisation; the defaults depend on the dataset.
    augment : bool
        Random training augmentation (random crop with 2-pixel padding and horizontal flip). Uses
        torch's global RNG, so ``torch.manual_seed`` makes it reproducible.

    Returns
    -------
    torch.utils.data.Dataset
        Items are ``(float32 tensor C x H x W, int label)``; the dataset has the attributes
        ``classes``, ``num_classes``, ``input_size`` and ``name``.

    Raises
    ------
    LrvizError
        For an unknown name, a bad split or bad options, or data that cannot be found or read.
    """
    if not isinstance(name, str) or not name.strip():
        raise LrvizError(
            f"Dataset name must be a non-empty string, got {name!r}. "
            f"Available datasets: {', '.join(available_datasets())}."
        )
    kind, sep, arg = name.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _DATASETS:
        raise LrvizError(
            f"Unknown dataset {name!r}. Available datasets: {', '.join(available_datasets())} "
            "(use e.g. 'fashion-mnist', 'imagefolder:DIR' or 'synthetic')."
        )
    if split not in _SPLITS:
        raise LrvizError(f"Unknown split {split!r} for dataset {name!r}; use 'train' or 'test'.")
    _check_resize(resize)
    factory = _DATASETS[kind]
    dataset = factory(
        arg if sep else None,
        split,
        root=root,
        resize=resize,
        grayscale=bool(grayscale),
        mean=mean,
        std=std,
        augment=bool(augment),
    )
    logger.debug("Loaded dataset %s (%s split): %d items", name, split, len(dataset))
    return dataset


# ----------------------------------------------------------------------------------------------
# helpers for options
# ----------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """True for Python / numpy integers, False for bools and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_resize(resize: Any) -> tuple[int, int] | None:
    """Validate ``resize`` and return it as ``(H, W)`` (or None)."""
    if resize is None:
        return None
    if isinstance(resize, bool):
        raise LrvizError(f"resize must be an int or (height, width), got {resize!r}.")
    if isinstance(resize, (int, np.integer)):
        size = (int(resize), int(resize))
    elif isinstance(resize, Sequence) and len(resize) == 2 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in resize
    ):
        size = (int(resize[0]), int(resize[1]))
    else:
        raise LrvizError(
            f"resize must be an int or a pair (height, width) of ints, got {resize!r}. "
            "Use e.g. resize=32 or resize=(32, 32)."
        )
    if min(size) < 1 or max(size) > 8192:
        raise LrvizError(
            f"resize must be between 1 and 8192 pixels, got {resize!r}. Use e.g. resize=32."
        )
    return size


def _check_norm(
    values: Sequence[float] | None, default: Sequence[float], channels: int, what: str
) -> tuple[float, ...]:
    """Validate a per-channel mean/std and broadcast a single value to ``channels``."""
    if values is None:
        values = default
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise LrvizError(
            f"{what} must be a sequence of numbers, got {values!r}. Use e.g. {what}=(0.5,)."
        ) from None
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise LrvizError(
            f"{what} has {len(vals)} values but the images have {channels} channel(s). "
            f"Give one value per channel (or a single value for all)."
        )
    if what == "std" and any(v <= 0 or not np.isfinite(v) for v in vals):
        raise LrvizError(f"std values must be positive, got {vals!r}.")
    if any(not np.isfinite(v) for v in vals):
        raise LrvizError(f"{what} values must be finite numbers, got {vals!r}.")
    return vals


class _InMemoryImageDataset(Dataset):
    """Images held in memory as one tensor; the transform is applied per item.

    ``images`` is ``N x C x H x W`` (uint8 scaled by 1/255, or float used as is).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        classes: Sequence[str],
        name: str,
        resize: tuple[int, int] | None,
        grayscale: bool,
        mean: tuple[float, ...] | None,
        std: tuple[float, ...] | None,
        augment: bool,
        pad: int = 2,
    ) -> None:
        self._images = images
        self._labels = labels
        self._scale = images.dtype == torch.uint8
        self._resize = resize
        self._grayscale = grayscale and images.shape[1] > 1
        self._augment = augment
        self._pad = pad
        channels = 1 if grayscale else int(images.shape[1])
        self._mean = None if mean is None else torch.tensor(mean).view(-1, 1, 1)
        self._std = None if std is None else torch.tensor(std).view(-1, 1, 1)
        h, w = resize if resize is not None else (int(images.shape[2]), int(images.shape[3]))
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.input_size = (channels, h, w)
        self.name = name
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self._images[index].float()
        if self._scale:
            x = x / 255.0
        if self._grayscale:
            x = x.mean(dim=0, keepdim=True)
        if self._augment:
            x = self._random_crop_flip(x)
        if self._resize is not None and tuple(x.shape[1:]) != self._resize:
            x = F.interpolate(x[None], size=self._resize, mode="bilinear", align_corners=False)[0]
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x.contiguous(), int(self._labels[index])

    def _random_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:]
        p = self._pad
        if p > 0:
            padded = F.pad(x, (p, p, p, p))
            top = int(torch.randint(0, 2 * p + 1, (1,)))
            left = int(torch.randint(0, 2 * p + 1, (1,)))
            x = padded[:, top : top + h, left : left + w]
        if float(torch.rand(())) < 0.5:
            x = x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"<{self.name} dataset: {len(self)} items, input_size={self.input_size}>"


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------

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


@register_dataset("fashion-mnist")
def _fashion_mnist(
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
    found = _find_fashion_mnist(root, split)
    if found is None:
        target = cache_dir()
        searched = _fashion_mnist_candidates(root)
        try:
            logger.info("Fashion-MNIST not found locally; downloading to %s", target)
            _download_fashion_mnist(target)
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            logger.debug("Fashion-MNIST download failed: %r", exc)
            folders = ", ".join(str(p) for p in searched)
            cause = (str(exc).strip().splitlines() or [""])[0][:200]
            raise LrvizError(
                "Fashion-MNIST data not found and the download failed (offline?): "
                f"{type(exc).__name__}: {cause}. "
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
    images, labels = _load_fashion_mnist_arrays(found[0], found[1], split)
    return _fmnist_dataset(images, labels, "fashion-mnist", resize, grayscale, mean, std, augment)


def _fmnist_dataset(images, labels, name, resize, grayscale, mean, std, augment) -> Dataset:
    """In-memory Fashion-MNIST-style dataset with the standard classes and normalisation."""
    return _InMemoryImageDataset(
        images,
        labels,
        classes=FASHION_MNIST_CLASSES,
        name=name,
        resize=_check_resize(resize),
        grayscale=grayscale,
        mean=_check_norm(mean, FASHION_MNIST_MEAN, 1, "mean"),
        std=_check_norm(std, FASHION_MNIST_STD, 1, "std"),
        augment=augment,
    )


# ----------------------------------------------------------------------------------------------
# ImageFolder
# ----------------------------------------------------------------------------------------------


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # what PIL raises on a file that is not a (complete, sane) image: UnidentifiedImageError and
    # "image file is truncated" are OSErrors; some decoders raise SyntaxError, ValueError or struct.error
    return (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _load_image(path: str):
    """Open ``path`` as an RGB PIL image (torchvision's ``pil_loader``), or raise :class:`LrvizError`
    naming the file when it is not a readable image."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except _decode_errors() as exc:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise LrvizError(
            f"{path!r} is not a readable image ({type(exc).__name__}: {text}). An image folder needs image "
            "files (.png, .jpg, ...) in DIR/<class>/; remove or convert this file."
        ) from exc


@register_dataset("imagefolder")
def _imagefolder(
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
    from torchvision import datasets, transforms

    if not arg or not arg.strip():
        raise LrvizError(
            "Dataset 'imagefolder' needs a folder: use 'imagefolder:DIR' where DIR holds one "
            "sub-folder of images per class."
        )
    folder = Path(arg.strip()).expanduser()
    if not folder.is_dir():
        raise LrvizError(
            f"Image folder {str(folder)!r} does not exist or is not a directory. Give an "
            "existing folder with one sub-folder of images per class: 'imagefolder:DIR'."
        )
    size = _check_resize(resize) or (224, 224)
    channels = 1 if grayscale else 3
    if grayscale:
        mean_t = _check_norm(mean, (0.5,), 1, "mean")
        std_t = _check_norm(std, (0.5,), 1, "std")
    else:
        mean_t = _check_norm(mean, IMAGENET_MEAN, 3, "mean")
        std_t = _check_norm(std, IMAGENET_STD, 3, "std")
    steps: list[Any] = [transforms.Resize(size)]
    if augment:
        steps += [transforms.RandomCrop(size, padding=2), transforms.RandomHorizontalFlip()]
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean_t, std_t)]
    try:
        ds = datasets.ImageFolder(str(folder), transform=transforms.Compose(steps), loader=_load_image)
    except (FileNotFoundError, OSError) as exc:
        raise LrvizError(
            f"Image folder {str(folder)!r} has no usable images: {exc}. It must contain one "
            "sub-folder per class, each with image files (.png, .jpg, ...)."
        ) from exc
    if len(ds) == 0 or not ds.classes:
        raise LrvizError(
            f"Image folder {str(folder)!r} has no images in class sub-folders. Put images in "
            "DIR/<class name>/*.png (or .jpg)."
        )
    # decode one image now, so a folder of files that are not images fails here and not in the
    # middle of an evaluation (every later file is still checked when it is read)
    ds[0]
    ds.num_classes = len(ds.classes)
    ds.input_size = (channels, size[0], size[1])
    ds.name = f"imagefolder:{folder}"
    return ds


# ----------------------------------------------------------------------------------------------
# Synthetic
# ----------------------------------------------------------------------------------------------

_SYNTHETIC_SEED = 20240531
_SYNTHETIC_DEFAULT = (3, 32, 32, 10, 256)
_SYNTHETIC_MAX_ELEMENTS = 50_000_000  # 200 MB of float32


def _parse_synthetic(arg: str | None) -> tuple[int, int, int, int, int]:
    if arg is None or not arg.strip():
        return _SYNTHETIC_DEFAULT
    usage = (
        "Use 'synthetic:C,H,W,K,N' with positive integers: channels, height, width, number of "
        "classes (>= 2) and number of images, e.g. 'synthetic:3,32,32,10,256'."
    )
    parts = [p.strip() for p in arg.split(",")]
    if len(parts) != 5:
        raise LrvizError(f"Invalid synthetic dataset spec 'synthetic:{arg}'. {usage}")
    try:
        c, h, w, k, n = (int(p) for p in parts)
    except ValueError:
        raise LrvizError(f"Invalid synthetic dataset spec 'synthetic:{arg}'. {usage}") from None
    if min(c, h, w, n) < 1 or k < 2 or c > 64 or max(h, w) > 1024:
        raise LrvizError(
            f"Invalid synthetic dataset spec 'synthetic:{arg}' (channels must be 1..64, sizes "
            f"1..1024, classes >= 2, images >= 1). {usage}"
        )
    if c * h * w * n > _SYNTHETIC_MAX_ELEMENTS:
        raise LrvizError(
            f"Synthetic dataset 'synthetic:{arg}' would need {c * h * w * n * 4 / 1e6:.0f} MB; "
            f"the limit is {_SYNTHETIC_MAX_ELEMENTS * 4 / 1e6:.0f} MB. Use fewer or smaller images."
        )
    return c, h, w, k, n


def _make_synthetic(
    c: int, h: int, w: int, k: int, n: int, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """K smooth random class templates plus Gaussian noise; independent of the global RNG."""
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    coarse = torch.randn(k, c, max(2, h // 4), max(2, w // 4), generator=gen)
    templates = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    templates = templates / templates.flatten(1).std(dim=1).clamp_min(1e-6).view(k, 1, 1, 1)
    split_gen = torch.Generator().manual_seed(_SYNTHETIC_SEED + 1 + _SPLITS.index(split))
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=split_gen)]
    noise = torch.randn(n, c, h, w, generator=split_gen)
    images = templates[labels] + 0.8 * noise
    return images.float(), labels.long()


@register_dataset("synthetic")
def _synthetic(
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
    c, h, w, k, n = _parse_synthetic(arg)
    images, labels = _make_synthetic(c, h, w, k, n, split)
    channels = 1 if grayscale else c
    # The images are already roughly zero-mean, unit-variance: normalise only when asked.
    mean_t = None if mean is None else _check_norm(mean, (0.0,), channels, "mean")
    std_t = None if std is None else _check_norm(std, (1.0,), channels, "std")
    if (mean_t is None) != (std_t is None):
        mean_t = mean_t or (0.0,) * channels
        std_t = std_t or (1.0,) * channels
    return _InMemoryImageDataset(
        images,
        labels,
        classes=[f"class_{i}" for i in range(k)],
        name="synthetic" if arg is None else f"synthetic:{arg}",
        resize=_check_resize(resize),
        grayscale=grayscale,
        mean=mean_t,
        std=std_t,
        augment=augment,
    )


# ----------------------------------------------------------------------------------------------
# subsets and loaders
# ----------------------------------------------------------------------------------------------

_FORWARDED_ATTRS = ("classes", "num_classes", "input_size", "name")


class DatasetSubset(Subset):
    """A :class:`torch.utils.data.Subset` that keeps the dataset attributes of its base.

    ``classes``, ``num_classes``, ``input_size`` and ``name`` are copied from the base dataset
    (when it has them).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        for attr in _FORWARDED_ATTRS:
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))


def subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """Return a deterministic random subset of ``limit`` items.

    The items are the first ``limit`` of a fixed permutation (seeded by ``seed``), so a larger
    limit gives a superset of a smaller one.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        A sized dataset.
    limit : int or None
        Number of items to keep. None, or a limit of at least ``len(dataset)``, returns
        ``dataset`` itself.
    seed : int
        Seed of the permutation.

    Returns
    -------
    torch.utils.data.Dataset
        The subset, with the ``classes``, ``num_classes``, ``input_size`` and ``name``
        attributes of ``dataset``.

    Raises
    ------
    LrvizError
        If ``limit`` is not a positive integer.
    """
    if limit is None:
        return dataset
    if not _is_int(limit):
        raise LrvizError(
            f"limit must be a positive integer or None, got {limit!r}. Use e.g. --limit 1000."
        )
    if limit < 1:
        raise LrvizError(
            f"limit must be at least 1, got {limit}. Use a positive number of images, or no "
            "limit to use the whole dataset."
        )
    n = len(dataset)
    if limit >= n:
        return dataset
    gen = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(n, generator=gen)[: int(limit)].tolist()
    return DatasetSubset(dataset, indices)


def make_loader(
    dataset: Dataset,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """Wrap ``dataset`` in a :class:`torch.utils.data.DataLoader`.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        The dataset.
    batch_size : int
        Items per batch (the last batch may be smaller).
    shuffle : bool
        Shuffle each epoch, with a generator seeded by ``seed`` (reproducible).
    seed : int
        Seed of the shuffling generator.
    num_workers : int
        Worker processes (0 loads in the main process).

    Returns
    -------
    torch.utils.data.DataLoader
        The loader.

    Raises
    ------
    LrvizError
        If ``batch_size`` < 1 or ``num_workers`` < 0.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise LrvizError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not _is_int(num_workers) or num_workers < 0:
        raise LrvizError(f"num_workers must be a non-negative integer, got {num_workers!r}.")
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle),
        generator=generator,
        num_workers=int(num_workers),
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------------
# Bundled Fashion-MNIST sample (works where nothing else is installed)
# ----------------------------------------------------------------------------------------------

SAMPLE_PATH = Path(__file__).parent / "assets" / "fashion-mnist-sample.npz"


def build_fashion_mnist_sample(out: str | os.PathLike = SAMPLE_PATH, per_class: int = 200, seed: int = 0, root=None) -> Path:
    """Write the bundled sample: ``per_class`` test images of each class, chosen by a seeded
    permutation of the full Fashion-MNIST test set (uint8 images, labels and original indices)."""
    found = _find_fashion_mnist(root, "test")
    if found is None:
        raise LrvizError("building the sample needs the full Fashion-MNIST test set (apt-get install dataset-fashion-mnist)")
    images, labels = _load_fashion_mnist_arrays(found[0], found[1], "test")
    images, labels = np.asarray(images), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = np.sort(np.concatenate([order[labels[order] == c][:per_class] for c in range(10)]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images[picked], labels=labels[picked].astype(np.int64), indices=picked.astype(np.int64))
    return out


@register_dataset("fashion-mnist-sample")
def _fashion_mnist_sample(arg, split, *, root, resize, grayscale, mean, std, augment) -> Dataset:
    """2,000 Fashion-MNIST test images (200 per class) bundled with lrviz (MIT licence, Zalando)."""
    if arg:
        raise LrvizError(f"Dataset 'fashion-mnist-sample' takes no argument, got 'fashion-mnist-sample:{arg}'")
    if split != "test":
        raise LrvizError("fashion-mnist-sample is a test-set sample only; train on 'fashion-mnist'")
    if not SAMPLE_PATH.exists():
        raise LrvizError(f"the bundled sample {SAMPLE_PATH} is missing (reinstall lrviz)")
    with np.load(SAMPLE_PATH) as z:
        images, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
    return _fmnist_dataset(images, labels, "fashion-mnist-sample", resize, grayscale, mean, std, augment)
