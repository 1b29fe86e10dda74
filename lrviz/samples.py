"""A few dataset images with the predictions of a model (the Present page and the HTML report).

:func:`sample_indices` picks them (seeded), :func:`predict` classifies them (the model's train/eval
flags are restored), :func:`display_image` turns a normalised tensor into a ``uint8`` image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["display_image", "predict", "sample_indices"]


def sample_indices(dataset, n: int = 8, seed: int = 0) -> list[int]:
    """``n`` distinct indices of ``dataset``, the same for the same ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(dataset), generator=g)[: min(n, len(dataset))].tolist()


def predict(model, dataset, indices: Sequence[int]) -> tuple[list[int], list[int], list[float]]:
    """``(labels, predicted classes, confidences)`` of a few dataset items (model flags restored)."""
    xs, ys = zip(*(dataset[i] for i in indices)) if indices else ((), ())
    if not xs:
        return [], [], []
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            p = torch.softmax(model(torch.stack(list(xs))).float(), dim=1)
    finally:
        for m, f in flags.items():
            m.training = f
    conf, pred = p.max(dim=1)
    return [int(y) for y in ys], pred.tolist(), conf.tolist()


def display_image(x: torch.Tensor) -> np.ndarray:
    """A normalised ``C×H×W`` tensor as a ``uint8`` image (min–max scaled; ``H×W`` or ``H×W×3``)."""
    a = x.detach().float().cpu()
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    img = (a * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))

