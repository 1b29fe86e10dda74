"""Datasets for evaluating (compressed) image classifiers: the one entry point.

Every dataset is built by name through :func:`get_dataset`. Names have the form ``kind[:arg]``:

``fashion-mnist``
    Fashion-MNIST read directly from the standard idx ``.gz`` files (no download needed when the
    files are on disk, e.g. from the Debian package ``dataset-fashion-mnist``).
``fashion-mnist-sample``
    The 2,000-image test-set sample bundled with lrviz (works with nothing installed).
``imagefolder:DIR``
    A :class:`torchvision.datasets.ImageFolder` over ``DIR`` (one sub-folder per class).
``synthetic`` or ``synthetic:C,H,W,K,N``
    A small, deterministic, learnable dataset of ``N`` images of shape ``C x H x W`` in ``K``
    classes; needs no files at all (handy for tests and demos).

Items are ``(image, label)`` pairs: a normalised ``float32`` tensor of shape ``C x H x W`` and a
Python ``int``. Every returned dataset has the attributes ``classes`` (list of str),
``num_classes`` (int), ``input_size`` (tuple ``(C, H, W)``) and ``name`` (str).

This module holds the registry of kinds (:func:`register_dataset`), :func:`get_dataset`, and the
deterministic subsets and loaders every evaluation uses (:func:`subset`, :func:`make_loader`). Each
kind lives in its own module: :mod:`lrviz.data_fashion_mnist`, :mod:`lrviz.data_imagefolder`,
:mod:`lrviz.data_synthetic`; the options they share (resize, grayscale, mean/std, augment) are checked
and applied by :mod:`lrviz.data_transforms`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data_fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SAMPLE_PATH,
    cache_dir,
    fashion_mnist,
    fashion_mnist_sample,
)
from .data_imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagefolder
from .data_synthetic import synthetic
from .data_transforms import SPLITS, check_resize
from .errors import LrvizError, is_int

logger = logging.getLogger(__name__)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAMPLE_PATH",
    "DatasetSubset",
    "available_datasets",
    "cache_dir",
    "get_dataset",
    "make_loader",
    "register_dataset",
    "subset",
]

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
    if split not in SPLITS:
        raise LrvizError(f"Unknown split {split!r} for dataset {name!r}; use 'train' or 'test'.")
    check_resize(resize)
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
    if not is_int(limit):
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
    if not is_int(batch_size) or batch_size < 1:
        raise LrvizError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not is_int(num_workers) or num_workers < 0:
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
# the kinds lrviz brings
# ----------------------------------------------------------------------------------------------

register_dataset("fashion-mnist")(fashion_mnist)
register_dataset("fashion-mnist-sample")(fashion_mnist_sample)
register_dataset("imagefolder")(imagefolder)
register_dataset("synthetic")(synthetic)
