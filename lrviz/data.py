"""Datasets for evaluating (compressed) image classifiers: the one entry point.

Every dataset is built by name through :func:`get_dataset`. Names have the form ``kind[:arg]``:

``fashion-mnist``
    Fashion-MNIST read directly from the standard idx ``.gz`` files (no download needed when the
    files are on disk, e.g. from the Debian package ``dataset-fashion-mnist``).
``fashion-mnist-sample``
    The 2,000-image test-set sample bundled with lrviz (works with nothing installed).
``fashion-mnist-train-sample``
    The 3,000-image *train*-set sample bundled with lrviz: what the dashboard fine-tunes on offline.
``imagefolder:DIR``
    A :class:`torchvision.datasets.ImageFolder` over ``DIR`` (one sub-folder per class).
``imagenet:DIR``
    ImageNet-style data with the standard evaluation preset (shorter side 256, centre crop 224,
    ImageNet mean/std; scaled for other input sizes): ``DIR/train`` and ``DIR/val`` (the ``test``
    split reads ``val``), or directly one sub-folder per class. Its subsets are class-stratified.
``synthetic`` or ``synthetic:C,H,W,K,N``
    A small, deterministic, learnable dataset of ``N`` images of shape ``C x H x W`` in ``K``
    classes; needs no files at all (handy for tests and demos).

Items are ``(image, label)`` pairs: a normalised ``float32`` tensor of shape ``C x H x W`` and a
Python ``int``. Every returned dataset has the attributes ``classes`` (list of str),
``num_classes`` (int), ``input_size`` (tuple ``(C, H, W)``), ``name`` (str) and ``split`` (the split
loaded, or None for a kind with one labelled set whose split is ignored, such as ``imagefolder``).
A dataset may also set ``stratify = True`` next to a ``targets`` list (one int label per item):
:func:`subset` then picks a class-stratified subset (:func:`stratified_indices`) instead of a random one.

This module holds the registry of kinds (:func:`register_dataset`), :func:`get_dataset`, the
deterministic subsets and loaders every evaluation uses (:func:`subset`, :func:`make_loader`), and
the leak-free split of fine-tuning data (:func:`finetune_splits`: train / validation / evaluation,
pairwise disjoint, with the indices recorded). Each
kind lives in its own module: :mod:`lrviz.data_fashion_mnist`, :mod:`lrviz.data_imagefolder`,
:mod:`lrviz.data_synthetic`; the options they share (resize, grayscale, mean/std, augment) are checked
and applied by :mod:`lrviz.data_transforms`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data_fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SAMPLE_PATH,
    TRAIN_SAMPLE_PATH,
    cache_dir,
    fashion_mnist,
    fashion_mnist_sample,
    fashion_mnist_train_sample,
)
from .data_imagefolder import IMAGENET_MEAN, IMAGENET_STD, imagefolder, imagenet
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
    "TRAIN_SAMPLE_PATH",
    "DataSplits",
    "DatasetSubset",
    "SplitPart",
    "available_datasets",
    "cache_dir",
    "finetune_splits",
    "get_dataset",
    "images_label",
    "overlaps",
    "make_loader",
    "register_dataset",
    "same_images",
    "stratified_indices",
    "subset",
    "subset_indices",
    "train_data_name",
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
        ``"imagenet:/data/imagenet"``, ``"synthetic:3,32,32,10,256"``. See :func:`available_datasets`.
    split : {"train", "test"}
        Which split to load.
    root : str or path-like, optional
        Folder holding the raw files (Fashion-MNIST). Searched first.
    resize : int or (int, int), optional
        Output image size ``(H, W)``; an int means a square image. For ``imagefolder`` the default
        is 224; for ``imagenet`` it is the centre crop (default 224, after resizing the shorter side
        to ``round(max(H, W) * 256 / 224)``); for the other kinds the native size is kept.
    grayscale : bool
        Convert to one channel.
    mean, std : sequence of float, optional
        Per-channel normalisation; the defaults depend on the dataset.
    augment : bool
        Random training augmentation (random crop with 2-pixel padding and horizontal flip;
        ``imagenet``: ``RandomResizedCrop`` and horizontal flip). Uses torch's global RNG, so
        ``torch.manual_seed`` makes it reproducible.

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
            "(use e.g. 'fashion-mnist', 'imagefolder:DIR', 'imagenet:DIR' or 'synthetic')."
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
    if not hasattr(dataset, "split"):  # kinds with one labelled set set it to None themselves
        try:
            dataset.split = split
        except AttributeError:  # a dataset type that refuses attributes: no split known
            pass
    logger.debug("Loaded dataset %s (%s split): %d items", name, split, len(dataset))
    return dataset


# ----------------------------------------------------------------------------------------------
# subsets and loaders
# ----------------------------------------------------------------------------------------------

_FORWARDED_ATTRS = ("classes", "num_classes", "input_size", "name", "split")


class DatasetSubset(Subset):
    """A :class:`torch.utils.data.Subset` that keeps the dataset attributes of its base.

    ``classes``, ``num_classes``, ``input_size``, ``name`` and ``split`` are copied from the base
    dataset (when it has them).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        for attr in _FORWARDED_ATTRS:
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))


def subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """Return a deterministic random subset of ``limit`` items.

    The items are the first ``limit`` of a fixed permutation (seeded by ``seed``), so a larger
    limit gives a superset of a smaller one. A dataset with ``stratify = True`` and a ``targets``
    list (``imagenet:DIR``) gets the first ``limit`` of its class-stratified order instead
    (:func:`stratified_indices`: as even a share of each class as its images allow; also nested).

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
    return DatasetSubset(dataset, subset_indices(dataset, limit, seed))


def _stratified_targets(dataset) -> list[int] | None:
    """The labels to stratify ``dataset``'s subsets on, or None for a plain random subset."""
    if getattr(dataset, "stratify", False) is not True:
        return None
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        raise LrvizError(
            f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r} asks for stratified subsets "
            "(stratify = True) but has no 'targets' list with one label per item; set 'targets' or drop 'stratify'."
        )
    return targets


def subset_indices(n: int | Dataset, limit: int | None, seed: int = 0) -> list[int]:
    """The positions :func:`subset` keeps of a dataset (all of them, in order, when ``limit`` is None
    or at least its length).

    Parameters
    ----------
    n : int or Dataset
        The number of items (a plain random subset: the first ``limit`` of ``torch.randperm(n)``
        seeded by ``seed``), or the dataset itself, which also honours ``stratify`` (see :func:`subset`).
    limit : int or None
        How many to keep.
    seed : int
        Seed of the permutation.
    """
    targets = None if is_int(n) else _stratified_targets(n)
    n = int(n) if is_int(n) else len(n)
    if limit is None or limit >= n:
        return list(range(n))
    if targets is not None:
        return stratified_indices(targets, limit, seed)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[: int(limit)].tolist()


def _class_seed(seed: int, label: int) -> int:
    # one independent stream per (seed, class): a class's order does not depend on the other classes
    return (int(seed) * 1_000_003 + int(label) * 7_919 + 1) % (2**63)


def stratified_indices(targets: Sequence[int], limit: int | None, seed: int = 0) -> list[int]:
    """A deterministic class-stratified subset: ``limit`` positions with as even a share of each class
    as the class sizes allow.

    Each class's positions are shuffled by their own seeded permutation (seeded by ``seed`` and the
    label, so a class's order does not depend on the other classes); the classes are visited in a
    seeded order, and the subset takes round-robin one image of each class still holding any, round
    after round. The first ``limit`` of that sequence are returned (in that interleaved order), so:

    * every class gets ``floor(limit / K)`` or ``ceil(limit / K)`` images (``K`` classes), the
      ``limit mod K`` extra ones going to the first classes of the seeded class order;
    * a class with fewer images gives all it has, and the images it lacks come from the others
      (the total is exactly ``limit``);
    * a larger limit gives a superset of a smaller one (the smaller is a prefix of the larger).

    Only the labels are read (no image is decoded); ``O(n log n)`` for ``n`` labels.

    Parameters
    ----------
    targets : sequence of int
        The label of each item (e.g. :attr:`torchvision.datasets.ImageFolder.targets`).
    limit : int or None
        How many positions to keep; None, or at least ``len(targets)``, keeps all of them in order.
    seed : int
        Seed of the class order and the per-class permutations.

    Returns
    -------
    list of int
        Distinct positions into ``targets``.
    """
    t = torch.as_tensor(list(targets) if not isinstance(targets, torch.Tensor) else targets, dtype=torch.long)
    n = int(t.numel())
    if limit is None or limit >= n:
        return list(range(n))
    labels, inverse, counts = torch.unique(t, sorted=True, return_inverse=True, return_counts=True)
    by_class = torch.argsort(inverse, stable=True)  # positions grouped by class, in dataset order
    rank = torch.empty(n, dtype=torch.long)  # each image's place in its class's permuted order
    start = 0
    for label, count in zip(labels.tolist(), counts.tolist()):
        members = by_class[start : start + count]
        perm = torch.randperm(count, generator=torch.Generator().manual_seed(_class_seed(seed, label)))
        rank[members[perm]] = torch.arange(count)
        start += count
    k = len(labels)
    slot = torch.randperm(k, generator=torch.Generator().manual_seed(int(seed) % (2**63)))  # class order
    key = rank * k + slot[inverse]  # round first, then the class's place in the round: all distinct
    return torch.argsort(key)[: int(limit)].tolist()


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
# fine-tuning data: train / validation / evaluation, pairwise disjoint
# ----------------------------------------------------------------------------------------------

#: Evaluation datasets whose training counterpart is another dataset kind (the bundled test sample's
#: is the bundled train sample; every other kind trains on its own ``train`` split).
TRAIN_COUNTERPARTS = {"fashion-mnist-sample": "fashion-mnist-train-sample"}

#: How the images of well-known (name, split) pairs are called in captions.
_IMAGES = {
    ("fashion-mnist-sample", "test"): "test-sample images",
    ("fashion-mnist-train-sample", "train"): "train-sample images",
    ("fashion-mnist", "test"): "Fashion-MNIST test images",
    ("fashion-mnist", "train"): "Fashion-MNIST train images",
}

#: Default fractions of :func:`finetune_splits`.
VAL_FRACTION = 0.2
EVAL_FRACTION = 0.25


def train_data_name(name: str) -> str:
    """The dataset to fine-tune on when ``name`` is the evaluation data (its ``train`` split is used):
    ``name`` itself, except the bundled test sample, whose counterpart is the bundled train sample."""
    kind, sep, _ = str(name).strip().partition(":")
    return TRAIN_COUNTERPARTS.get(kind.lower(), name) if not sep else name


def images_label(dataset) -> str:
    """How the images of ``dataset`` are called in captions, e.g. ``"test-sample images"``."""
    name, split = getattr(dataset, "name", None), getattr(dataset, "split", None)
    if (name, split) in _IMAGES:
        return _IMAGES[(name, split)]
    if name is None:
        return "images"
    return f"{name} {split} images" if split else f"images of {name}"


def _source(dataset) -> tuple[str, list[int] | None]:
    """The identity of the images behind ``dataset`` (``"name:split"``; ``"name"`` for a kind with
    one labelled set) and, for the bundled samples, each item's position in the full split."""
    name, split = getattr(dataset, "name", None), getattr(dataset, "split", None)
    mapped = getattr(dataset, "source_indices", None)
    if name in ("fashion-mnist-sample", "fashion-mnist-train-sample") and mapped is not None:
        return f"fashion-mnist:{split}", list(mapped)
    if name is None:
        return f"unnamed dataset {id(dataset):x}", None
    return (f"{name}:{split}" if split else str(name)), None


def same_images(a, b) -> bool:
    """Whether ``a`` and ``b`` hold the same images in the same order (transforms may differ): the same
    object, or the same dataset name with the same split or a split that is ignored (None)."""
    if a is b:
        return True
    na, nb = getattr(a, "name", None), getattr(b, "name", None)
    if na is None or na != nb:
        return False
    sa, sb = getattr(a, "split", None), getattr(b, "split", None)
    return sa is None or sb is None or sa == sb


@dataclass(frozen=True)
class SplitPart:
    """One part of :class:`DataSplits`.

    Attributes
    ----------
    role : {"train", "validation", "evaluation"}
    dataset : Dataset
        The part itself (a :class:`DatasetSubset`).
    indices : tuple of int
        Positions in the dataset the part was cut from (what rebuilds it).
    source : str
        Identity of the images behind those positions (``"fashion-mnist:train"``, ``"imagefolder:DIR"``).
    source_indices : tuple of int
        The part's images as positions in ``source`` (the bundled samples map to the full split).
    what : str
        How its images are called in captions.
    """

    role: str
    dataset: Dataset
    indices: tuple[int, ...]
    source: str
    source_indices: tuple[int, ...]
    what: str

    @property
    def n(self) -> int:
        return len(self.indices)

    def record(self) -> dict:
        return {"role": self.role, "source": self.source, "what": self.what, "n": self.n, "indices": list(self.indices),
                "source_indices": list(self.source_indices)}


@dataclass(frozen=True)
class DataSplits:
    """Fine-tuning data in three pairwise disjoint parts (see :func:`finetune_splits`).

    ``train`` is fine-tuned on, ``val`` picks the best epoch (early stopping), ``eval`` is the only
    part any "after" accuracy may be reported on. ``held_out`` is True when one labelled set was
    split three ways (``eval`` is then a held-out part of it), False when ``eval`` is a separate
    (test) split.
    """

    train: SplitPart
    val: SplitPart
    eval: SplitPart
    held_out: bool
    seed: int
    total: int = 0

    @property
    def parts(self) -> tuple[SplitPart, SplitPart, SplitPart]:
        return (self.train, self.val, self.eval)

    @property
    def description(self) -> str:
        """One line: what is trained on, what selects the epoch, what is reported."""
        t, v, e = self.parts
        if self.held_out:
            return (f"one labelled set ({self.total:,} {t.what}) split three ways (seed {self.seed}): fine-tuning on {t.n:,}, "
                    f"best epoch chosen on {v.n:,} others, evaluation on {e.n:,} held-out ones, never used for training or "
                    "selection")
        return (f"fine-tuning on {t.n:,} {t.what} (best epoch chosen on {v.n:,} other {v.what}); evaluation on {e.n:,} "
                f"{e.what}, never used for training or selection (seed {self.seed})")

    def record(self) -> dict:
        """JSON-ready record: the description, the seed and every part's indices (see :func:`overlaps`)."""
        return {"description": self.description, "held_out": self.held_out, "seed": self.seed,
                "train": self.train.record(), "val": self.val.record(), "eval": self.eval.record()}


def overlaps(record: dict) -> list[str]:
    """The pairs of parts of a :meth:`DataSplits.record` that share an image (empty: pairwise disjoint).

    Parts with the same ``source`` are compared by ``source_indices``; parts of different sources
    (e.g. the train and the test split) hold different images.
    """
    out = []
    roles = ("train", "val", "eval")
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            pa, pb = record[a], record[b]
            if pa["source"] == pb["source"]:
                common = set(pa["source_indices"]) & set(pb["source_indices"])
                if common:
                    out.append(f"{a} and {b} share {len(common)} image(s) of {pa['source']}")
    return out


def _fraction(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise LrvizError(f"{what} must be a fraction between 0 and 1 (exclusive); got {value!r}")
    return float(value)


def _limited(indices: list[int], limit: int | None, what: str) -> list[int]:
    if limit is None:
        return indices
    if not is_int(limit) or limit < 1:
        raise LrvizError(f"{what} must be a positive integer or None; got {limit!r}")
    return indices[: int(limit)]


def _part(role: str, dataset, base, indices: list[int], what: str) -> SplitPart:
    source, mapped = _source(base)
    src_idx = tuple(int(mapped[i]) for i in indices) if mapped is not None else tuple(int(i) for i in indices)
    return SplitPart(role, DatasetSubset(dataset, indices), tuple(int(i) for i in indices), source, src_idx, what)


def finetune_splits(
    eval_data: Dataset,
    train_data: Dataset | None = None,
    *,
    augmented: Dataset | None = None,
    val_fraction: float = VAL_FRACTION,
    eval_fraction: float = EVAL_FRACTION,
    seed: int = 0,
    train_limit: int | None = None,
    val_limit: int | None = None,
    eval_limit: int | None = None,
) -> DataSplits:
    """Split fine-tuning data into train / validation / evaluation parts that share no image.

    Parameters
    ----------
    eval_data : Dataset
        The labelled data accuracies are reported on (the test split, or the one labelled set).
    train_data : Dataset, optional
        The data to fine-tune on (a ``train`` split). When it is None or holds the same images as
        ``eval_data`` (:func:`same_images`, e.g. an ImageFolder, whose split is ignored), ``eval_data``
        is split three ways: ``eval_fraction`` of it is held out for evaluation, ``val_fraction`` of
        the rest validates, the remainder trains. Otherwise ``val_fraction`` of ``train_data``
        validates, the rest trains, and the evaluation part is ``eval_data``.
    augmented : Dataset, optional
        The training images with training augmentation (index-aligned with the data the train part
        is cut from); used for the train part only, validation and evaluation stay un-augmented.
    seed : int
        Seed of the permutation the parts are cut from.
    train_limit, val_limit, eval_limit : int, optional
        Keep only that many images of a part (a random subset: the parts are in permutation order;
        the separate evaluation split keeps :func:`subset`'s choice).

    Returns
    -------
    DataSplits
        The parts, their indices and a one-line description.

    Raises
    ------
    LrvizError
        Bad fractions or limits, too few images to split, or an ``augmented`` view of another size.
    """
    val_fraction = _fraction(val_fraction, "val_fraction")
    eval_fraction = _fraction(eval_fraction, "eval_fraction")
    held_out = train_data is None or same_images(train_data, eval_data)
    base = eval_data if held_out else train_data
    if held_out and train_data is not None and len(train_data) != len(eval_data):
        raise LrvizError(f"the training and evaluation data hold the same images but differ in length ({len(train_data)} vs "
                         f"{len(eval_data)}); pass them index-aligned")
    if augmented is not None and len(augmented) != len(base):
        raise LrvizError(f"the augmented training view has {len(augmented)} images but the training data {len(base)}; "
                         "they must be the same images in the same order")
    n = len(base)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    if held_out:
        n_eval = max(1, round(n * eval_fraction))
        rest = perm[n_eval:]
        eval_idx = perm[:n_eval]
    else:
        rest = perm
        eval_idx = subset_indices(len(eval_data), None)
    n_val = max(1, round(len(rest) * val_fraction))
    if len(rest) - n_val < 1:
        raise LrvizError(f"{n} image(s) are too few to split into {'train, validation and evaluation' if held_out else 'train and validation'} "
                         "parts; use more data")
    val_idx, train_idx = rest[:n_val], rest[n_val:]
    train_idx = _limited(train_idx, train_limit, "train_limit")
    val_idx = _limited(val_idx, val_limit, "val_limit")
    if held_out:
        eval_idx = _limited(eval_idx, eval_limit, "eval_limit")
    elif eval_limit is not None:
        _limited([], eval_limit, "eval_limit")  # checks the value
        eval_idx = subset_indices(eval_data, int(eval_limit), seed)  # as subset() picks them
    what = images_label(base)
    return DataSplits(
        train=_part("train", augmented if augmented is not None else base, base, train_idx, what),
        val=_part("validation", base, base, val_idx, what),
        eval=_part("evaluation", eval_data, eval_data, eval_idx, what if held_out else images_label(eval_data)),
        held_out=held_out,
        seed=int(seed),
        total=n,
    )


# ----------------------------------------------------------------------------------------------
# the kinds lrviz brings
# ----------------------------------------------------------------------------------------------

register_dataset("fashion-mnist")(fashion_mnist)
register_dataset("fashion-mnist-sample")(fashion_mnist_sample)
register_dataset("fashion-mnist-train-sample")(fashion_mnist_train_sample)
register_dataset("imagefolder")(imagefolder)
register_dataset("imagenet")(imagenet)
register_dataset("synthetic")(synthetic)
