"""``imagefolder:DIR`` — a :class:`torchvision.datasets.ImageFolder` over your own images.

``DIR`` holds one sub-folder of images per class (``DIR/<class>/*.png``); the split is ignored (point
``DIR`` at the split you mean), so the dataset's ``split`` is None: one labelled set, which
:func:`lrviz.data.finetune_splits` splits three ways (train / validation / held-out evaluation). Images are read with PIL and converted to RGB, resized to ``resize``
(224×224 by default), optionally augmented (random 2-pixel crop, horizontal flip) and converted to one
channel, then normalised (ImageNet's mean and std by default, 0.5 / 0.5 for grayscale). A file that is
not a readable image gives an error naming it; the first image is decoded when the dataset is built,
so a folder of non-images fails at once rather than in the middle of an evaluation.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .data_transforms import check_norm, check_resize
from .errors import LrvizError, short_cause

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagefolder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        raise LrvizError(
            f"{path!r} is not a readable image ({short_cause(exc)}). An image folder needs image "
            "files (.png, .jpg, ...) in DIR/<class>/; remove or convert this file."
        ) from exc


def _transform(size: tuple[int, int], grayscale: bool, mean, std, augment: bool):
    """Resize, (crop + flip), (grayscale), to tensor, normalise — as a torchvision ``Compose``."""
    from torchvision import transforms

    if grayscale:
        mean_t = check_norm(mean, (0.5,), 1, "mean")
        std_t = check_norm(std, (0.5,), 1, "std")
    else:
        mean_t = check_norm(mean, IMAGENET_MEAN, 3, "mean")
        std_t = check_norm(std, IMAGENET_STD, 3, "std")
    steps: list[Any] = [transforms.Resize(size)]
    if augment:
        steps += [transforms.RandomCrop(size, padding=2), transforms.RandomHorizontalFlip()]
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean_t, std_t)]
    return transforms.Compose(steps)


def imagefolder(
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
    """The ``imagefolder`` dataset kind (``arg`` is the folder; see the module docstring)."""
    from torchvision import datasets

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
    size = check_resize(resize) or (224, 224)
    transform = _transform(size, grayscale, mean, std, augment)
    try:
        ds = datasets.ImageFolder(str(folder), transform=transform, loader=_load_image)
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
    ds.input_size = (1 if grayscale else 3, size[0], size[1])
    ds.name = f"imagefolder:{folder}"
    ds.split = None  # one labelled set: the split is ignored
    return ds
