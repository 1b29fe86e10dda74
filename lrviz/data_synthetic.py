"""``synthetic`` / ``synthetic:C,H,W,K,N`` — a small, learnable dataset that needs no files.

``N`` images of shape ``C x H x W`` in ``K`` classes (default ``3,32,32,10,256``): each class is a
smooth random template (coarse Gaussian noise, bilinearly upsampled, unit standard deviation), each
image its class's template plus Gaussian noise of standard deviation 0.8, labels balanced and shuffled.
Everything is seeded and independent of the global RNG, so a name always gives the same images; the
two splits share the templates and differ in the noise and label order. Handy for tests and demos.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data_transforms import SPLITS, TensorImageDataset, check_norm, check_resize
from .errors import LrvizError
from .fmt import number_parts

__all__ = ["synthetic"]

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
    parts = number_parts(arg)
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
    split_gen = torch.Generator().manual_seed(_SYNTHETIC_SEED + 1 + SPLITS.index(split))
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=split_gen)]
    noise = torch.randn(n, c, h, w, generator=split_gen)
    images = templates[labels] + 0.8 * noise
    return images.float(), labels.long()


def synthetic(
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
    """The ``synthetic`` dataset kind (``arg`` is ``C,H,W,K,N`` or None; see the module docstring)."""
    c, h, w, k, n = _parse_synthetic(arg)
    images, labels = _make_synthetic(c, h, w, k, n, split)
    channels = 1 if grayscale else c
    # The images are already roughly zero-mean, unit-variance: normalise only when asked.
    mean_t = None if mean is None else check_norm(mean, (0.0,), channels, "mean")
    std_t = None if std is None else check_norm(std, (1.0,), channels, "std")
    if (mean_t is None) != (std_t is None):
        mean_t = mean_t or (0.0,) * channels
        std_t = std_t or (1.0,) * channels
    return TensorImageDataset(
        images,
        labels,
        classes=[f"class_{i}" for i in range(k)],
        name="synthetic" if arg is None else f"synthetic:{arg}",
        resize=check_resize(resize),
        grayscale=grayscale,
        mean=mean_t,
        std=std_t,
        augment=augment,
    )
