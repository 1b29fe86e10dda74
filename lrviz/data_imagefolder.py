"""``imagefolder:DIR`` and ``imagenet:DIR`` — :class:`torchvision.datasets.ImageFolder` over your own images.

``imagefolder:DIR``
    ``DIR`` holds one sub-folder of images per class (``DIR/<class>/*.png``); the split is ignored
    (point ``DIR`` at the split you mean), so the dataset's ``split`` is None: one labelled set, which
    :func:`lrviz.data.finetune_splits` splits three ways (train / validation / held-out evaluation).
    Images are read with PIL and converted to RGB, resized to ``resize`` (224×224 by default),
    optionally augmented (random 2-pixel crop, horizontal flip) and converted to one channel, then
    normalised (ImageNet's mean and std by default, 0.5 / 0.5 for grayscale). A file that is not a
    readable image gives an error naming it; the first image is decoded when the dataset is built, so a
    folder of non-images fails at once rather than in the middle of an evaluation.

``imagenet:DIR``
    The same folders with the standard ImageNet *evaluation* preset (torchvision's reference recipe,
    the one behind the published top-1 accuracies): the shorter side resized to 256 (bilinear,
    antialiased), a 224×224 centre crop, ``ToTensor`` and ImageNet's mean/std. The augmented
    (training) view is ``RandomResizedCrop(224)`` (scale 0.08–1, aspect 3/4–4/3) and a horizontal
    flip. ``DIR`` is either the ImageNet layout, ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (the
    ``train`` split reads ``train/``, ``test`` reads ``val/``; both splits use the class list of
    ``train/`` when it exists, so a ``val/`` holding only some classes keeps the right labels), or
    directly one sub-folder per class (one labelled set: the split is ignored and ``split`` is None,
    as for ``imagefolder``). The ImageNet layout is recognised by a ``train/`` or ``val/`` sub-folder (a
    class folder cannot have those names). The dataset sets ``stratify = True``: :func:`lrviz.data.subset` then takes
    a class-stratified subset from ``targets`` (no image is decoded to choose it).

    A model whose input is not 224×224 gets the preset scaled to its size: for a crop of ``(H, W)``
    (``resize``) the shorter side is resized to ``round(max(H, W) · 256 / 224)`` and the centre
    ``H × W`` cropped, so the crop keeps the 224/256 = 87.5 % of the resized image that the standard
    preset keeps (e.g. 183 → 160 for a 160×160 model; 256 → 224 unchanged). Grayscale models get
    one channel after cropping, normalised with mean 0.5 and std 0.5.
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

__all__ = ["IMAGENET_CROP", "IMAGENET_MEAN", "IMAGENET_RESIZE", "IMAGENET_STD", "imagefolder", "imagenet",
           "imagenet_resize", "imagenet_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The standard ImageNet evaluation preset: resize the shorter side to 256, centre-crop 224.
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224


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


def _norm(grayscale: bool, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checked mean and std: ImageNet's for RGB, 0.5 / 0.5 for grayscale, unless given."""
    if grayscale:
        return check_norm(mean, (0.5,), 1, "mean"), check_norm(std, (0.5,), 1, "std")
    return check_norm(mean, IMAGENET_MEAN, 3, "mean"), check_norm(std, IMAGENET_STD, 3, "std")


def _transform(size: tuple[int, int], grayscale: bool, mean, std, augment: bool):
    """Resize, (crop + flip), (grayscale), to tensor, normalise — as a torchvision ``Compose``."""
    from torchvision import transforms

    mean_t, std_t = _norm(grayscale, mean, std)
    steps: list[Any] = [transforms.Resize(size)]
    if augment:
        steps += [transforms.RandomCrop(size, padding=2), transforms.RandomHorizontalFlip()]
    if grayscale:
        steps.append(transforms.Grayscale(num_output_channels=1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean_t, std_t)]
    return transforms.Compose(steps)


def imagenet_resize(crop: tuple[int, int]) -> int:
    """The shorter side the ImageNet preset resizes to before centre-cropping ``crop`` ``(H, W)``:
    ``round(max(H, W) · 256 / 224)`` (256 for the standard 224 crop), so that the crop is the same
    fraction of the image as in the standard preset and fits inside it whatever the image's shape."""
    return int(round(max(crop) * IMAGENET_RESIZE / IMAGENET_CROP))


def imagenet_transform(
    crop: tuple[int, int] = (IMAGENET_CROP, IMAGENET_CROP),
    *,
    grayscale: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: bool = False,
):
    """The ImageNet preset as a torchvision ``Compose`` (PIL image in, ``C x H x W`` tensor out).

    Evaluation: ``Resize(imagenet_resize(crop))`` (shorter side, bilinear, antialiased) →
    ``CenterCrop(crop)``; training (``augment``): ``RandomResizedCrop(crop)`` → ``RandomHorizontalFlip``.
    Then (grayscale: one channel) → ``ToTensor`` → ``Normalize(mean, std)``.
    """
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    mean_t, std_t = _norm(grayscale, mean, std)
    bilinear = InterpolationMode.BILINEAR
    if augment:
        steps: list[Any] = [transforms.RandomResizedCrop(crop, interpolation=bilinear, antialias=True),
                            transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(imagenet_resize(crop), interpolation=bilinear, antialias=True),
                 transforms.CenterCrop(crop)]
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


# ----------------------------------------------------------------------------------------------
# imagenet:DIR
# ----------------------------------------------------------------------------------------------

#: The sub-folder each split reads in the ImageNet layout (``DIR/train``, ``DIR/val``).
IMAGENET_SPLIT_DIRS = {"train": "train", "test": "val"}


def _class_dirs(folder: Path) -> list[str]:
    """The class sub-folders of ``folder``, sorted (torchvision's ``find_classes`` order)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _image_folder(folder: Path, classes: list[str], transform, what: str):
    """An ImageFolder over ``folder`` whose labels follow ``classes`` (not only the sub-folders present)."""
    from torchvision import datasets

    class _Folder(datasets.ImageFolder):
        def find_classes(self, directory):
            return list(classes), {c: i for i, c in enumerate(classes)}

    # classes without a folder here (a val/ with some classes only) may be empty; the folders present may not
    partial = _class_dirs(folder) != list(classes)
    try:
        ds = _Folder(str(folder), transform=transform, loader=_load_image, allow_empty=partial)
    except (FileNotFoundError, OSError) as exc:
        raise LrvizError(
            f"{what} {str(folder)!r} has no usable images: {exc}. Each class sub-folder needs image files "
            "(.png, .jpg, .JPEG, ...)."
        ) from exc
    if len(ds) == 0:
        raise LrvizError(
            f"{what} {str(folder)!r} has no usable images in its class sub-folders. Each class sub-folder "
            "needs image files (.png, .jpg, .JPEG, ...)."
        )
    return ds


def imagenet(
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
    """The ``imagenet`` dataset kind (``arg`` is the folder; see the module docstring).

    ``resize`` is the crop ``(H, W)`` (224×224 by default); the images are first resized to
    :func:`imagenet_resize` of it. ``root`` is not used.
    """
    if not arg or not arg.strip():
        raise LrvizError(
            "Dataset 'imagenet' needs a folder: use 'imagenet:DIR' where DIR holds train/ and val/ "
            "(each with one sub-folder of images per class), or directly one sub-folder per class."
        )
    folder = Path(arg.strip()).expanduser()
    if not folder.is_dir():
        raise LrvizError(
            f"ImageNet folder {str(folder)!r} does not exist or is not a directory. Give an existing "
            "folder: 'imagenet:DIR' with DIR/train/<class>/ and DIR/val/<class>/, or DIR/<class>/."
        )
    present = {s: folder / d for s, d in IMAGENET_SPLIT_DIRS.items() if (folder / d).is_dir()}
    crop = check_resize(resize) or (IMAGENET_CROP, IMAGENET_CROP)
    transform = imagenet_transform(crop, grayscale=grayscale, mean=mean, std=std, augment=augment)
    if present:  # the ImageNet layout: the split picks the sub-folder
        if split not in present:
            (have,) = [f"{IMAGENET_SPLIT_DIRS[s]}/" for s in present]
            want = IMAGENET_SPLIT_DIRS[split]
            raise LrvizError(
                f"ImageNet folder {str(folder)!r} has {have} but no {want}/, which the {split!r} split reads. "
                f"Add {str(folder / want)!r} with one sub-folder of images per class, or use the split "
                f"that exists ('imagenet:DIR' reads train/ for 'train' and val/ for 'test')."
            )
        images = present[split]
        classes = {s: _class_dirs(d) for s, d in present.items()}
        if not classes[split]:
            raise LrvizError(
                f"{str(images)!r} has no class sub-folders. Put its images in {str(images)}/<class name>/*.JPEG "
                "(the official ImageNet validation images come in one flat folder: sort them into one "
                "folder per class first, e.g. with the usual valprep.sh)."
            )
        reference = classes.get("train") or classes[split]
        unknown = sorted(set(classes[split]) - set(reference))
        if unknown:
            raise LrvizError(
                f"{str(images)!r} has class folder(s) that {str(present['train'])!r} lacks: "
                f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} ({len(unknown)} in all). "
                "Both splits must use the same class names; remove or rename them."
            )
        ds = _image_folder(images, reference, transform, "ImageNet split folder")
        ds.split = split
    else:  # one labelled set: DIR holds the class folders
        reference = _class_dirs(folder)
        if not reference:
            raise LrvizError(
                f"ImageNet folder {str(folder)!r} has neither train/ and val/ sub-folders nor class "
                "sub-folders. Use DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG, or DIR/<class>/*.JPEG."
            )
        ds = _image_folder(folder, reference, transform, "ImageNet folder")
        ds.split = None  # one labelled set: the split is ignored
    ds[0]  # decode one image now (see imagefolder)
    ds.num_classes = len(ds.classes)
    ds.input_size = (1 if grayscale else 3, crop[0], crop[1])
    ds.name = f"imagenet:{folder}"
    ds.stratify = True  # lrviz.data.subset: class-stratified subsets from ds.targets
    return ds
