"""Input-activation statistics of the decomposable layers, for data-aware factors (``--factors data``).

One pass of the model over calibration images, with a forward pre-hook on every decomposable layer (no
second copy of the network): each layer's uncentred second moment of its input channels,
``C = E[x xᵀ]`` over images and pixel positions (``C_in × C_in``; for a Linear, its input features), in
float64. :mod:`lrviz.decompose` turns it into bases whose truncation minimises the error of the layer's
*output* on such inputs instead of the error of its weights (:func:`lrviz.decompose.factorize`).

A grouped convolution gets no statistics (its factors stay weight-only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import find_layers, get_module

__all__ = ["ActivationStats", "input_statistics", "whitening"]


@dataclass
class ActivationStats:
    """Per layer name, ``C = E[x xᵀ]`` of its input channels (float64 tensors), and what they came from."""

    second_moment: dict[str, torch.Tensor]
    images: int
    data: str = ""

    def fingerprint(self) -> str:
        """A digest of the statistics (part of the cache keys of anything computed with them)."""
        h = hashlib.sha256(f"{self.images}|".encode())
        for name in sorted(self.second_moment):
            h.update(name.encode())
            h.update(self.second_moment[name].to(torch.float32).numpy().tobytes())
        return h.hexdigest()[:24]


def input_statistics(model: nn.Module, dataset, *, limit: int | None = 500, batch_size: int = 250, seed: int = 0, data_name: str = "",
                     progress: Callable[[int, int], None] | None = None) -> ActivationStats:
    """:class:`ActivationStats` of ``model``'s decomposable layers on ``limit`` images of ``dataset``
    (the same seeded subset :func:`lrviz.evaluate.evaluate` uses). ``model`` is not modified (hooks are
    removed, the mode restored); it runs under ``inference_mode`` where the model's parameters are."""
    from .data import subset

    layers = [l for l in find_layers(model)[0] if l.groups == 1]
    sums = {l.name: None for l in layers}
    count = {l.name: 0 for l in layers}
    hooks = []

    def hook_for(name: str, conv: bool):
        def pre(_module, args):
            x = args[0].detach()
            if conv:
                x = x.transpose(0, 1).flatten(1)  # (C, N·H·W)
            else:
                x = x.reshape(-1, x.shape[-1]).T  # (features, N·…)
            x = x.to(torch.float64)
            g = x @ x.T
            sums[name] = g if sums[name] is None else sums[name] + g
            count[name] += x.shape[1]
        return pre

    for l in layers:
        m = get_module(model, l.name)
        hooks.append(m.register_forward_pre_hook(hook_for(l.name, isinstance(m, nn.Conv2d))))
    was_training = model.training
    ds = subset(dataset, limit, seed) if limit is not None else dataset
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    n, total = 0, len(ds)
    try:
        model.eval()
        params = list(model.parameters())
        owner = params[0].device if params else torch.device("cpu")
        with torch.inference_mode():
            for x, _ in loader:
                model(x.to(owner))
                n += len(x)
                if progress is not None:
                    progress(n, total)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    moments = {name: (s / max(count[name], 1)).cpu() for name, s in sums.items() if s is not None}
    return ActivationStats(moments, n, data_name)


def whitening(c: torch.Tensor, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, L⁻¹)`` with ``L Lᵀ = C + ε·I`` (Cholesky; ``ε = rel_eps · tr(C)/n`` keeps it definite)."""
    c = c.to(torch.float64)
    n = c.shape[0]
    eps = rel_eps * float(torch.trace(c)) / max(n, 1) or rel_eps
    l = torch.linalg.cholesky(c + eps * torch.eye(n, dtype=c.dtype))
    inv = torch.linalg.solve_triangular(l, torch.eye(n, dtype=c.dtype), upper=False)
    return l, inv

