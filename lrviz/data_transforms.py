"""The options every lrviz dataset takes, and the in-memory dataset that applies them.

:func:`lrviz.data.get_dataset` passes ``resize``, ``grayscale``, ``mean`` / ``std`` and ``augment`` to
every dataset kind. :func:`check_resize` and :func:`check_norm` validate them (one message style for
all kinds); :class:`TensorImageDataset` holds a whole dataset as one tensor and applies them per item,
in this order: scale uint8 to [0, 1], average to one channel, random 2-pixel crop and horizontal flip,
bilinear resize, normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import LrvizError, is_int

__all__ = ["SPLITS", "TensorImageDataset", "check_norm", "check_resize"]

#: The splits every dataset kind knows.
SPLITS = ("train", "test")


def check_resize(resize: Any) -> tuple[int, int] | None:
    """Validate ``resize`` and return it as ``(H, W)`` (or None)."""
    if resize is None:
        return None
    if isinstance(resize, bool):
        raise LrvizError(f"resize must be an int or (height, width), got {resize!r}.")
    if is_int(resize):
        size = (int(resize), int(resize))
    elif isinstance(resize, Sequence) and len(resize) == 2 and all(is_int(s) for s in resize):
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


def check_norm(
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


class TensorImageDataset(Dataset):
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
