"""Input-activation statistics of the decomposable layers, for data-aware factors (``--factors data``).

One pass of the model over calibration images, with a forward pre-hook on every decomposable layer (no
second copy of the network): each layer's uncentred second moment of its input channels,
``C = E[x xᵀ]`` over images and pixel positions (``C_in × C_in``; for a Linear, its input features), in
float64; and, for a conv that feeds a BatchNorm, that BatchNorm's per-channel gain (the error of the
conv's output reaches the network scaled by it). :mod:`lrviz.decompose` turns them into bases whose
truncation minimises the error of the layer's (normalised) *output* on such inputs instead of the error
of its weights (:func:`lrviz.decompose.factorize`).

A grouped convolution gets no statistics (its factors stay weight-only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .layers import find_layers, get_module

__all__ = ["ActivationStats", "input_statistics", "batchnorm_scales", "whitening"]


@dataclass
class ActivationStats:
    """Per layer name, ``C = E[x xᵀ]`` of its input channels (float64 tensors), and what they came from.

    ``out_scale``: per layer whose output feeds only an eval-mode ``BatchNorm2d``, that BatchNorm's
    per-channel gain ``|γ|/√(var+ε)`` — the output error that reaches the rest of the network is the
    error scaled by it, so the bases are chosen for that scaled error (:func:`batchnorm_scales`)."""

    second_moment: dict[str, torch.Tensor]
    images: int
    data: str = ""
    out_scale: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Per layer, the mean of its input channels (the bases use the covariance ``C − μμᵀ`` and the
    #: mean's error is moved into the bias: :func:`lrviz.decompose.build_layer`).
    mean: dict[str, torch.Tensor] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of the statistics (part of the cache keys of anything computed with them)."""
        h = hashlib.sha256(f"{self.images}|".encode())
        for part, tensors in (("m", self.second_moment), ("s", self.out_scale), ("u", self.mean)):
            for name in sorted(tensors):
                h.update(f"{part}:{name}".encode())
                h.update(tensors[name].to(torch.float32).numpy().tobytes())
        return h.hexdigest()[:24]


def batchnorm_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per conv (by module name) whose output's only user is a ``BatchNorm2d``: ``|γ|/√(running_var+ε)``
    (float64). Found by tracing ``model`` with ``torch.fx``; an untraceable model gives ``{}``."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow, for instance: no scales, the output error unweighted
        return {}
    mods = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.Conv2d) or len(node.users) != 1:
            continue
        (user,) = node.users
        bn = mods.get(user.target) if user.op == "call_module" else None
        if isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None and bn.num_features == mods[node.target].out_channels:
            gain = torch.ones(bn.num_features, dtype=torch.float64) if bn.weight is None else bn.weight.detach().to(torch.float64).abs()
            out[node.target] = (gain / torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)).cpu()
    return out


def input_statistics(model: nn.Module, dataset, *, limit: int | None = 500, batch_size: int = 250, seed: int = 0, data_name: str = "",
                     progress: Callable[[int, int], None] | None = None) -> ActivationStats:
    """:class:`ActivationStats` of ``model``'s decomposable layers on ``limit`` images of ``dataset``
    (the same seeded subset :func:`lrviz.evaluate.evaluate` uses). ``model`` is not modified (hooks are
    removed, the mode restored); it runs under ``inference_mode`` where the model's parameters are."""
    from .data import subset

    layers = [l for l in find_layers(model)[0] if l.groups == 1]
    sums = {l.name: None for l in layers}
    firsts = {l.name: None for l in layers}
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
            g, f = x @ x.T, x.sum(dim=1)
            sums[name] = g if sums[name] is None else sums[name] + g
            firsts[name] = f if firsts[name] is None else firsts[name] + f
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
    means = {name: (f / max(count[name], 1)).cpu() for name, f in firsts.items() if f is not None}
    scales = {k: v for k, v in batchnorm_scales(model).items() if k in moments}
    return ActivationStats(moments, n, data_name, scales, means)


def whitening(c: torch.Tensor, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, L⁻¹)`` with ``L Lᵀ = C`` (Cholesky), or ``C + ε·I`` with ``ε = rel_eps · tr(C)/n`` when ``C`` is
    singular (dead channels: a ReLU that never fires); float64."""
    c = c.to(torch.float64)
    n = c.shape[0]
    eye = torch.eye(n, dtype=c.dtype)
    l, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        eps = rel_eps * float(torch.trace(c)) / max(n, 1) or rel_eps
        l = torch.linalg.cholesky(c + eps * eye)
    return l, torch.linalg.solve_triangular(l, eye, upper=False)
